"""DSD Reference Conditioning: reference -> two-frame canvas -> VAE -> condition tokens on the conditioning.

The canvas is composed by the shared ``dsd.canvas.compose_canvas`` (bit-identical with the
standalone sampler), encoded by ComfyUI's VAE, shifted/scaled the FLUX way and packed. The tokens
ride on positive and negative as ``model_conds`` (see nodes/patch.py); DSD Guider derives the
image-unconditional branch from the negative with exactly-zero tokens.

Layout flow: the node's fourth output is a ``DSD_LAYOUT`` (a plain dict from
``CanvasLayout.to_dict()``), which DSD Split Canvas and DSD Control Hint To Frame take.
"""

from __future__ import annotations

import comfy.model_management
import comfy.utils
import torch
from comfy_api.latest import io

from ..dsd.canvas import FIT_MODES, CanvasLayout, compose_canvas
from ..dsd.tokens import FLUX_LATENT_CHANNELS, latent_to_model, pack
from .errors import DSDBatchError
from .patch import with_condition_tokens

DSDLayout = io.Custom("DSD_LAYOUT")
MAX_SIZE = 8192


def canvas_batch(references: int, batch_size: int) -> int:
    if references > 1 and batch_size not in (1, references):
        raise DSDBatchError(
            f"DSD Reference Conditioning: {references} reference images but batch_size={batch_size}. Give one reference "
            "per image (batch_size 1 or equal to the number of references) or a single reference for any batch size."
        )
    return max(references, batch_size)


def encode_condition_tokens(vae, reference, layout: CanvasLayout) -> torch.Tensor:
    """Reference IMAGE -> packed condition tokens ``[B, N, 64]`` in FLUX model space (fp32, CPU)."""
    canvas = compose_canvas(reference, layout)  # [B, 3, H, W] in [-1, 1]
    pixels = ((canvas + 1.0) / 2.0).permute(0, 2, 3, 1)  # ComfyUI IMAGE layout, 0..1
    z = vae.encode(pixels).to(device="cpu", dtype=torch.float32)
    if z.ndim != 4 or z.shape[1] != FLUX_LATENT_CHANNELS:
        raise DSDBatchError(
            f"the VAE gave a {tuple(z.shape)} latent; DSD needs FLUX's 16-channel VAE (ae.safetensors). Load the FLUX VAE."
        )
    return pack(latent_to_model(z))


class DSDReferenceConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DSDReferenceConditioning",
            display_name="DSD Reference Conditioning",
            category="DSD/conditioning",
            description="Puts the reference in the left frame of a two-frame canvas, VAE-encodes it and attaches it to the "
            "conditioning. Sample the LATENT it outputs; the result is the right frame.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="Text conditioning of the prompt (FLUX text encoder)."),
                io.Conditioning.Input("negative", tooltip="Text conditioning of the negative prompt (an empty prompt is fine)."),
                io.Vae.Input("vae", tooltip="FLUX's VAE (ae.safetensors)."),
                io.Image.Input("image", tooltip="Reference image(s); N images give N canvases. At least 32 px per side."),
                io.Int.Input("width", default=1024, min=32, max=MAX_SIZE, step=16,
                             tooltip="Canvas width in pixels (both frames); the authors use 1024."),
                io.Int.Input("height", default=512, min=16, max=MAX_SIZE, step=16,
                             tooltip="Canvas height in pixels; the authors use 512."),
                io.Combo.Input("fit", options=list(FIT_MODES), default="crop",
                               tooltip="How the reference fills frame one: centre crop (authors), letterbox pad, or stretch."),
                io.Int.Input("batch_size", default=1, min=1, max=4096,
                             tooltip="Latent batch size; a single reference is shared by the whole batch."),
            ],  # fmt: skip
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="Positive with the reference attached."),
                io.Conditioning.Output(display_name="negative", tooltip="Negative with the reference attached."),
                io.Latent.Output(display_name="latent", tooltip="Empty canvas latent to sample."),
                DSDLayout.Output(display_name="layout", tooltip="Canvas geometry for DSD Split Canvas / Control Hint To Frame."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, vae, image, width, height, fit, batch_size=1) -> io.NodeOutput:
        layout = CanvasLayout(height=height, width=width, fit=fit)
        batch = canvas_batch(int(image.shape[0]), batch_size)
        progress = comfy.utils.ProgressBar(2)
        tokens = encode_condition_tokens(vae, image, layout)
        progress.update(1)
        h, w = layout.latent_size
        latent = torch.zeros(
            [batch, FLUX_LATENT_CHANNELS, h, w], device=comfy.model_management.intermediate_device()
        )
        progress.update(1)
        return io.NodeOutput(
            with_condition_tokens(positive, tokens),
            with_condition_tokens(negative, tokens),
            {"samples": latent},
            layout.to_dict(),
        )
