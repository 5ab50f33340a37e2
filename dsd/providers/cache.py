"""On-disk answer cache: one JSON file per request key, sharded by the key's first bytes.

A rerun of a datagen stage or a re-queued ComfyUI graph costs nothing for answers already
paid for. Writes are atomic, so a killed run never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from .config import ProviderConfig
from .types import ChatRequest

logger = logging.getLogger(__name__)

_CACHE_FORMAT = 1


def request_cache_key(config: ProviderConfig, request: ChatRequest) -> str:
    """sha256 over endpoint, kind, model, prompt, system, image bytes, schema and temperature.

    The normalised endpoint is part of it: the same request to two servers is two questions (an
    answer from one server must never be served as the other's).
    """
    h = hashlib.sha256()

    def put(tag: str, value: bytes) -> None:
        # Length-prefixed fields: no two different requests can serialise to the same stream.
        h.update(tag.encode() + b":" + str(len(value)).encode() + b":" + value)

    put("v", str(_CACHE_FORMAT).encode())
    put("endpoint", config.endpoint.encode())
    put("kind", config.kind.encode())
    put("model", config.model.encode())
    put("prompt", request.prompt.encode())
    put("system", (request.system if request.system is not None else "\0none").encode())
    for image in request.images:
        put("image", hashlib.sha256(image).digest())
    schema = json.dumps(request.json_schema, sort_keys=True) if request.json_schema is not None else "\0none"
    put("schema", schema.encode())
    put("temperature", repr(float(request.temperature)).encode())
    for role, text in request.history:  # none: the same key as before history existed
        put("turn", f"{role}\0{text}".encode())
    return h.hexdigest()


class AnswerCache:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / key[2:4] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            # A corrupt entry is just a miss: the answer is fetched again and rewritten.
            logger.warning("ignoring unreadable cache entry %s (%s)", path, exc)
            return None
        if not isinstance(entry, dict) or entry.get("format") != _CACHE_FORMAT or "text" not in entry:
            return None
        return entry

    def put(self, key: str, text: str, data: dict | None, input_tokens: int, output_tokens: int) -> None:
        # Imported here: dsd.io pulls in torch, which the provider layer otherwise never needs.
        from ..io import atomic_write_json

        entry = {
            "format": _CACHE_FORMAT,
            "text": text,
            "data": data,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
        }
        atomic_write_json(self.path(key), entry, indent=None)
