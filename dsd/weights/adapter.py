"""The DSD adapter: one compact safetensors with the condition embedder and the LoRA.

Keys: ``c_embedder.weight`` ``[hidden, 64]``, ``c_embedder.bias`` ``[hidden]``, and the LoRA as
``transformer.<diffusers module>.lora_A.weight`` / ``.lora_B.weight`` (+ optional ``.alpha``),
the layout ComfyUI's LoRA loader maps onto FLUX. Metadata (strings only, never a secret):
``dsd_format`` = "dsd-adapter", ``dsd_format_version``, ``dsd_rank``, ``dsd_hidden_size``,
``dsd_source`` and free-form ``dsd_*`` entries (training step, config, dataset hash).
``dsd_train_references`` (JSON list, e.g. "[1, 2, 3]") says which reference counts k the adapter
was trained with (multi-reference DSD); absent means [1], as every adapter before it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io import atomic_save_safetensors
from .errors import WeightsError
from .lora import LoraPair, lora_rank, lora_to_state_dict, parse_lora
from .safetensors_io import check_finite, load_tensors, read_metadata

ADAPTER_FORMAT = "dsd-adapter"
ADAPTER_FORMAT_VERSION = "1"
C_EMBEDDER_KEYS = ("c_embedder.weight", "c_embedder.bias")
_SECRET_HINTS = ("key", "token", "secret", "password", "auth")
TRAIN_REFERENCES_KEY = "dsd_train_references"

logger = logging.getLogger(__name__)


@dataclass
class DSDAdapter:
    c_embedder: dict[str, torch.Tensor]  # c_embedder.weight / c_embedder.bias
    lora: dict[str, LoraPair]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def hidden_size(self) -> int:
        return int(self.c_embedder["c_embedder.weight"].shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.c_embedder["c_embedder.weight"].shape[1])

    @property
    def rank(self) -> int:
        return lora_rank(self.lora) if self.lora else 0

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        return lora_to_state_dict(self.lora)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**{k: v for k, v in self.c_embedder.items()}, **self.lora_state_dict()}


def _check_metadata(extra: dict[str, str]) -> dict[str, str]:
    clean: dict[str, str] = {}
    for k, v in extra.items():
        if any(h in k.lower() for h in _SECRET_HINTS) and "dataset" not in k.lower():
            raise WeightsError(f"refusing to write metadata entry {k!r}: it looks like a secret")
        clean[k if k.startswith("dsd_") else f"dsd_{k}"] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return clean


def save_adapter(adapter: DSDAdapter, path: str | os.PathLike[str], extra_metadata: dict[str, object] | None = None) -> Path:
    if "c_embedder.weight" not in adapter.c_embedder:
        raise WeightsError("adapter has no c_embedder.weight")
    meta = {
        **adapter.metadata,
        **_check_metadata({k: v for k, v in (extra_metadata or {}).items()}),
        "dsd_format": ADAPTER_FORMAT,
        "dsd_format_version": ADAPTER_FORMAT_VERSION,
        "dsd_rank": str(adapter.rank),
        "dsd_hidden_size": str(adapter.hidden_size),
        "dsd_in_channels": str(adapter.in_channels),
        "dsd_lora_modules": str(len(adapter.lora)),
    }
    path = Path(path)
    atomic_save_safetensors(adapter.state_dict(), path, metadata=meta)
    return path


def load_adapter(path: str | os.PathLike[str]) -> DSDAdapter:
    """Read an adapter file; a file that is not a DSD adapter gets an error saying what it is instead."""
    path = Path(path)
    meta = read_metadata(path)
    tensors = load_tensors(path)
    if meta.get("dsd_format") != ADAPTER_FORMAT and "c_embedder.weight" not in tensors:
        hint = ""
        if any(".lora_A." in k or ".lora_down." in k for k in tensors):
            hint = " It looks like a plain LoRA: load it with a LoRA loader, or convert the DSD release with `python -m dsd convert`."
        elif any(k.endswith("img_attn.qkv.weight") or k.endswith("attn.to_q.weight") for k in tensors):
            hint = " It looks like a full FLUX checkpoint, not the DSD adapter."
        raise WeightsError(f"{path}: not a DSD adapter (no c_embedder weights, no dsd_format metadata).{hint}")
    version = meta.get("dsd_format_version", ADAPTER_FORMAT_VERSION)
    if version != ADAPTER_FORMAT_VERSION:
        raise WeightsError(f"{path}: DSD adapter format version {version} is not supported (this pack reads {ADAPTER_FORMAT_VERSION}); update the pack")
    c_emb = {k: tensors.pop(k) for k in C_EMBEDDER_KEYS if k in tensors}
    if "c_embedder.weight" not in c_emb:
        raise WeightsError(f"{path}: DSD adapter lacks c_embedder.weight")
    check_finite(c_emb, path)
    lora = parse_lora(tensors, source=path) if tensors else {}
    return DSDAdapter(c_embedder=c_emb, lora=lora, metadata=meta)


def _parse_references(raw: str | None, source: object) -> list[int]:
    if raw is None:
        return [1]
    try:
        values = json.loads(raw)
        if isinstance(values, list) and values and all(type(v) is int and v >= 1 for v in values):
            return sorted(set(values))
    except ValueError:
        pass
    logger.warning("%s: metadata %s=%r is not a list of reference counts; taking [1]", source, TRAIN_REFERENCES_KEY, raw)
    return [1]


def references_metadata(references: list[int] | tuple[int, ...]) -> dict[str, str]:
    """The metadata entry that records the reference counts an adapter was trained with."""
    return {TRAIN_REFERENCES_KEY: json.dumps(sorted({int(k) for k in references}))}


def trained_references(adapter: DSDAdapter | dict[str, str] | str | os.PathLike[str]) -> list[int]:
    """The reference counts k an adapter was trained with (its ``dsd_train_references``; absent = [1]).

    Takes an adapter, its metadata dict or the path of its file (only the header is read).
    """
    if isinstance(adapter, DSDAdapter):
        meta, source = adapter.metadata, "adapter"
    elif isinstance(adapter, dict):
        meta, source = adapter, "adapter metadata"
    else:
        meta, source = read_metadata(Path(adapter)), adapter
    return _parse_references(meta.get(TRAIN_REFERENCES_KEY), source)


def check_reference_count(count: int, trained: list[int], source: object = "the adapter") -> str | None:
    """Warn (never fail) when ``count`` references exceed what the adapter was trained with; returns the warning."""
    if count <= max(trained):
        return None
    message = (
        f"{count} references given but {source} was trained with at most {max(trained)} (k = {trained}): "
        f"frames beyond what it learned may be ignored or blend identities; results can be worse than with {max(trained)}"
    )
    logger.warning(message)
    return message
