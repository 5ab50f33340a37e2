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

from ..dsd.canvas import FIT_MODES, MAX_REFERENCES, CanvasLayout, compose_canvas
from ..dsd.tokens import FLUX_LATENT_CHANNELS, PIXELS_PER_TOKEN, latent_to_model, pack
from .errors import DSDBatchError, DSDInputError, require_finite
from .patch import with_condition_tokens

DSDLayout = io.Custom("DSD_LAYOUT")
MAX_SIZE = 8192
# A DSD_LAYOUT may arrive as raw JSON where a link belongs (ComfyUI does not check custom types), so its
# values are bounded before anything is allocated: at most this many pixels a side, each frame at least
# one FLUX token (the VAE's 8 px block packed 2x2) wide and high.
MAX_LAYOUT_SIDE = 16384
_LAYOUT_KEYS = ("height", "width", "fit", "pad_value", "references")


def _layout_side(data: dict, key: str, least: int, problems: list[str]) -> int:
    v = data.get(key)
    if key not in data:
        problems.append(f"no {key!r}")
    elif isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        problems.append(f"{key}={v!r} is not an integer")  # 512.0 from a JSON writer is fine; NaN is not
    elif not least <= v <= MAX_LAYOUT_SIDE or v % PIXELS_PER_TOKEN:
        problems.append(f"{key}={v} (a multiple of {PIXELS_PER_TOKEN} from {least} to {MAX_LAYOUT_SIDE})")
    else:
        return int(v)
    return least


def _layout_references(data: dict, problems: list[str]) -> int:
    """k, the reference frames (a layout from before multi-reference DSD has none: one)."""
    k = data.get("references", 1)
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 1 <= k <= MAX_REFERENCES or k != int(k):
        problems.append(f"references={k!r} (an integer from 1 to {MAX_REFERENCES})")
        return 1
    return int(k)


def _checked_layout(data: dict) -> tuple[dict, list[str]]:
    problems = [f"unknown key {k!r}" for k in data if k not in _LAYOUT_KEYS]
    references = _layout_references(data, problems)
    frames = references + 1
    height = _layout_side(data, "height", PIXELS_PER_TOKEN, problems)
    width = _layout_side(data, "width", frames * PIXELS_PER_TOKEN, problems)
    if references > 1 and width % (frames * PIXELS_PER_TOKEN):
        problems.append(f"width={width} (a multiple of {frames * PIXELS_PER_TOKEN} for {frames} frames of whole tokens)")
    fit, pad = data.get("fit", "crop"), data.get("pad_value", 1.0)
    if not isinstance(fit, str) or fit not in FIT_MODES:
        problems.append(f"fit={fit!r} (one of {', '.join(FIT_MODES)})")
    if isinstance(pad, bool) or not isinstance(pad, (int, float)) or not 0.0 <= pad <= 1.0:  # NaN fails the range
        problems.append(f"pad_value={pad!r} (a number from 0 to 1)")
    return {"height": height, "width": width, "fit": fit, "pad_value": pad, "references": references}, problems


def layout_from_input(layout: object, node: str) -> CanvasLayout:
    """A ``DSD_LAYOUT`` input (the dict DSD Reference Conditioning outputs, or raw JSON) as a checked layout."""
    if isinstance(layout, CanvasLayout):
        return layout
    if not isinstance(layout, dict):
        layout, problems = {}, [f"got {type(layout).__name__}, not an object"]
    else:
        layout, problems = _checked_layout(layout)
    if problems:
        raise DSDInputError(
            f"{node}: the layout input is not a DSD layout ({'; '.join(problems)}). Connect the layout output of "
            "DSD Reference Conditioning or DSD Multi-Reference Conditioning."
        )
    return CanvasLayout(**layout)


def canvas_batch(references: int, batch_size: int, node: str = "DSD Reference Conditioning") -> int:
    if references > 1 and batch_size not in (1, references):
        raise DSDBatchError(
            f"{node}: {references} reference images but batch_size={batch_size}. Give one reference "
            "per image (batch_size 1 or equal to the number of references) or a single reference for any batch size."
        )
    return max(references, batch_size)


def encode_condition_tokens(vae, reference, layout: CanvasLayout, node: str = "DSD Reference Conditioning") -> torch.Tensor:
    """Reference IMAGE (or k of them) -> packed condition tokens ``[B, N, 64]`` in FLUX model space (fp32, CPU)."""
    canvas = compose_canvas(reference, layout)  # [B, 3, H, W] in [-1, 1]
    pixels = ((canvas + 1.0) / 2.0).permute(0, 2, 3, 1)  # ComfyUI IMAGE layout, 0..1
    z = vae.encode(pixels).to(device="cpu", dtype=torch.float32)
    if z.ndim != 4 or z.shape[1] != FLUX_LATENT_CHANNELS:
        raise DSDBatchError(
            f"the VAE gave a {tuple(z.shape)} latent; DSD needs FLUX's 16-channel VAE (ae.safetensors). Load the FLUX VAE."
        )
    if not torch.isfinite(z).all():
        raise DSDInputError(
            f"{node}: the VAE turned the (finite) reference into NaN/inf latents; the VAE file is "
            "damaged or overflows in its dtype (try ComfyUI's --fp32-vae or --bf16-vae)."
        )
    return pack(latent_to_model(z))


def attach_reference(positive, negative, vae, reference, layout: CanvasLayout, batch: int, node: str) -> tuple:
    """The conditioning nodes' four outputs: positive and negative carrying the canvas's condition tokens, the
    empty canvas latent of ``batch`` images, and the layout as a ``DSD_LAYOUT`` dict."""
    progress = comfy.utils.ProgressBar(2)
    tokens = encode_condition_tokens(vae, reference, layout, node)
    progress.update(1)
    h, w = layout.latent_size
    latent = torch.zeros([batch, FLUX_LATENT_CHANNELS, h, w], device=comfy.model_management.intermediate_device())
    progress.update(1)
    k = layout.references
    return (with_condition_tokens(positive, tokens, k), with_condition_tokens(negative, tokens, k), {"samples": latent},
            layout.to_dict())  # fmt: skip


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
                io.Image.Input("image", tooltip="Reference image(s); N images give N canvases (N separate subjects or "
                               "tries). For several pictures of ONE subject use DSD Multi-Reference Conditioning. At least "
                               "32 px per side."),
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
        require_finite("DSD Reference Conditioning", image=image)
        layout = CanvasLayout(height=height, width=width, fit=fit)
        batch = canvas_batch(int(image.shape[0]), batch_size)
        return io.NodeOutput(*attach_reference(positive, negative, vae, image, layout, batch, "DSD Reference Conditioning"))
