"""The standalone DSD pipeline: local FLUX parts + DSD weights -> reference-conditioned images.

Text encoding reuses diffusers' ``FluxPipeline.encode_prompt`` (CLIP pooled + T5 sequence,
exactly as the authors' pipeline). The canvas is VAE-encoded with the posterior MEAN (the
deterministic choice; the authors sample, which differs negligibly), shifted and scaled
the FLUX way and packed into condition tokens.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .canvas import CanvasLayout, canvas_to_image01, compose_canvas, split_canvas
from .model import DSDTransformer
from .sampler import GuidanceConfig, SamplerStats, TextConditioning, make_noise, sample_tokens
from .tokens import image_ids, latent_to_model, model_to_latent, pack, text_ids, unpack
from .weights.errors import WeightsError

logger = logging.getLogger(__name__)


@dataclass
class GenerateResult:
    canvas: torch.Tensor  # [B, 3, H, W] in [0, 1]
    frame_one: torch.Tensor  # the model's reconstruction of the reference
    frame_two: torch.Tensor  # the result
    tokens: torch.Tensor  # packed final latent tokens (model space)
    stats: SamplerStats


class DSDPipeline:
    def __init__(self, model: DSDTransformer, vae: Any, text_pipe: Any, max_sequence_length: int = 512) -> None:
        self.model = model
        self.vae = vae
        self.text_pipe = text_pipe  # a diffusers FluxPipeline used for its encode_prompt
        self.max_sequence_length = max_sequence_length

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_local(
        cls,
        flux_dir: str | os.PathLike[str],
        release: str | os.PathLike[str] | None = None,
        adapter: str | os.PathLike[str] | None = None,
        lora_scale: float = 1.0,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> DSDPipeline:
        """``flux_dir``: a diffusers FLUX pipeline folder (FLUX.1-dev: vae, text encoders, tokenizers).

        The DSD transformer comes from ``release`` (the authors' published folder) or from
        ``flux_dir/transformer`` + ``adapter`` (a DSD adapter file from ``dsd convert`` or training).
        """
        from diffusers import FluxPipeline

        from .weights.adapter import load_adapter
        from .weights.lora import merge_lora
        from .weights.release import find_release_parts, load_release_lora, load_release_transformer

        flux_dir = Path(flux_dir)
        if not (flux_dir / "model_index.json").is_file():
            raise WeightsError(
                f"{flux_dir}: not a diffusers FLUX pipeline folder (no model_index.json). Download FLUX.1-dev in diffusers "
                "layout (vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, transformer/) and point --flux to it."
            )
        if (release is None) == (adapter is None):
            raise WeightsError("give exactly one of: the DSD release folder, or a DSD adapter file")
        if release is not None:
            tdir, lora_path = find_release_parts(release)
            model = load_release_transformer(tdir, dtype=dtype, device=device)
            if lora_path is None:
                raise WeightsError(f"{release}: no pytorch_lora_weights.safetensors beside the transformer folder")
            merge_lora(model.transformer, load_release_lora(lora_path), strength=lora_scale, source=lora_path)
            pipe = FluxPipeline.from_pretrained(flux_dir, transformer=None, dtype=dtype, local_files_only=True)
        else:
            pipe = FluxPipeline.from_pretrained(flux_dir, dtype=dtype, local_files_only=True)
            model = DSDTransformer(pipe.transformer)
            ad = load_adapter(adapter)
            model.load_c_embedder(ad.c_embedder)
            if ad.lora:
                merge_lora(model.transformer, ad.lora, strength=lora_scale, source=adapter)
            pipe.transformer = None
        model.to(device)
        pipe.to(device)
        return cls(model=model.eval(), vae=pipe.vae, text_pipe=pipe)

    # -- pieces ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.no_grad()
    def encode_prompt(self, prompt: str | list[str]) -> TextConditioning:
        embeds, pooled, _ = self.text_pipe.encode_prompt(
            prompt=prompt, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return TextConditioning(embeds.float(), pooled.float())

    @torch.no_grad()
    def encode_canvas(self, canvas: torch.Tensor) -> torch.Tensor:
        """Canvas ``[B, 3, H, W]`` in [-1, 1] -> model-space latent ``[B, 16, H/8, W/8]`` (posterior mean)."""
        vae = self.vae
        z = vae.encode(canvas.to(device=vae.device, dtype=vae.dtype)).latent_dist.mean
        return latent_to_model(z.float(), vae.config.shift_factor, vae.config.scaling_factor)

    @torch.no_grad()
    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        z = model_to_latent(latent, vae.config.shift_factor, vae.config.scaling_factor)
        return vae.decode(z.to(device=vae.device, dtype=vae.dtype)).sample.float()

    # -- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        reference: Any,
        prompt: str | list[str],
        negative_prompt: str = "",
        layout: CanvasLayout = CanvasLayout(),
        steps: int = 28,
        guidance: GuidanceConfig = GuidanceConfig(),
        seed: int = 0,
        sigmas: torch.Tensor | None = None,
        progress: bool = True,
    ) -> GenerateResult:
        canvas = compose_canvas(reference, layout)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        b = max(canvas.shape[0], len(prompts))
        if canvas.shape[0] not in (1, b) or len(prompts) not in (1, b):
            raise ValueError(f"{canvas.shape[0]} references and {len(prompts)} prompts: give one, or the same number of each")
        cond_latent = self.encode_canvas(canvas)
        h, w = cond_latent.shape[-2:]
        cond = pack(cond_latent).expand(b, -1, -1) if cond_latent.shape[0] == 1 else pack(cond_latent)
        text = self.encode_prompt(prompts if len(prompts) == b else prompts * b)
        negative = self.encode_prompt([negative_prompt] * b) if guidance.true_cfg else None
        noise = pack(make_noise(b, h, w, seed))
        stats = SamplerStats()
        tokens = sample_tokens(
            self.model, noise, cond, text, image_ids(h, w), text_ids(text.prompt_embeds.shape[1]),
            sigmas=sigmas, steps=steps, guidance=guidance, negative_text=negative, stats=stats, progress=progress,
        )  # fmt: skip
        image = canvas_to_image01(self.decode_latent(unpack(tokens, h, w)))
        one, two = split_canvas(image, layout)
        return GenerateResult(canvas=image, frame_one=one, frame_two=two, tokens=tokens, stats=stats)
