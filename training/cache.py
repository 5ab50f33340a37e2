"""Latent and text-embedding caches, and the two sample sources training reads (cached / on the fly).

``python -m training cache`` encodes each pair once: the condition canvas ``[ref | black]`` and
the target canvas ``[ref | target]`` (with k references ``[ref_1 | ... | ref_k | black]`` and
``[ref_1 | ... | ref_k | target]``, one entry per k a tuple trains at) through the VAE (posterior mean, model space
``(z - shift) * scale``, unpacked ``[16, h/8, w/8]``) and the caption through CLIP + T5. Pairs
are processed in fixed chunks of ``dataset.cache_shard_size`` (sorted by key); each chunk
becomes one safetensors shard written atomically, then one line in ``cache_dir/shards.jsonl``
(a ``dsd.manifest.RecordLog``). A killed run resumes at the first chunk not in the log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from dsd.encoders import FluxEncoders
from dsd.io import atomic_save_safetensors, atomic_write_json, clean_stale_temporaries
from dsd.manifest import RecordLog, read_records
from dsd.weights.errors import WeightsError

from .config import TrainConfig
from .data import (
    PairReadError,
    PairRef,
    Variants,
    canvas_bucket,
    dataset_hash,
    discover,
    expand_references,
    pair_canvases,
    pick_bucket,
    read_pair,
    target_size,
)
from .objective import Batch

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
SHARD_LOG = "shards.jsonl"
INFO_FILE = "cache_info.json"
EMPTY_PROMPT_FILE = "empty_prompt.safetensors"
CACHE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class CacheError(ValueError):
    """The cache folder is missing, incomplete or was made with other settings."""


class Encoders(FluxEncoders):
    """The frozen VAE and text encoders of a diffusers FLUX folder (no transformer loaded)."""

    def __init__(self, flux_dir: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 max_sequence_length: int = 512) -> None:  # fmt: skip
        try:
            loaded = FluxEncoders.from_local(flux_dir, device=device, dtype=dtype, max_sequence_length=max_sequence_length)
        except WeightsError as exc:
            raise CacheError(
                f"model.flux={flux_dir!r}: {exc} (caching, on-the-fly encoding and validation sampling need its VAE and "
                "text encoders)"
            ) from exc
        super().__init__(loaded.pipe, max_sequence_length)


def cache_settings(cfg: TrainConfig) -> dict[str, Any]:
    """What a cache depends on; a cache made with other settings is refused."""
    d = cfg.dataset
    return {
        "version": CACHE_VERSION,
        "flux": str(Path(cfg.model.flux).name),
        "frame_buckets": [list(b) for b in d.frame_buckets],
        "fit": d.fit,
        "cache_dtype": d.cache_dtype,
        "max_sequence_length": cfg.model.max_sequence_length,
        "shard_size": d.cache_shard_size,
        # only when it is not one reference: caches made before multi-reference DSD stay valid
        **({"references": mix_record(cfg.training.reference_mix)} if cfg.training.reference_mix != {1: 1.0} else {}),
    }


def mix_record(mix: dict[int, float]) -> dict[str, float]:
    return {str(k): v for k, v in mix.items()}


def training_entries(cfg: TrainConfig) -> list[PairRef]:
    """The samples of ``dataset.paths``, one entry per reference count each trains at (training.references)."""
    return expand_references(discover(cfg.dataset.paths), cfg.training.reference_mix)


@dataclass
class CacheSummary:
    cache_dir: Path
    pairs: int = 0
    shards_total: int = 0
    shards_written: int = 0
    shards_skipped_done: int = 0
    samples_written: int = 0
    bad_images: int = 0
    seconds: float = 0.0
    bad_keys: list[str] = field(default_factory=list)
    references: dict[int, int] = field(default_factory=dict)  # entries per reference count k


def _chunk_id(refs: list[PairRef]) -> str:
    return hashlib.sha1("\n".join(r.key for r in refs).encode()).hexdigest()[:16]


def run_cache(cfg: TrainConfig, device: str | torch.device = "cpu", progress: bool = True) -> CacheSummary:
    """Encode every pair of ``dataset.paths`` into ``dataset.cache_dir`` (resumable)."""
    t0 = time.perf_counter()
    root, refs = _open_cache_dir(cfg)
    dtype = CACHE_DTYPES[cfg.dataset.cache_dtype]
    enc = Encoders(cfg.model.flux, device=device, max_sequence_length=cfg.model.max_sequence_length)
    if not (root / EMPTY_PROMPT_FILE).is_file():
        e, p = enc.encode_prompt([""])
        atomic_save_safetensors({"prompt_embeds": e[0].to(dtype), "pooled": p[0].to(dtype)}, root / EMPTY_PROMPT_FILE)
    size = cfg.dataset.cache_shard_size
    chunks = [refs[i : i + size] for i in range(0, len(refs), size)]
    summary = CacheSummary(cache_dir=root, pairs=len(refs), shards_total=len(chunks),
                           references={k: sum(r.k == k for r in refs) for k in sorted({r.k for r in refs})})  # fmt: skip
    iterator = chunks
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(chunks, desc="caching", unit="shard")
    with RecordLog(root / SHARD_LOG) as log:
        for chunk in iterator:
            cid = _chunk_id(chunk)
            if cid in log:
                summary.shards_skipped_done += 1
                continue
            tensors, samples, bad = _encode_chunk(cfg, enc, chunk, dtype)
            shard = root / "shards" / f"{cid}.safetensors"
            if samples:
                atomic_save_safetensors(tensors, shard, metadata={"dsd_cache_version": str(CACHE_VERSION)})
            log.append({"id": cid, "file": shard.name if samples else None, "samples": samples, "skipped": bad})
            summary.shards_written += 1
            summary.samples_written += len(samples)
            summary.bad_keys.extend(bad)
    # Bad images of chunks finished by an earlier run count too.
    summary.bad_images = sum(len(r.get("skipped", [])) for r in read_records(root / SHARD_LOG))
    summary.seconds = time.perf_counter() - t0
    return summary


def _open_cache_dir(cfg: TrainConfig) -> tuple[Path, list[PairRef]]:
    """The cache folder, torn temporaries removed, checked against (or stamped with) the settings; the pairs."""
    if not cfg.dataset.cache_dir:
        raise CacheError("dataset.cache_dir is empty; set it to the folder the cache should go to")
    root = Path(cfg.dataset.cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(root)
    clean_stale_temporaries(root / "shards")
    refs = training_entries(cfg)
    settings = cache_settings(cfg)
    info_path = root / INFO_FILE
    if info_path.is_file():
        old = json.loads(info_path.read_text())
        if old.get("settings") != settings:
            raise CacheError(
                f"{root}: cache was made with other settings ({old.get('settings')}); use a new dataset.cache_dir "
                "or delete this one"
            )
    atomic_write_json(info_path, {"settings": settings, "dataset_hash": dataset_hash(refs), "pairs": len(refs)})
    return root, refs


def _encode_chunk(cfg: TrainConfig, enc: Encoders, chunk: list[PairRef],
                  dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]], list[str]]:  # fmt: skip
    """One shard's tensors (``<i>.cond/target/prompt_embeds/pooled``), its sample records and the unreadable keys."""
    tensors: dict[str, torch.Tensor] = {}
    samples: list[dict[str, Any]] = []
    bad: list[str] = []
    for ref in chunk:
        try:
            pair = read_pair(ref)
        except PairReadError as exc:
            if cfg.dataset.on_bad_image == "error":
                raise PairReadError(f"{exc}. Fix or remove it, or set dataset.on_bad_image=\"skip\"") from exc
            logger.warning("skipping: %s", exc)
            bad.append(ref.key)
            continue
        bucket = canvas_bucket(pick_bucket(*pair.target.size, cfg.dataset.frame_buckets), ref.k)
        cond, target = pair_canvases(pair, bucket, cfg.dataset.fit)
        lat = enc.encode_canvas(torch.cat([cond, target]))
        emb, pooled = enc.encode_prompt([pair.caption])
        i = len(samples)
        tensors.update({f"{i}.cond": lat[0].to(dtype), f"{i}.target": lat[1].to(dtype),
                        f"{i}.prompt_embeds": emb[0].to(dtype), f"{i}.pooled": pooled[0].to(dtype)})  # fmt: skip
        samples.append({"key": pair.key, "index": i, "bucket": list(bucket), **({"group": ref.group} if ref.group else {})})
    return tensors, samples, bad


# -- sample sources ---------------------------------------------------------------------------------
class CachedSource:
    """Samples from a finished cache folder (one safetensors shard open at a time per process)."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.root = Path(cache_dir)
        log = self.root / SHARD_LOG
        if not log.is_file() or not (self.root / EMPTY_PROMPT_FILE).is_file():
            raise CacheError(f"{self.root}: no finished cache here; run `python -m training cache --config ...` first")
        info = json.loads((self.root / INFO_FILE).read_text())
        records = read_records(log)
        expected = -(-info["pairs"] // info["settings"]["shard_size"])
        if len(records) < expected:
            raise CacheError(
                f"{self.root}: cache is incomplete ({len(records)}/{expected} shards); rerun `python -m training cache` "
                "to finish it"
            )
        self.dataset_hash = info.get("dataset_hash", "")
        self.reference_mix = {int(k): v for k, v in info["settings"].get("references", {"1": 1.0}).items()}
        entries = [(s["key"], r["file"], s["index"], tuple(s["bucket"]), s.get("group", "")) for r in records for s in r["samples"]]
        entries.sort(key=lambda e: e[0])
        if not entries:
            raise CacheError(f"{self.root}: the cache holds no samples (every image was unreadable?)")
        self.keys = [e[0] for e in entries]
        self._loc = [(e[1], e[2]) for e in entries]
        self.buckets = [e[3] for e in entries]
        self.variants = _variants([e[4] for e in entries], self.buckets, self.reference_mix)
        from safetensors.torch import load_file

        empty = load_file(str(self.root / EMPTY_PROMPT_FILE))
        self.empty_text = (empty["prompt_embeds"][None].float(), empty["pooled"][None].float())
        self._open: tuple[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def get(self, i: int) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        file, idx = self._loc[i]
        if self._open is None or self._open[0] != file:
            self._open = (file, safe_open(str(self.root / "shards" / file), framework="pt"))
        f = self._open[1]
        out: dict[str, Any] = {k: f.get_tensor(f"{idx}.{k}").float() for k in ("cond", "target", "prompt_embeds", "pooled")}
        return {**out, "references": bucket_references(self.buckets[i])}


def bucket_references(bucket: tuple[int, ...]) -> int:
    return int(bucket[2]) if len(bucket) > 2 else 1


def _variants(groups: list[str], buckets: list[tuple[int, ...]], mix: dict[int, float]) -> Variants | None:
    return Variants.of(groups, [bucket_references(b) for b in buckets], mix)


class EncodingSource:
    """Samples read and encoded on the fly every time (no cache): slow, for debugging and benchmarks."""

    def __init__(self, cfg: TrainConfig, encoders: Encoders) -> None:
        self.cfg = cfg
        self.enc = encoders
        self.refs = training_entries(cfg)
        self.keys = [r.key for r in self.refs]
        self.dataset_hash = dataset_hash(self.refs)
        self.buckets = [canvas_bucket(pick_bucket(*target_size(r), cfg.dataset.frame_buckets), r.k) for r in self.refs]
        self.reference_mix = cfg.training.reference_mix
        self.variants = _variants([r.group for r in self.refs], self.buckets, self.reference_mix)
        self.empty_text = encoders.encode_prompt([""])

    def __len__(self) -> int:
        return len(self.refs)

    def get(self, i: int) -> dict[str, torch.Tensor]:
        pair = read_pair(self.refs[i])
        cond, target = pair_canvases(pair, self.buckets[i], self.cfg.dataset.fit)
        lat = self.enc.encode_canvas(torch.cat([cond, target]))
        emb, pooled = self.enc.encode_prompt([pair.caption])
        return {"cond": lat[0], "target": lat[1], "prompt_embeds": emb[0], "pooled": pooled[0],
                "references": bucket_references(self.buckets[i])}  # fmt: skip


def collate(source: CachedSource | EncodingSource, indices: list[int]) -> Batch:
    return _stack(source.keys, [(i, source.get(i)) for i in indices])


def _stack(keys: list[str], items: list[tuple[int, dict[str, torch.Tensor]]]) -> Batch:
    return Batch(
        cond=torch.stack([x["cond"] for _, x in items]),
        target=torch.stack([x["target"] for _, x in items]),
        prompt_embeds=torch.stack([x["prompt_embeds"] for _, x in items]),
        pooled=torch.stack([x["pooled"] for _, x in items]),
        keys=[keys[i] for i, _ in items],
        references=int(items[0][1].get("references", 1)),  # a batch is one bucket: one canvas shape
    )


class _Items(torch.utils.data.Dataset):
    """(index, tensors) of a cached sample, for torch DataLoader workers."""

    def __init__(self, source: CachedSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, dict[str, torch.Tensor]]:
        return i, self.source.get(i)


def batches(source: CachedSource | EncodingSource, plan: Iterable[list[int]], num_workers: int = 0,
            pin_memory: bool = False) -> Iterator[Batch]:  # fmt: skip
    """The batches of ``plan`` (sample indices per batch), in order.

    ``num_workers`` > 0 reads and stacks the next batches ahead in torch DataLoader worker processes (its
    ``batch_sampler`` keeps the order). Only for the cache: on-the-fly encoding runs the encoders, which stay in
    the main process.
    """
    if num_workers <= 0 or not isinstance(source, CachedSource):
        if num_workers > 0:
            logger.warning("dataset.num_workers applies to a cache (dataset.cache_dir); encoding on the fly reads in "
                           "the main process")  # fmt: skip
        return (collate(source, indices) for indices in plan)
    from torch.utils.data import DataLoader

    loader = DataLoader(_Items(source), batch_sampler=plan, num_workers=num_workers, pin_memory=pin_memory,
                        collate_fn=partial(_stack, source.keys))  # fmt: skip
    return iter(loader)
