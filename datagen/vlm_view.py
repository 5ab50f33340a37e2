"""The bytes a VLM sees of a panel: downscaled to a max side, PNG or JPEG.

The panels stage writes this "view" beside each panel while the panel is still in memory (an
encode, no decode), so curation reads ready bytes instead of decoding and re-encoding every
panel on its own critical path. The file name carries the encoding settings; curation falls back
to encoding from the panel when no view with its settings exists. Same pixels, same settings,
same bytes either way, so cached VLM answers stay valid.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

from PIL import Image

# One image-reading rule for the whole project (EXIF orientation, alpha over white, 16-bit, palette):
# the panels and curate stages read through these names.
from dsd.images import UnreadableImage
from dsd.images import read_image as read_rgb


class ViewSpec(NamedTuple):
    max_side: int
    image_format: str  # "jpeg" | "png"
    jpeg_quality: int


def view_path(panel: Path, spec: ViewSpec) -> Path:
    if spec.image_format == "jpeg":
        return panel.with_name(f"{panel.stem}.vlm{spec.max_side}q{spec.jpeg_quality}.jpg")
    return panel.with_name(f"{panel.stem}.vlm{spec.max_side}.png")


def encode_view(image: Image.Image, spec: ViewSpec) -> bytes:
    """Long side at most ``max_side`` (VLM APIs downscale anyway; fewer pixels, fewer input tokens)."""
    from dsd.providers import image_to_png_bytes

    image = image.convert("RGB")
    if max(image.size) > spec.max_side:
        image = image.copy()
        image.thumbnail((spec.max_side, spec.max_side), Image.Resampling.LANCZOS)
    if spec.image_format == "png":
        return image_to_png_bytes(image)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=spec.jpeg_quality)
    return buf.getvalue()

__all__ = ["UnreadableImage", "ViewSpec", "encode_view", "read_rgb", "view_path"]
