"""Request, result and usage records shared by every provider."""

from __future__ import annotations

import dataclasses
import io
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class Usage:
    """Token, request and cost counters. ``cached`` counts answers served from the disk cache."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached: int = 0
    retries: int = 0
    cost_usd: float = 0.0

    def add(self, other: Usage) -> Usage:
        """Add ``other`` into this record in place (returns self)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def merge(self, other: Usage) -> Usage:
        """A new record with the sum of both."""
        return Usage().add(self).add(other)

    __add__ = merge

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class UsageCounter:
    """Running totals shared by threads and event loops (a lock, because both touch it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._usage = Usage()

    def add(self, usage: Usage) -> None:
        with self._lock:
            self._usage.add(usage)

    def snapshot(self) -> Usage:
        with self._lock:
            return dataclasses.replace(self._usage)


@dataclass(frozen=True)
class ChatRequest:
    """One prompt (+ optional images) for an LLM/VLM.

    ``images`` are encoded PNG/JPEG/WEBP bytes (see :func:`image_to_png_bytes`). With
    ``json_schema`` the model is asked for structured output and ``ChatResult.data`` holds the
    parsed, validated object.
    """

    prompt: str
    system: str | None = None
    images: tuple[bytes, ...] = ()
    json_schema: dict | None = field(default=None, hash=False)
    schema_name: str = "answer"
    temperature: float = 0.0
    max_output_tokens: int = 1024
    # earlier turns, oldest first, as (role, text) with role "user" or "assistant" (e.g. a protocol that
    # primes the judge with a fixed exchange before the question)
    history: tuple[tuple[str, str], ...] = ()


@dataclass
class ChatResult:
    text: str
    data: dict | None
    usage: Usage
    cached: bool


def image_to_png_bytes(image: Image.Image) -> bytes:
    """Encode a PIL image as PNG bytes (RGBA/LA/P kept, everything else converted to RGB)."""
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def image_mime_type(data: bytes) -> str:
    """MIME type from the magic bytes; the APIs need it in the data URI / inline_data."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    raise ValueError(
        "ChatRequest.images must hold encoded PNG/JPEG/WEBP/GIF bytes; "
        "use dsd.providers.image_to_png_bytes(pil_image) to encode a PIL image"
    )
