"""Training pairs from Datagen's webdataset shards and from the authors' parquet release; aspect buckets.

Two readers give the same thing, a list of :class:`PairRef` (where a pair lives) and
:func:`read_pair` (its reference, target and caption):

* Datagen folders: ``shard-*.tar`` with ``<key>.ref.png``, ``<key>.target.png``, ``<key>.json``
  ({"caption", ...}); ``index.parquet`` beside them is optional. Tar headers are scanned once
  (no image decoding) and each member's byte offset is kept, so a pair is read with one seek.
* The authors' layout: parquet files with ``image`` (target), ``conditioning`` (reference) and
  ``caption``; image cells are ``{"bytes": png}`` structs or raw bytes. Pairs are addressed by
  (file, row group, row), read one row group at a time.

Multi-reference tuples (datagen, k > 1): ``<key>.ref.png``, ``<key>.ref_2.png`` ... ``<key>.ref_<k>.png``,
``<key>.target.png`` and ``<key>.json`` with ``"k": k``. :func:`expand_references` turns each tuple
into one entry per reference count it can train at (``training.references``); each epoch uses one
of them per tuple (:class:`Variants`). A tuple trained at k uses its first k references.

Buckets: each pair goes to the frame size (h, w) whose aspect is closest to its target's; the
canvas is ``[h, (k + 1) w]`` and the bucket ``(h, w)`` for k = 1, ``(h, w, k)`` for k > 1 (so
batches hold one canvas shape). A bad image raises :class:`PairReadError` naming the file and key.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")


class DatasetError(ValueError):
    """The dataset paths do not hold usable training pairs."""


class PairReadError(DatasetError):
    """One pair could not be read (its file and key are in the message)."""


@dataclass(frozen=True)
class PairRef:
    key: str
    source: str  # tar or parquet path
    kind: str  # "tar" | "parquet"
    ref_loc: tuple[int, int] = (0, 0)  # tar: (offset, size); parquet: (row_group, row)
    target_loc: tuple[int, int] = (0, 0)
    meta_loc: tuple[int, int] = (0, 0)
    caption: str | None = None  # parquet captions are read with the row
    width: int = 0  # target size, when known without decoding
    height: int = 0
    more_refs: tuple[tuple[int, int], ...] = ()  # tar: (offset, size) of ref_2 .. ref_K of a tuple
    k: int = 1  # references this entry trains with (the first k of the tuple)
    group: str = ""  # the tuple's own key when it trains at several k (each epoch picks one), else ""

    @property
    def available(self) -> int:
        """How many references the sample holds (K)."""
        return 1 + len(self.more_refs)


@dataclass
class Pair:
    key: str
    reference: Any  # PIL image
    target: Any
    caption: str
    more_references: list[Any] = field(default_factory=list)  # references 2..k of a tuple

    @property
    def references(self) -> list[Any]:
        return [self.reference, *self.more_references]


# -- webdataset shards -------------------------------------------------------------------------
def _split_member(name: str) -> tuple[str, str]:
    base = os.path.basename(name)
    folder = os.path.dirname(name)
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def scan_tar(path: Path) -> list[PairRef]:
    """Index a webdataset shard: ``<key>.ref.png`` + ``<key>.target.png`` + ``<key>.json`` per pair."""
    members: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(path, "r:") as tf:
            for info in tf:
                if not info.isfile():
                    continue
                key, ext = _split_member(info.name)
                members.setdefault(key, {})[ext.lower()] = (info.offset_data, info.size)
    except (tarfile.TarError, OSError) as exc:
        raise DatasetError(f"{path}: not a readable tar shard ({exc}); re-run the datagen `dataset` stage") from exc
    out = []
    for key in sorted(members):
        parts = members[key]
        ref = next((parts[e] for e in parts if e.startswith("ref.")), None)
        tgt = next((parts[e] for e in parts if e.startswith("target.")), None)
        meta = parts.get("json")
        if ref is None or tgt is None or meta is None:
            have = ", ".join(sorted(parts))
            raise DatasetError(f"{path}: sample {key!r} has [{have}]; a pair needs ref.png, target.png and json")
        out.append(PairRef(key=key, source=str(path), kind="tar", ref_loc=ref, target_loc=tgt, meta_loc=meta,
                           more_refs=_more_refs(parts, path, key)))  # fmt: skip
    return out


def _more_refs(parts: dict[str, tuple[int, int]], path: Path, key: str) -> tuple[tuple[int, int], ...]:
    """Locations of ``ref_2`` .. ``ref_K``: numbered without gaps, or the tuple is refused."""
    numbered = {int(e[4:].partition(".")[0]): loc for e, loc in parts.items() if e.startswith("ref_") and e[4:].partition(".")[0].isdigit()}
    if sorted(numbered) != list(range(2, 2 + len(numbered))):
        raise DatasetError(f"{path}: tuple {key!r} has references {sorted(numbered)} beyond ref; they must be ref_2, ref_3, ... without gaps")
    return tuple(numbered[i] for i in sorted(numbered))


def _read_span(path: str, loc: tuple[int, int]) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(loc[0])
        data = fh.read(loc[1])
    if len(data) != loc[1]:
        raise PairReadError(f"{path}: truncated member at offset {loc[0]}")
    return data


# -- authors' parquet ----------------------------------------------------------------------------
PARQUET_COLUMNS = ("image", "conditioning", "caption")


def scan_parquet(path: Path) -> list[PairRef]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DatasetError(f"{path}: not a readable parquet file ({exc})") from exc
    names = set(pf.schema_arrow.names)
    missing = [c for c in PARQUET_COLUMNS if c not in names]
    if missing:
        raise DatasetError(
            f"{path}: parquet lacks column(s) {', '.join(missing)}; the authors' layout has image (target), "
            f"conditioning (reference) and caption (it has: {', '.join(sorted(names))})"
        )
    key_col = next((c for c in ("key", "id", "__key__") if c in names), None)
    out = []
    for rg in range(pf.num_row_groups):
        keys = pf.read_row_group(rg, columns=[key_col]).column(0).to_pylist() if key_col else None
        for row in range(pf.metadata.row_group(rg).num_rows):
            key = str(keys[row]) if keys else f"{path.stem}-{rg:05d}-{row:06d}"
            out.append(PairRef(key=key, source=str(path), kind="parquet", ref_loc=(rg, row), target_loc=(rg, row)))
    return out


_ROW_GROUP_CACHE: dict[tuple[str, int], dict[str, list]] = {}


def _parquet_row(path: str, rg: int) -> dict[str, list]:
    import pyarrow.parquet as pq

    cache_key = (path, rg)
    if cache_key not in _ROW_GROUP_CACHE:
        _ROW_GROUP_CACHE.clear()  # one row group in memory at a time
        table = pq.ParquetFile(path).read_row_group(rg, columns=list(PARQUET_COLUMNS))
        _ROW_GROUP_CACHE[cache_key] = {c: table.column(c).to_pylist() for c in PARQUET_COLUMNS}
    return _ROW_GROUP_CACHE[cache_key]


def _cell_bytes(cell: Any, where: str) -> bytes:
    if isinstance(cell, dict):
        cell = cell.get("bytes")
    if isinstance(cell, bytes | bytearray | memoryview):
        return bytes(cell)
    raise PairReadError(f"{where}: image cell is {type(cell).__name__}, expected PNG bytes or a {{'bytes': ...}} struct")


# -- discovery ----------------------------------------------------------------------------------
def discover(paths: list[str]) -> list[PairRef]:
    """All pairs under ``paths`` (datagen folders, tar files, parquet files or folders), sorted by key."""
    if not paths:
        raise DatasetError("dataset.paths is empty: point it to a datagen dataset folder or the authors' parquet files")
    refs: list[PairRef] = []
    for p in map(Path, paths):
        if not p.exists():
            raise DatasetError(f"dataset path {p} does not exist; check dataset.paths in the config")
        if p.is_file():
            files = [p]
        else:
            tars = sorted(p.glob("*.tar"))
            files = tars or sorted(f for f in p.glob("*.parquet") if f.name != "index.parquet")
        if not files:
            raise DatasetError(f"{p}: no shard-*.tar or *.parquet files; run the datagen `dataset` stage first")
        for f in files:
            if f.suffix == ".tar":
                refs.extend(scan_tar(f))
            elif f.suffix == ".parquet":
                refs.extend(scan_parquet(f))
            else:
                raise DatasetError(f"{f}: unsupported dataset file (expected .tar shards or .parquet)")
    if not refs:
        raise DatasetError(f"no training pairs found in {', '.join(paths)}")
    seen: set[str] = set()
    for r in refs:
        if r.key in seen:
            raise DatasetError(f"duplicate sample key {r.key!r} (in {r.source}); keys must be unique across dataset.paths")
        seen.add(r.key)
    return sorted(refs, key=lambda r: r.key)


def dataset_hash(refs: list[PairRef]) -> str:
    """Identity of the dataset: keys and source files (names + sizes), not the image bytes."""
    h = hashlib.sha256()
    for r in refs:
        h.update(r.key.encode())
    for src in sorted({r.source for r in refs}):
        h.update(f"{os.path.basename(src)}:{os.path.getsize(src)}".encode())
    return h.hexdigest()[:16]


def _decode(data: bytes, where: str):
    from dsd.images import UnreadableImage, read_image

    try:  # the project's one reading rule: EXIF orientation, alpha over white, 16-bit, palette
        return read_image(data, where)
    except UnreadableImage as exc:
        raise PairReadError(f"{where}: unreadable image ({exc.__cause__})") from exc


def read_pair(ref: PairRef) -> Pair:
    """Decode one pair. Raises PairReadError naming the shard/file and the key."""
    where = f"{ref.source} [{ref.key}]"
    if ref.kind == "tar":
        try:
            meta = json.loads(_read_span(ref.source, ref.meta_loc))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PairReadError(f"{where}: {ref.key}.json is not valid JSON ({exc})") from exc
        caption = meta.get("caption") if isinstance(meta, dict) else None
        if not isinstance(caption, str):
            raise PairReadError(f"{where}: {ref.key}.json has no string 'caption'")
        declared = 1 if meta.get("k") is None else meta["k"]  # absent or null: a pair
        if declared != ref.available:
            raise PairReadError(f"{where}: json says k = {declared!r} but the shard holds {ref.available} reference(s)")
        reference = _decode(_read_span(ref.source, ref.ref_loc), f"{where} ref")
        more = [_decode(_read_span(ref.source, loc), f"{where} ref_{i}") for i, loc in enumerate(ref.more_refs[: ref.k - 1], start=2)]
        target = _decode(_read_span(ref.source, ref.target_loc), f"{where} target")
        return Pair(ref.key, reference, target, caption, more)
    rg, row = ref.ref_loc
    cols = _parquet_row(ref.source, rg)
    caption = cols["caption"][row]
    if not isinstance(caption, str):
        raise PairReadError(f"{where}: caption is {type(caption).__name__}, expected text")
    reference = _decode(_cell_bytes(cols["conditioning"][row], f"{where} conditioning"), f"{where} conditioning")
    target = _decode(_cell_bytes(cols["image"][row], f"{where} image"), f"{where} image")
    return Pair(ref.key, reference, target, caption)


# -- buckets and canvases -------------------------------------------------------------------------
def pick_bucket(width: int, height: int, buckets: list[list[int]] | list[tuple[int, int]]) -> tuple[int, int]:
    """Frame bucket (h, w) with the closest log-aspect to ``width/height``; ties go to the first listed."""
    aspect = math.log(width / height)
    best = min(buckets, key=lambda b: abs(math.log(b[1] / b[0]) - aspect))
    return int(best[0]), int(best[1])


def canvas_bucket(frame: tuple[int, int], k: int) -> tuple[int, ...]:
    """The bucket of a canvas of ``k`` references of frame size ``frame``: ``(h, w)`` for k = 1, else ``(h, w, k)``."""
    return (int(frame[0]), int(frame[1])) if k == 1 else (int(frame[0]), int(frame[1]), int(k))


def pair_canvases(pair: Pair, bucket: tuple[int, ...], fit: str = "crop") -> tuple[torch.Tensor, torch.Tensor]:
    """(condition canvas [refs | black], target canvas [refs | target]), each ``[1, 3, h, (k + 1) w]`` in [-1, 1].

    ``bucket`` is ``(h, w)`` (one reference, the two-frame canvas) or ``(h, w, k)``: the first k references.
    """
    from dsd.canvas import fit_reference, to_rgb01

    h, w = bucket[:2]
    k = bucket[2] if len(bucket) > 2 else 1
    if len(pair.references) < k:
        raise PairReadError(f"{pair.key}: {len(pair.references)} reference(s) read, the bucket needs {k}")
    refs = [fit_reference(to_rgb01(r), h, w, fit) * 2 - 1 for r in pair.references[:k]]
    tgt = fit_reference(to_rgb01(pair.target), h, w, fit) * 2 - 1
    cond = torch.full((1, 3, h, (k + 1) * w), -1.0)
    cond[..., : k * w] = torch.cat(refs, dim=-1)
    target = torch.cat([*refs, tgt], dim=-1)
    return cond, target


def expand_references(refs: list[PairRef], mix: dict[int, float]) -> list[PairRef]:
    """One entry per (sample, k) it can train at: k in the mix, k <= its references. Keys of k > 1 are ``key@k<k>``."""
    out, unused = [], 0
    for r in refs:
        ks = [k for k in mix if k <= r.available]
        unused += not ks
        group = r.key if len(ks) > 1 else ""  # the entries an epoch chooses among
        out.extend(replace(r, k=k, key=r.key if k == 1 else f"{r.key}@k{k}", group=group) for k in ks)
    if unused:
        logger.warning("%d sample(s) hold fewer references than any k of training.references %s; they are not used",
                       unused, sorted(mix))  # fmt: skip
    if not out:
        raise DatasetError(f"no sample holds enough references for training.references {sorted(mix)}")
    return sorted(out, key=lambda r: r.key)


def target_size(ref: PairRef) -> tuple[int, int]:
    """(width, height) of the target from its header only (no full decode)."""
    from PIL import Image, UnidentifiedImageError

    from dsd.images import upright_size

    if ref.kind == "tar":
        data = _read_span(ref.source, ref.target_loc)
    else:
        rg, row = ref.target_loc
        data = _cell_bytes(_parquet_row(ref.source, rg)["image"][row], f"{ref.source} [{ref.key}] image")
    try:
        return upright_size(Image.open(io.BytesIO(data)))  # as read_pair will turn it
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise PairReadError(f"{ref.source} [{ref.key}] target: unreadable image ({exc})") from exc


@dataclass(frozen=True)
class Variants:
    """The entries of each multi-reference tuple (one per k) and the shares each epoch picks one of them by."""

    groups: list[list[int]]  # entry indices per tuple, only tuples with several entries
    ks: list[int]  # k of every entry
    mix: dict[int, float]

    @classmethod
    def of(cls, groups: list[str], ks: list[int], mix: dict[int, float]) -> Variants | None:
        """From each entry's tuple key ("" for its own) and k; None when no tuple has a choice (one reference: today)."""
        by_group: dict[str, list[int]] = {}
        for i, g in enumerate(groups):
            if g:
                by_group.setdefault(g, []).append(i)
        multi = [sorted(v) for _, v in sorted(by_group.items()) if len(v) > 1]
        if not multi:
            return None
        return cls(multi, list(ks), mix)

    def inactive(self, seed: int, epoch: int) -> set[int]:
        """The entries this epoch leaves out: all but one per tuple, the one drawn by the mix."""
        rng = np.random.default_rng([seed, epoch, 20])  # its own stream: the batch plan's draws stay today's
        out: set[int] = set()
        for members in self.groups:
            shares = np.array([self.mix[self.ks[i]] for i in members])
            chosen = members[int(rng.choice(len(members), p=shares / shares.sum()))]
            out.update(i for i in members if i != chosen)
        return out


def epoch_batches(buckets: list[tuple[int, ...]], batch_size: int, seed: int, epoch: int,
                  variants: Variants | None = None) -> list[list[int]]:  # fmt: skip
    """Deterministic batches for one epoch: shuffle within each bucket, batch, shuffle batches.

    Only full batches are kept (a ragged last batch per bucket is dropped) so every step sees
    ``batch_size`` samples of one canvas size. With ``variants`` each tuple takes part at one k.
    """
    rng = np.random.default_rng([seed, epoch])
    skip = variants.inactive(seed, epoch) if variants is not None else set()
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, b in enumerate(buckets):
        if i not in skip:
            groups.setdefault(tuple(b), []).append(i)
    batches: list[list[int]] = []
    for b in sorted(groups):
        idx = np.array(groups[b])
        rng.shuffle(idx)
        for s in range(0, len(idx) - batch_size + 1, batch_size):
            batches.append([int(x) for x in idx[s : s + batch_size]])
    if not batches:
        raise DatasetError(
            f"no full batch of {batch_size}: the largest bucket has {max(len(g) for g in groups.values())} pairs; "
            "lower training.batch_size or add data"
        )
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def batch_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the objective's draws (noise, t, dropouts) for batch ``index`` of epoch ``epoch``'s plan.

    Keyed by the batch, not by the process or the step count, so the draws of a batch are the same
    whichever rank or accumulation micro-step computes it and after any resume.
    """
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> 1)


@dataclass(frozen=True)
class PlannedBatch:
    epoch: int
    index: int  # position in the epoch's plan (the key of its random draws)
    samples: list[int]


class BatchStream:
    """The batch order every rank agrees on, and which batches this rank computes.

    The plan of an epoch (:func:`epoch_batches`, per-process ``batch_size``) is the same on all
    ranks. One optimizer step takes ``per_step = world * accumulation`` consecutive batches of it;
    micro-step ``m`` of rank ``r`` computes batch ``start + m * world + r``. A step never spans two
    epochs: the last ``len(plan) % per_step`` batches of an epoch are skipped (a different few
    each epoch, as the plan is reshuffled). So W processes x A micro-steps see exactly the
    batches that one process with W x A micro-steps sees, in every step.
    """

    def __init__(self, buckets: list[tuple[int, ...]], batch_size: int, seed: int, world: int = 1,
                 accumulation: int = 1, rank: int = 0, variants: Variants | None = None) -> None:  # fmt: skip
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside a world of {world} processes")
        self.buckets, self.batch_size, self.seed, self.variants = list(buckets), batch_size, seed, variants
        self.world, self.accumulation, self.rank = world, accumulation, rank
        self.per_step = world * accumulation
        self._plan: tuple[int, list[list[int]]] | None = None

    def plan(self, epoch: int) -> list[list[int]]:
        if self._plan is None or self._plan[0] != epoch:
            plan = epoch_batches(self.buckets, self.batch_size, self.seed, epoch, self.variants)
            if len(plan) < self.per_step:
                raise DatasetError(
                    f"an epoch has {len(plan)} batches of {self.batch_size}, fewer than one optimizer step needs "
                    f"({self.world} processes x {self.accumulation} accumulation steps); add data or lower "
                    "training.batch_size / training.effective_batch_size"
                )
            if len(plan) % self.per_step and epoch == 0:
                logger.info("each epoch skips %d of %d batches (not a multiple of %d per optimizer step)",
                            len(plan) % self.per_step, len(plan), self.per_step)  # fmt: skip
            self._plan = (epoch, plan)
        return self._plan[1]

    def next_step(self, cursor: Any) -> list[PlannedBatch]:
        """This rank's micro-batches of the next optimizer step; advances ``cursor`` (epoch, position, samples_seen)."""
        plan = self.plan(cursor.epoch)
        if cursor.position + self.per_step > len(plan):
            cursor.epoch += 1
            cursor.position = 0
            plan = self.plan(cursor.epoch)
        start = cursor.position
        out = []
        for m in range(self.accumulation):
            index = start + m * self.world + self.rank
            out.append(PlannedBatch(cursor.epoch, index, plan[index]))
        cursor.position += self.per_step
        cursor.samples_seen += self.per_step * self.batch_size
        return out
