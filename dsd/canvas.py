"""The DSD canvas: the reference in frame one (left), black in frame two (right).

With ``k`` references (multi-reference DSD, docs/method.md) the canvas is a ROW of ``k + 1`` frames
``[ref_1 | ... | ref_k | target]``; ``k = 1`` is exactly the two-frame canvas of the authors.

Images move through here as float tensors ``[B, 3, H, W]`` in ``[0, 1]`` (``to_rgb01``
accepts PIL images, numpy arrays of any common dtype and ComfyUI ``IMAGE`` tensors). The
canvas itself is in the VAE's ``[-1, 1]`` range with frame two at -1, as the authors' code.

``fit="crop"`` (the default) is the authors' preprocessing, pixel for pixel: centre crop (a square of
side ``min(w, h)`` for the square frame of the 512x1024 canvas, the frame's aspect otherwise), then
``PIL.Image.resize(frame size, BICUBIC)`` on 8-bit pixels. ``pad`` and ``stretch`` resize in torch
(antialiased bicubic on floats). The ComfyUI node, the standalone sampler and training all compose
through here, so they get bit-identical canvases from the same input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .tokens import PIXELS_PER_TOKEN, CanvasSizeError, check_pixel_size

FitMode = Literal["crop", "pad", "stretch"]
FIT_MODES: tuple[str, ...] = ("crop", "pad", "stretch")
MIN_REFERENCE_SIDE = 32
MAX_REFERENCES = 8  # a guard against absurd canvases; training and the docs go to k = 3


class ReferenceImageError(ValueError):
    """A reference image that cannot be used (empty, tiny, wrong shape)."""


@dataclass(frozen=True)
class CanvasLayout:
    """Pixel geometry of a DSD canvas: ``height x width`` in all, ``references + 1`` frames side by side."""

    height: int = 512
    width: int = 1024
    fit: FitMode = "crop"
    pad_value: float = 1.0  # letterbox colour in [0, 1] for fit="pad" (white)
    references: int = 1  # k: frames 1..k hold references, frame k + 1 the target

    def __post_init__(self) -> None:
        check_pixel_size(self.height, self.width)
        if self.fit not in FIT_MODES:
            raise ValueError(f"fit must be one of {', '.join(FIT_MODES)}, got {self.fit!r}")
        k = self.references
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_REFERENCES:
            raise ValueError(f"references must be an integer from 1 to {MAX_REFERENCES}, got {k!r}")
        if k > 1 and self.width % (self.frames * PIXELS_PER_TOKEN):
            # every frame must be whole tokens, or frames would share token columns
            raise CanvasSizeError(
                f"a canvas of {self.frames} frames needs a width that is a multiple of {self.frames * PIXELS_PER_TOKEN} "
                f"(frames of whole 16 px tokens), got {self.width}; try {self.frames * max(16, self.width // self.frames // 16 * 16)}"
            )

    @classmethod
    def from_frame(cls, height: int, frame_width: int, references: int = 1, **kw: Any) -> CanvasLayout:
        """The layout of ``references + 1`` frames of ``height x frame_width`` each."""
        return cls(height=height, width=(references + 1) * frame_width, references=references, **kw)

    @property
    def frames(self) -> int:
        return self.references + 1

    @property
    def frame_width(self) -> int:
        return self.width // self.frames

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.height // 8, self.width // 8

    @property
    def token_count(self) -> int:
        return (self.height // PIXELS_PER_TOKEN) * (self.width // PIXELS_PER_TOKEN)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CanvasLayout:
        """A layout dict; one written before multi-reference DSD (no ``references``) is one reference."""
        return cls(**data)


def _pil_to_array(image: Any) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        raw = np.asarray(image)
        # Mode "I" (32-bit) is how Pillow hands over most 16-bit files (TIFF, older PNG readers):
        # values up to 65535 are 16-bit data, as ComfyUI's LoadImage also assumes.
        sixteen = image.mode.startswith("I;16") or (raw.size > 0 and 0 <= raw.min() and raw.max() <= 65535)
        return raw.astype(np.float32) / (65535.0 if sixteen else 2**31 - 1)
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
    return np.asarray(image)


def _array_to_tensor(arr: np.ndarray) -> torch.Tensor:
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(arr.dtype, 1.0)
    return torch.from_numpy(np.ascontiguousarray(arr.astype(np.float32) / scale))


def _to_bchw(x: torch.Tensor, channels_last: bool | None, shape: tuple[int, ...]) -> torch.Tensor:
    if x.ndim == 2:
        x, channels_last = x[None, :, :, None], True
    elif x.ndim == 3:
        if channels_last is None:
            channels_last = x.shape[-1] in (1, 2, 3, 4) and x.shape[0] not in (1, 2, 3, 4)
        x = x[None]
    if x.ndim != 4:
        raise ReferenceImageError(f"reference image must have 2-4 dimensions, got shape {shape}")
    if channels_last is None:
        channels_last = x.shape[-1] in (1, 2, 3, 4)
    return x.permute(0, 3, 1, 2) if channels_last else x


def _to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Gray is repeated to RGB; alpha is composited over white."""
    c = x.shape[1]
    if c == 1:
        return x.expand(-1, 3, -1, -1)
    if c == 2:
        gray, alpha = x[:, :1], x[:, 1:2]
        return (gray * alpha + (1 - alpha)).expand(-1, 3, -1, -1)
    if c == 4:
        rgb, alpha = x[:, :3], x[:, 3:4]
        return rgb * alpha + (1 - alpha)
    if c != 3:
        raise ReferenceImageError(f"reference image has {c} channels; expected 1 (gray), 2, 3 (RGB) or 4 (RGBA)")
    return x


def to_rgb01(image: Any, channels_last: bool | None = None) -> torch.Tensor:
    """Any reference image -> float32 ``[B, 3, H, W]`` in ``[0, 1]``.

    Accepts a PIL image (any mode), a numpy array (HW, HWC, BHWC; uint8, uint16, float) or a
    torch tensor (ComfyUI ``IMAGE`` ``[B, H, W, C]`` or ``[B, C, H, W]``; set ``channels_last``
    when ambiguous). Grayscale is repeated to RGB; alpha is composited over white.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        image, channels_last = _pil_to_array(image), True
    if isinstance(image, np.ndarray):
        image = _array_to_tensor(image)
        channels_last = True if channels_last is None else channels_last
    if not isinstance(image, torch.Tensor):
        raise ReferenceImageError(f"unsupported reference image type {type(image).__name__}")
    x = _to_rgb(_to_bchw(image.detach().to(torch.float32), channels_last, tuple(image.shape)))
    if x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ReferenceImageError("reference image is empty")
    return x.clamp(0.0, 1.0).contiguous()


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if x.shape[-2:] == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def _resize_authors(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The authors' resize: 8-bit RGB through ``PIL.Image.resize(..., BICUBIC)``, back to ``[0, 1]``.

    Inputs that came from 8-bit files (PIL, ComfyUI's LoadImage) round-trip to their exact bytes;
    others are rounded to 8 bits first, as the authors' PIL pipeline would.
    """
    from PIL import Image

    frames = []
    for image in x:
        arr = (image.permute(1, 2, 0) * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        resized = Image.fromarray(np.ascontiguousarray(arr), "RGB").resize((width, height), Image.Resampling.BICUBIC)
        frames.append(torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(frames).to(device=x.device)


def crop_box(h: int, w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Centre crop of an ``h x w`` image to the aspect of ``height x width``: ``(top, left, crop_h, crop_w)``.

    For a square frame this is the authors' box: ``((w - m) // 2, (h - m) // 2)`` with ``m = min(w, h)``.
    """
    target_aspect = width / height
    if w / h > target_aspect:
        new_w = max(1, round(h * target_aspect))
        return 0, (w - new_w) // 2, h, new_w
    new_h = max(1, round(w / target_aspect))
    return (h - new_h) // 2, 0, new_h, w


def fit_reference(image01: torch.Tensor, height: int, width: int, fit: FitMode = "crop", pad_value: float = 1.0) -> torch.Tensor:
    """Fit ``[B, 3, h, w]`` into ``height x width``: centre crop, letterbox pad, or stretch."""
    b, _, h, w = image01.shape
    if min(h, w) < MIN_REFERENCE_SIDE:
        raise ReferenceImageError(
            f"reference image is {w}x{h} pixels; DSD needs at least {MIN_REFERENCE_SIDE} px on each side "
            f"(the model reads identity from a {width}x{height} frame). Use a larger reference."
        )
    if fit == "stretch":
        return _resize(image01, height, width)
    if fit == "crop":
        top, left, crop_h, crop_w = crop_box(h, w, height, width)
        return _resize_authors(image01[..., top : top + crop_h, left : left + crop_w], height, width)
    if fit == "pad":
        scale = min(height / h, width / w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        inner = _resize(image01, new_h, new_w)
        out = torch.full((b, 3, height, width), float(pad_value), dtype=image01.dtype, device=image01.device)
        top, left = (height - new_h) // 2, (width - new_w) // 2
        out[..., top : top + new_h, left : left + new_w] = inner
        return out
    raise ValueError(f"fit must be one of {', '.join(FIT_MODES)}, got {fit!r}")


def _reference_list(reference: Any, k: int) -> list[torch.Tensor]:
    """``k`` references -> ``k`` tensors ``[B, 3, h, w]`` of one batch size (a batch of 1 is broadcast)."""
    refs = list(reference) if isinstance(reference, (list, tuple)) else [reference]
    if len(refs) != k:
        raise ReferenceImageError(f"the layout has {k} reference frame(s) but {len(refs)} reference image(s) were given")
    images = [to_rgb01(r) for r in refs]
    b = max(x.shape[0] for x in images)
    if any(x.shape[0] not in (1, b) for x in images):
        sizes = ", ".join(str(x.shape[0]) for x in images)
        raise ReferenceImageError(f"reference batches of sizes {sizes}: each reference must be a batch of 1 or of {b}")
    return [x.expand(b, -1, -1, -1) if x.shape[0] != b else x for x in images]


def compose_canvas(reference: Any, layout: CanvasLayout) -> torch.Tensor:
    """Reference(s) -> canvas ``[B, 3, H, W]`` in ``[-1, 1]``: the references in frames 1..k, the target black (-1).

    One reference (``layout.references == 1``): any image ``to_rgb01`` accepts, a batch making B canvases.
    ``k`` references: a sequence of ``k`` images of one subject (each a batch of B or 1), in frame order.
    """
    images = _reference_list(reference, layout.references)
    fw = layout.frame_width
    canvas = torch.full((images[0].shape[0], 3, layout.height, layout.width), -1.0, dtype=torch.float32)
    for i, ref01 in enumerate(images):
        frame = fit_reference(ref01, layout.height, fw, layout.fit, layout.pad_value)
        canvas[..., i * fw : (i + 1) * fw] = frame * 2.0 - 1.0
    return canvas


def split_frames(canvas: torch.Tensor, frames: int, channels_last: bool = False) -> list[torch.Tensor]:
    """Canvas -> its ``frames`` frames, left to right. Pixel canvases and latents alike (width split evenly)."""
    dim = -2 if channels_last else -1
    width = canvas.shape[dim]
    if frames < 1 or width % frames:
        raise CanvasSizeError(f"a canvas {width} wide does not split into {frames} equal frames")
    return list(canvas.split(width // frames, dim=dim))


def split_canvas(canvas: torch.Tensor, layout: CanvasLayout | None = None, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Canvas -> (frame one, target). Two frames: (frame one, frame two); more: (frame one, the LAST frame)."""
    if layout is not None and layout.references > 1:
        frames = split_frames(canvas, layout.frames, channels_last)
        return frames[0], frames[-1]
    width = canvas.shape[-2] if channels_last else canvas.shape[-1]
    if layout is not None and not channels_last and canvas.shape[-1] == layout.width:
        half = layout.frame_width
    else:
        half = width // 2
    if channels_last:
        return canvas[:, :, :half, :], canvas[:, :, half:, :]
    return canvas[..., :half], canvas[..., half:]


def canvas_to_image01(canvas: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` -> ``[0, 1]`` (decoded canvases)."""
    return ((canvas.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def tensor_to_pil(image01: torch.Tensor):
    """``[3, H, W]`` or ``[1, 3, H, W]`` in ``[0, 1]`` -> PIL RGB."""
    from PIL import Image

    if image01.ndim == 4:
        image01 = image01[0]
    arr = (image01.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr, "RGB")
