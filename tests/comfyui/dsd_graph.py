"""Shared helpers for the ComfyUI tests: run the DSD node chain in-process and the diffusers-side reference."""

from __future__ import annotations

import torch

from dsd.canvas import CanvasLayout, compose_canvas
from dsd.sampler import GuidanceConfig, make_noise, sample_tokens
from dsd.tokens import image_ids, latent_to_model, model_to_latent, pack, text_ids, unpack

HEIGHT, WIDTH = 64, 128  # small canvas: the full-layout VAE costs ~1.7 s per encode+decode here


def reference_images(batch: int, seed: int = 0, height: int = 80, width: int = 96) -> torch.Tensor:
    gen = torch.Generator("cpu").manual_seed(500 + seed)
    return torch.rand(batch, height, width, 3, generator=gen)


def comfy_dsd_sample(host, model, vae, positive, negative, image, adapter_name, steps=4, seed=7,
                     image_guidance=1.0, text_guidance=1.0, cfg_start_step=2, batch_size=1, strength=1.0):  # fmt: skip
    """Our nodes + stock ComfyUI sampling nodes; returns (final latent, sigmas, model)."""
    (dsd_model,) = host.call("DSDAdapterLoader", model=model, adapter=adapter_name, strength=strength)
    pos, neg, latent, _layout = host.call(
        "DSDReferenceConditioning", positive=positive, negative=negative, vae=vae, image=image,
        width=WIDTH, height=HEIGHT, fit="crop", batch_size=batch_size,
    )  # fmt: skip
    (sampled_model,) = host.call("ModelSamplingFlux", model=dsd_model, max_shift=1.15, base_shift=0.5, width=WIDTH, height=HEIGHT)
    (sigmas,) = host.call("BasicScheduler", model=sampled_model, scheduler="simple", steps=steps, denoise=1.0)
    (guider,) = host.call(
        "DSDGuider", model=sampled_model, positive=pos, negative=neg, image_guidance=image_guidance,
        text_guidance=text_guidance, cfg_start_step=cfg_start_step,
    )  # fmt: skip
    (noise,) = host.call("RandomNoise", noise_seed=seed)
    (sampler,) = host.call("KSamplerSelect", sampler_name="euler")
    out, _ = host.call("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas, latent_image=latent)
    return out["samples"], sigmas, sampled_model


@torch.no_grad()
def reference_sample(model, dvae, text, negative_text, image, sigmas, seed=7, batch=1, image_guidance=1.0,
                     text_guidance=1.0, cfg_start_step=2):  # fmt: skip
    """dsd.sampler on the diffusers side (same weights, same sigmas); returns the final VAE-space latent."""
    layout = CanvasLayout(height=HEIGHT, width=WIDTH, fit="crop")
    canvas = compose_canvas(image, layout)
    z = dvae.encode(canvas).latent_dist.mean
    cond = pack(latent_to_model(z))
    h, w = layout.latent_size
    noise = pack(make_noise(batch, h, w, seed))
    tokens = sample_tokens(
        model, noise, cond, text, image_ids(h, w), text_ids(text.prompt_embeds.shape[1]), sigmas=sigmas,
        guidance=GuidanceConfig(guidance=3.5, image_guidance=image_guidance, text_guidance=text_guidance,
                                cfg_start_step=cfg_start_step),
        negative_text=negative_text,
    )  # fmt: skip
    return model_to_latent(unpack(tokens, h, w))
