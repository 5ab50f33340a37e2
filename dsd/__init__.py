"""Diffusion Self-Distillation core: canvas, tokens, model, sampler, weights. Never imports ComfyUI."""

__version__ = "0.1.0"
