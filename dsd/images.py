"""The one rule for reading a file as a picture: what ComfyUI's LoadImage and DreamBench++ see.

``read_image(path_or_bytes)`` and ``to_rgb(image)`` give an 8-bit RGB ``PIL.Image``:

* EXIF orientation is applied (``ImageOps.exif_transpose``): a phone photo tagged "rotate 90" is
  scored, conditioned on and trained on upright, as every viewer shows it;
* transparency (RGBA, LA, PA, a palette or L/RGB image with a ``transparency`` key) is composited
  on white, like DreamBench++'s loader and our canvas (``dsd.canvas``), rather than dropped, which
  would keep whatever colour the transparent pixels happen to hold;
* 16-bit and 32-bit grey (``I;16*``, ``I``) are scaled to 8 bits (``convert("RGB")`` would clip
  every value above 255 to white), float grey (``F``) is read as [0, 1] when it stays there;
* CMYK, YCbCr, LAB, HSV, 1-bit and 8-bit grey go through Pillow's own conversion.

A file that cannot be decoded raises :class:`UnreadableImage` naming it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = Union[str, Path, bytes]
WHITE = (255, 255, 255)
ORIENTATION_TAG = 0x0112


class UnreadableImage(ValueError):
    """An image file that cannot be decoded; the message names the file and the reason."""


def read_image(source: ImageSource, where: str | None = None) -> Image.Image:
    """The picture in ``source`` (a path or the file's bytes) as 8-bit RGB, by the rule above."""
    name = where or ("<bytes>" if isinstance(source, bytes) else str(source))
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im.load()
            return to_rgb(im)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"unreadable image {name}: {type(exc).__name__}: {exc}") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` (any mode, possibly EXIF-rotated) upright, 8-bit RGB, transparency over white."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        return _wide_grey(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*WHITE, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as :func:`to_rgb` will return it, from the header only (no pixel decode)."""
    # EXIF orientations 5-8 are the transposed ones (90 / 270 degrees, with or without a mirror)
    swapped = image.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8)
    return (image.height, image.width) if swapped else image.size


def _wide_grey(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0
    else:  # 16-bit files come as I;16* or (older Pillow, PNG) I holding 0..65535
        scale = 255.0 / 65535.0
    grey = np.clip(np.nan_to_num(values * scale), 0, 255).round().astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


__all__ = ["UnreadableImage", "read_image", "to_rgb", "upright_size"]
