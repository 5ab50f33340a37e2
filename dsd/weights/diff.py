"""Where does the DSD release's transformer differ from FLUX.1-dev? Streaming diff + SVD extraction.

The release ships a full FLUX transformer; whether it is FLUX.1-dev unchanged (plus the
embedder) is undocumented (docs/method.md §2). :func:`diff_against_base` compares it with a
user's FLUX.1-dev file tensor by tensor and never holds either model in RAM: tensors are
read one at a time, and each file is re-opened per read so that its memory map (which counts
towards the process's resident set once touched) is released after every tensor. A fused BFL
tensor (``qkv``, ``linear1``) is read once and sliced into its diffusers parts.

With ``svd_rank`` the difference of every differing 2-D weight is factored by truncated SVD
into a LoRA pair in the same diffusers layout as the DSD LoRA (ComfyUI maps it onto FLUX);
1-D tensors (biases, norm scales) cannot be expressed as a LoRA and are listed as such.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .errors import WeightsError
from .layout import LayoutError, bfl_to_diffusers, detect_layout
from .lora import LoraPair
from .release import base_key, is_stray_peft_key
from .safetensors_io import open_safetensors, shard_files

logger = logging.getLogger(__name__)

_BFL_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


# -- file inventory ---------------------------------------------------------------------------


def file_fingerprint(path: str | os.PathLike[str]) -> dict[str, object]:
    """Name, size and sha256 of the safetensors header (cheap; identifies the file without reading it)."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) == 8:
            (n,) = struct.unpack("<Q", raw)
            if 0 < n <= min(size - 8, 100_000_000):
                digest.update(raw)
                digest.update(fh.read(n))
    return {"file": path.name, "size": size, "header_sha256": digest.hexdigest()}


@dataclass(frozen=True)
class _Entry:
    path: Path
    key: str  # key as stored in the file
    shape: tuple[int, ...]
    dtype: str


class TensorIndex:
    """Key -> (file, stored key, shape, dtype) over one or more safetensors files; reads one tensor at a time."""

    def __init__(self, entries: dict[str, _Entry]) -> None:
        self.entries = entries

    @classmethod
    def scan(cls, files: list[Path], rename=lambda k: k, keep=lambda k: True) -> TensorIndex:
        entries: dict[str, _Entry] = {}
        for path in files:
            with open_safetensors(path) as f:
                for k in f.keys():
                    if not keep(k):
                        continue
                    sl = f.get_slice(k)
                    entries[rename(k)] = _Entry(path, k, tuple(sl.get_shape()), str(sl.get_dtype()))
        return cls(entries)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def keys(self) -> list[str]:
        return list(self.entries)

    def read(self, key: str) -> torch.Tensor:
        e = self.entries[key]
        # Re-open per tensor: closing drops the memory map, keeping the resident set to one tensor.
        with open_safetensors(e.path) as f:
            try:
                return f.get_tensor(e.key)
            except Exception as exc:  # noqa: BLE001 - safetensors raises several unrelated types for bad data
                raise WeightsError(f"{e.path}: tensor {e.key!r} cannot be read ({exc}); the file is truncated or corrupt") from exc


def release_base_index(transformer_dir: str | os.PathLike[str]) -> TensorIndex:
    """The release's base FLUX tensors under diffusers keys (no embedder, no stray PEFT keys)."""
    return TensorIndex.scan(
        shard_files(transformer_dir),
        rename=base_key,
        keep=lambda k: not k.startswith("c_embedder.") and not is_stray_peft_key(k),
    )


# -- the user's FLUX.1-dev --------------------------------------------------------------------


@dataclass
class BaseFlux:
    """A FLUX.1-dev transformer given as one BFL/ComfyUI safetensors or a diffusers folder."""

    path: Path
    layout: str  # "bfl" | "diffusers"
    index: TensorIndex
    files: list[Path]
    ignored_keys: list[str] = field(default_factory=list)  # VAE / text encoder keys of an all-in-one file


def open_base(path: str | os.PathLike[str]) -> BaseFlux:
    path = Path(path)
    if path.is_dir():
        folder = path / "transformer" if (path / "transformer").is_dir() and not (path / "config.json").is_file() else path
        files = shard_files(folder)
    elif path.is_file():
        files = [path]
    else:
        raise WeightsError(f"{path}: not found; --base needs FLUX.1-dev as one .safetensors file or a diffusers transformer folder")
    index = TensorIndex.scan(files)
    keys = index.keys()
    ignored: list[str] = []
    if any(k.startswith(_BFL_PREFIXES) for k in keys):
        # all-in-one checkpoints also carry the VAE and text encoders: keep the diffusion model only
        kept = {k: e for k, e in index.entries.items() if k.startswith(_BFL_PREFIXES)}
        ignored = sorted(set(keys) - set(kept))
        index = TensorIndex({_strip(k): e for k, e in kept.items()})
    layout = detect_layout(index.keys())
    if layout == "unknown":
        sample = ", ".join(sorted(keys)[:3])
        raise WeightsError(
            f"{path}: not a FLUX transformer checkpoint (keys like {sample}). --base needs FLUX.1-dev: "
            "flux1-dev.safetensors (BFL/ComfyUI keys) or the transformer folder of the diffusers release."
        )
    return BaseFlux(path=path, layout=layout, index=index, files=files, ignored_keys=ignored)


def _strip(key: str) -> str:
    for p in _BFL_PREFIXES:
        if key.startswith(p):
            return key[len(p) :]
    return key


def _bfl_parts(key: str, tensor: torch.Tensor, hidden: int) -> dict[str, torch.Tensor]:
    """One BFL tensor -> its diffusers tensor(s) (slices of fused ``qkv`` / ``linear1``), via dsd.weights.layout."""
    state = {key: tensor}
    if key != "img_in.weight":
        # linear1 is split by the hidden size, which bfl_to_diffusers reads from img_in.weight's shape
        state["img_in.weight"] = torch.empty((hidden, 1), device="meta")
    out = bfl_to_diffusers(state)
    if key != "img_in.weight":
        out.pop("x_embedder.weight")
    return out


def iter_base_tensors(base: BaseFlux, hidden: int) -> Iterator[tuple[str, list[tuple[str, torch.Tensor]]]]:
    """``(stored key, [(diffusers key, tensor), ...])`` one stored tensor at a time."""
    for key in base.index.keys():
        t = base.index.read(key)
        if base.layout == "diffusers":
            yield key, [(base_key(key), t)]
            continue
        try:
            parts = _bfl_parts(key, t, hidden)
        except LayoutError:
            yield key, []
            continue
        yield key, list(parts.items())


# -- the diff ---------------------------------------------------------------------------------


@dataclass
class TensorDiff:
    key: str  # diffusers key
    base_key: str  # key in the base file
    shape: list[int]
    release_dtype: str
    base_dtype: str
    max_abs: float
    rel_fro: float  # ||release - base||_F / ||base||_F
    svd_rank: int | None = None
    svd_rel_error: float | None = None  # ||delta - B A||_F / ||delta||_F
    note: str = ""


@dataclass
class DiffReport:
    release: str
    base: str
    base_layout: str
    tensors_compared: int = 0
    tensors_differing: int = 0
    max_abs: float = 0.0
    overall_rel_fro: float = 0.0
    atol: float = 0.0
    differing: list[TensorDiff] = field(default_factory=list)
    only_in_release: list[str] = field(default_factory=list)
    only_in_base: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    dtypes: dict[str, list[str]] = field(default_factory=dict)  # release dtype(s) / base dtype(s)
    svd: dict[str, object] | None = None

    @property
    def identical(self) -> bool:
        return not (self.tensors_differing or self.only_in_release or self.shape_mismatch)

    def by_block(self) -> dict[str, int]:
        """Differing tensors per block (``transformer_blocks.3``, ``single_transformer_blocks.10``, top level)."""
        counts: dict[str, int] = {}
        for d in self.differing:
            parts = d.key.split(".")
            group = ".".join(parts[:2]) if parts[0] in ("transformer_blocks", "single_transformer_blocks") else parts[0]
            counts[group] = counts.get(group, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: _natural(kv[0])))

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["identical"] = self.identical
        d["differing_by_block"] = self.by_block()
        return d


def _natural(key: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


@dataclass
class DiffResult:
    report: DiffReport
    delta_lora: dict[str, LoraPair]  # empty unless svd_rank was given and something differs


def _max_abs(t: torch.Tensor) -> float:
    if not t.numel():
        return 0.0
    lo, hi = torch.aminmax(t)  # no |t| temporary
    return max(-lo.item(), hi.item())


def _sq_norm(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t).item()) ** 2 if t.numel() else 0.0


def _residual_norm(d: torch.Tensor, up: torch.Tensor, down: torch.Tensor, rows: int = 1024) -> float:
    """``||d - up @ down||_F`` in row blocks, so no second full-size matrix is materialised."""
    total = 0.0
    for i in range(0, d.shape[0], rows):
        total += _sq_norm(d[i : i + rows] - up[i : i + rows] @ down)
    return total**0.5


def svd_lora(delta: torch.Tensor, rank: int) -> tuple[LoraPair, float]:
    """Truncated SVD of a 2-D delta ``[out, in]`` -> (LoRA pair with alpha=None, relative Frobenius error)."""
    d = delta.to(torch.float32)
    k = min(rank, *d.shape)
    norm = torch.linalg.matrix_norm(d).item()
    if norm == 0.0:
        return LoraPair(down=torch.zeros(k, d.shape[1]), up=torch.zeros(d.shape[0], k)), 0.0
    if k >= min(d.shape) // 2:
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        u, s, vh = u[:, :k], s[:k], vh[:k]
    else:
        # randomized range finder: much faster than a full SVD when k << min(shape); the error is measured below
        u, s, v = torch.svd_lowrank(d, q=min(k + 8, min(d.shape)), niter=4)
        u, s, vh = u[:, :k], s[:k], v[:, :k].T
    root = s.sqrt()
    up = (u * root).contiguous()  # split singular values evenly: both factors at a similar scale
    down = (root[:, None] * vh).contiguous()
    err = _residual_norm(d, up, down) / norm
    return LoraPair(down=down, up=up, alpha=None), err


@dataclass
class _DiffTally:
    """Running sums of one streaming comparison, turned into the report's figures at the end."""

    report: DiffReport
    release: TensorIndex
    base: BaseFlux
    svd_rank: int | None
    seen: set[str] = field(default_factory=set)
    diff_sq: float = 0.0
    base_sq: float = 0.0
    delta_sq: float = 0.0  # over the tensors extracted as LoRA
    resid_sq: float = 0.0
    lora: dict[str, LoraPair] = field(default_factory=dict)
    svd_items: list[dict[str, object]] = field(default_factory=list)
    not_representable: list[str] = field(default_factory=list)

    def compare(self, key: str, stored_key: str, b: torch.Tensor) -> None:
        if key not in self.release:
            self.report.only_in_base.append(key)
            return
        self.seen.add(key)
        r = self.release.read(key)
        if tuple(r.shape) != tuple(b.shape):
            self.report.shape_mismatch.append(f"{key}: release {tuple(r.shape)} vs base {tuple(b.shape)}")
            return
        self.report.tensors_compared += 1
        # fp32 copies only where the stored dtype differs; the delta is formed in place in the
        # release tensor, which is a fresh copy read from disk
        bf = b.to(torch.float32)
        delta = r.to(torch.float32).sub_(bf) if r.dtype != torch.float32 else r.sub_(bf)
        dsq, bsq = _sq_norm(delta), _sq_norm(bf)
        self.diff_sq += dsq
        self.base_sq += bsq
        max_abs = _max_abs(delta)
        if max_abs > self.report.atol:
            self._record(key, stored_key, delta, max_abs, dsq, bsq)

    def _record(self, key: str, stored_key: str, delta: torch.Tensor, max_abs: float, dsq: float, bsq: float) -> None:
        td = TensorDiff(
            key=key, base_key=stored_key, shape=list(delta.shape), release_dtype=self.release.entries[key].dtype,
            base_dtype=self.base.index.entries[stored_key].dtype, max_abs=max_abs,
            rel_fro=math.sqrt(dsq) / math.sqrt(bsq) if bsq > 0 else math.inf,
        )  # fmt: skip
        self.report.tensors_differing += 1
        self.report.max_abs = max(self.report.max_abs, max_abs)
        if self.svd_rank is not None:
            self._extract_lora(td, delta, dsq)
        self.report.differing.append(td)

    def _extract_lora(self, td: TensorDiff, delta: torch.Tensor, dsq: float) -> None:
        module = td.key[: -len(".weight")] if td.key.endswith(".weight") else None
        if delta.ndim != 2 or module is None:
            td.note = "not representable as a LoRA (not a 2-D linear weight)"
            self.not_representable.append(td.key)
            return
        pair, err = svd_lora(delta, self.svd_rank)
        self.lora[module] = pair
        td.svd_rank, td.svd_rel_error = pair.rank, err
        self.delta_sq += dsq
        self.resid_sq += (err**2) * dsq
        self.svd_items.append({"key": td.key, "rank": pair.rank, "rel_error": err})

    def finish(self) -> DiffResult:
        report = self.report
        report.only_in_release = sorted(set(self.release.keys()) - self.seen)
        report.only_in_base = sorted(set(report.only_in_base))
        report.overall_rel_fro = math.sqrt(self.diff_sq) / math.sqrt(self.base_sq) if self.base_sq > 0 else 0.0
        report.differing.sort(key=lambda d: _natural(d.key))
        if self.svd_rank is not None:
            report.svd = {
                "rank": self.svd_rank,
                "tensors": self.svd_items,
                "not_representable": self.not_representable,
                "overall_rel_error": math.sqrt(self.resid_sq / self.delta_sq) if self.delta_sq > 0 else 0.0,
                "file": None,
            }
        return DiffResult(report=report, delta_lora=self.lora)


def diff_against_base(
    transformer_dir: str | os.PathLike[str],
    base_path: str | os.PathLike[str],
    hidden: int,
    svd_rank: int | None = None,
    atol: float = 0.0,
    progress: bool = True,
) -> DiffResult:
    """Compare the release's base tensors with FLUX.1-dev, streaming; optionally extract the difference as a LoRA."""
    release = release_base_index(transformer_dir)
    base = open_base(base_path)
    _check_same_size(release, base, hidden, transformer_dir)
    report = DiffReport(release=Path(transformer_dir).name, base=Path(base_path).name, base_layout=base.layout, atol=atol)
    report.dtypes = {
        "release": sorted({e.dtype for e in release.entries.values()}),
        "base": sorted({e.dtype for e in base.index.entries.values()}),
    }
    tally = _DiffTally(report, release, base, svd_rank)
    iterator = iter_base_tensors(base, hidden)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(base.index.keys()), desc="diff vs base", unit="tensor")
    for stored_key, parts in iterator:
        if not parts:
            report.only_in_base.append(stored_key)
        for key, b in parts:
            tally.compare(key, stored_key, b)
        del parts  # one base tensor in memory at a time
    return tally.finish()


def _check_same_size(release: TensorIndex, base: BaseFlux, hidden: int, transformer_dir) -> None:
    bkey = "img_in.weight" if base.layout == "bfl" else "x_embedder.weight"
    if bkey not in base.index:
        raise WeightsError(f"{base.path}: no {bkey}; the file is not a complete FLUX transformer")
    base_hidden = base.index.entries[bkey].shape[0]
    if base_hidden != hidden:
        raise WeightsError(
            f"{base.path}: FLUX with hidden size {base_hidden}, but the release in {transformer_dir} has {hidden}: "
            "they are different model sizes; give the FLUX.1-dev the release was trained from"
        )


def format_summary(report: DiffReport, limit: int = 12) -> list[str]:
    """A one-screen readable summary of a diff report."""
    lines = [f"release transformer vs base {report.base} ({report.base_layout} layout):"]
    if report.identical:
        lines.append(f"  IDENTICAL: {report.tensors_compared} tensors compared, no difference (atol {report.atol:g})")
    else:
        lines.append(
            f"  DIFFERS: {report.tensors_differing} of {report.tensors_compared} tensors differ; max |diff| "
            f"{report.max_abs:.3g}, overall relative Frobenius {report.overall_rel_fro:.3g}"
        )
        blocks = report.by_block()
        if blocks:
            lines.append("  where: " + ", ".join(f"{k} ({v})" for k, v in list(blocks.items())[:limit]) + (" ..." if len(blocks) > limit else ""))
        top = sorted(report.differing, key=lambda d: -d.rel_fro)[:limit]
        for d in top:
            extra = f"  svd rank {d.svd_rank} err {d.svd_rel_error:.3g}" if d.svd_rel_error is not None else (f"  ({d.note})" if d.note else "")
            lines.append(f"    {d.key:<56} max {d.max_abs:.3g}  rel {d.rel_fro:.3g}{extra}")
    if report.only_in_release:
        lines.append(f"  {len(report.only_in_release)} release tensors have no counterpart in the base, e.g. {report.only_in_release[:3]}")
    if report.only_in_base:
        lines.append(f"  {len(report.only_in_base)} base tensors unused, e.g. {report.only_in_base[:3]}")
    for s in report.shape_mismatch[:limit]:
        lines.append(f"  shape mismatch: {s}")
    if report.svd is not None and not report.identical:
        svd = report.svd
        lines.append(
            f"  SVD LoRA rank {svd['rank']}: {len(svd['tensors'])} tensors, overall relative reconstruction error "
            f"{svd['overall_rel_error']:.3g}; {len(svd['not_representable'])} not representable"
            + (f" -> {svd['file']}" if svd.get("file") else "")
        )
    return lines


def report_json(report: DiffReport) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=True, default=str)
