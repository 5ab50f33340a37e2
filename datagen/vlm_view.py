"""The bytes a VLM sees of a panel: downscaled to a max side, PNG or JPEG.

The panels stage writes this "view" beside each panel while the panel is still in memory (an
encode, no decode), so curation reads ready bytes instead of decoding and re-encoding every
panel on its own critical path. The file name carries the encoding settings; curation falls back
to encoding from the panel when no view with its settings exists. Same pixels, same settings,
same bytes either way, so cached VLM answers stay valid.

A view is derived data and can be damaged (cut short by a full disk, emptied, overwritten): curation
decodes it (``dsd.images``) before sending it, since a provider answers a bad image with an HTTP
error that says nothing about which file is at fault. A damaged view is rebuilt from its panel and
rewritten; only a panel that cannot be read either makes its items unreadable (``upload_bytes``).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import NamedTuple

from PIL import Image

# One image-reading rule for the whole project (EXIF orientation, alpha over white, 16-bit, palette):
# the panels and curate stages read through these names.
from dsd.images import UnreadableImage
from dsd.images import read_image as read_rgb
from dsd.io import atomic_write_bytes

logger = logging.getLogger(__name__)
MAGIC = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}


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


def view_damage(data: bytes, spec: ViewSpec, where: Path) -> str | None:
    """Why ``data`` is no upload view of ``spec`` (None when it is one): it must be a file of the
    spec's format that decodes whole, its long side at most ``max_side``."""
    if not data.startswith(MAGIC[spec.image_format]):
        return f"{where.name} is not a {spec.image_format.upper()} file ({len(data)} bytes)"
    try:
        size = read_rgb(data, where=str(where)).size
    except UnreadableImage as exc:
        return str(exc)
    if max(size) > spec.max_side:
        return f"{where.name} is {size[0]}x{size[1]}, larger than its max side {spec.max_side}"
    return None


def upload_bytes(panel: Path, spec: ViewSpec) -> bytes:
    """What curation sends of ``panel``: its view for ``spec``, byte for byte, when that decodes as
    one (``view_damage``); else the panel encoded now, and a damaged view rewritten with those bytes.
    Raises UnreadableImage, naming the panel (and the damaged view), when the panel cannot be read."""
    view = view_path(panel, spec)
    try:
        data = view.read_bytes()
    except FileNotFoundError:
        return encode_view(read_rgb(panel), spec)
    except OSError as exc:  # a folder of that name, no permission, an I/O error
        damage: str | None = f"{view.name}: {type(exc).__name__}: {exc}"
    else:
        damage = view_damage(data, spec, view)
        if damage is None:
            return data
    try:
        data = encode_view(read_rgb(panel), spec)
    except UnreadableImage as exc:
        raise UnreadableImage(f"{exc} (and its upload view is damaged: {damage})") from exc
    logger.warning("damaged upload view rebuilt from its panel %s: %s", panel, damage)
    try:
        atomic_write_bytes(view, data)
    except OSError as exc:  # the bytes are good either way; the next run rebuilds them again
        logger.warning("could not rewrite the upload view %s: %s", view, exc)
    return data


__all__ = ["UnreadableImage", "ViewSpec", "encode_view", "read_rgb", "upload_bytes", "view_damage", "view_path"]
