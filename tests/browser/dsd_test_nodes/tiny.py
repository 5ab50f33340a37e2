"""Tiny in-process stand-ins for the big model files, shared by the server-side test nodes and the tests.

The same seed gives the same weights in both processes, so the adapter the test writes to
``models/dsd/`` fits the FLUX the ``DSDBrowserTest_TinyFlux`` node builds inside the server.
Imports torch, diffusers and ComfyUI lazily: the test process only needs :func:`write_adapter`.
"""

from __future__ import annotations

import functools
import zlib
from pathlib import Path
from typing import Any

SEED = 0
ADAPTER_NAME = "dsd_browser_tiny.safetensors"
TEXT_DIM = 32  # context and pooled width of the tiny FLUX below
# ComfyUI's own Flux with the width of dsd.tiny.TINY_TRANSFORMER_CONFIG (hidden 32, 1 + 1 blocks).
TINY_UNET_CONFIG: dict[str, Any] = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": TEXT_DIM,
    "context_in_dim": TEXT_DIM, "hidden_size": 32, "mlp_ratio": 4.0, "num_heads": 2, "depth": 1,
    "depth_single_blocks": 1, "axes_dim": [4, 6, 6], "theta": 10000, "patch_size": 2, "qkv_bias": True,
    "guidance_embed": True, "txt_ids_dims": [],
}


@functools.lru_cache(maxsize=1)
def tiny_dsd():
    from dsd.tiny import make_tiny_dsd, make_tiny_lora

    base = make_tiny_dsd(seed=SEED)
    return base, make_tiny_lora(base.transformer, rank=4, seed=SEED)


def write_adapter(folder: Path) -> Path:
    """The DSD adapter (embedder + LoRA) of the tiny FLUX, as ``folder/ADAPTER_NAME``."""
    from dsd.weights.adapter import DSDAdapter, save_adapter

    base, lora = tiny_dsd()
    adapter = DSDAdapter(c_embedder={k: v.clone() for k, v in base.c_embedder_state_dict().items()}, lora=lora)
    folder.mkdir(parents=True, exist_ok=True)
    return save_adapter(adapter, folder / ADAPTER_NAME)


@functools.lru_cache(maxsize=1)
def comfy_flux():
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    from dsd.weights.layout import diffusers_to_bfl

    base, _ = tiny_dsd()
    bfl = diffusers_to_bfl({k: v.detach().clone() for k, v in base.transformer.state_dict().items()})
    config = comfy.supported_models.Flux(dict(TINY_UNET_CONFIG))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, "", device=torch.device("cpu"))
    model.load_model_weights(bfl, "")
    return comfy.model_patcher.ModelPatcher(
        model, load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


@functools.lru_cache(maxsize=1)
def comfy_vae():
    import comfy.sd

    from dsd.tiny import FULL_VAE_CONFIG, make_tiny_vae

    # ComfyUI builds only FLUX's full KL layout (84 M parameters) from a state dict; random weights.
    vae = make_tiny_vae(seed=SEED, config=FULL_VAE_CONFIG)
    return comfy.sd.VAE(sd={k: v.detach().clone() for k, v in vae.state_dict().items()})


def text_conditioning(text: str, length: int = 8) -> list:
    """A CONDITIONING for the tiny FLUX, fixed by the text (no text encoder at this width)."""
    import torch

    gen = torch.Generator("cpu").manual_seed(zlib.crc32(text.encode()))
    context = torch.randn(1, length, TEXT_DIM, generator=gen)
    pooled = torch.randn(1, TEXT_DIM, generator=gen)
    return [[context, {"pooled_output": pooled}]]
