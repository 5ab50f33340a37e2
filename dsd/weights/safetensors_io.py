"""Safe, streaming access to safetensors files with errors that name the file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePath

import torch

from .errors import WeightsError


@contextmanager
def open_safetensors(path: str | os.PathLike[str]) -> Iterator[object]:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            yield handle
    except SafetensorError as exc:
        raise WeightsError(
            f"{path}: not a readable safetensors file ({exc}). The file may be truncated or corrupt "
            "(re-download it) or in another format (only .safetensors weights are loaded)."
        ) from exc
    except (OSError, ValueError) as exc:
        if isinstance(exc, WeightsError):
            raise
        raise WeightsError(f"{path}: cannot be read as safetensors ({exc}); the file may be truncated or corrupt") from exc


def check_finite(tensors: Mapping[str, torch.Tensor], source: str | os.PathLike[str]) -> None:
    """Refuse weights holding NaN/inf: they would run and turn every output black, silently."""
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise WeightsError(
                f"{source}: tensor {key!r} holds {bad} NaN or infinite value(s); the weights are damaged "
                "(re-download the file, or re-export it from a checkpoint whose training did not diverge)."
            )


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    with open_safetensors(path) as f:
        return dict(f.metadata() or {})


def load_tensors(path: str | os.PathLike[str], keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Load (some) tensors; every tensor is read fully, so truncation is detected here."""
    out: dict[str, torch.Tensor] = {}
    with open_safetensors(path) as f:
        names = list(f.keys()) if keys is None else keys
        for k in names:
            try:
                out[k] = f.get_tensor(k)
            except Exception as exc:  # noqa: BLE001 - safetensors raises several unrelated types for bad data
                raise WeightsError(f"{path}: tensor {k!r} cannot be read ({exc}); the file is truncated or corrupt") from exc
    return out


def _shard_path(index: Path, name: object) -> Path:
    """A shard named by an index: a file name (or sub-path) inside the index's folder, nothing else.

    Checked on the name itself, not on the resolved file: a symlinked shard (a Hugging Face cache layout)
    is the folder owner's choice, while ``../`` or an absolute path in the index would read any file."""
    rel = PurePath(name) if isinstance(name, str) and name else None
    if rel is None or rel.is_absolute() or rel.anchor or ".." in rel.parts:
        raise WeightsError(
            f"{index}: shard {name!r} is not a file inside the model folder; an index may only list shard files "
            "beside it (re-download the index)."
        )
    return index.parent / rel


def shard_files(folder: str | os.PathLike[str], stem: str = "diffusion_pytorch_model") -> list[Path]:
    """The safetensors file(s) of a diffusers model folder: single file or index-listed shards."""
    folder = Path(folder)
    index = folder / f"{stem}.safetensors.index.json"
    single = folder / f"{stem}.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:  # bad JSON or text, not an object
            raise WeightsError(f"{index}: not a valid safetensors index ({exc})") from exc
        if not isinstance(weight_map, dict):
            raise WeightsError(f"{index}: not a valid safetensors index (weight_map is not an object)")
        files = sorted({_shard_path(index, name) for name in weight_map.values()})
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise WeightsError(f"{index} lists shard(s) that are missing: {', '.join(missing)}")
        return files
    if single.is_file():
        return [single]
    candidates = sorted(folder.glob("*.safetensors"))
    if candidates:
        return candidates
    raise WeightsError(
        f"{folder}: no {stem}.safetensors, no index and no *.safetensors file. Point to the transformer folder of "
        "the release (the one with config.json)."
    )


def iter_folder_tensors(folder: str | os.PathLike[str], stem: str = "diffusion_pytorch_model") -> Iterator[tuple[str, torch.Tensor, Path]]:
    """Stream (key, tensor, file) over every shard, one tensor in memory at a time."""
    for path in shard_files(folder, stem):
        with open_safetensors(path) as f:
            for k in f.keys():
                try:
                    t = f.get_tensor(k)
                except Exception as exc:  # noqa: BLE001
                    raise WeightsError(f"{path}: tensor {k!r} cannot be read ({exc}); the file is truncated or corrupt") from exc
                yield k, t, path
