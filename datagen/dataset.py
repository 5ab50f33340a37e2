"""Stage 6 - dataset: curated pairs as the trainer streams them, and the authors' released layout.

``dataset/shard-NNNNNN.tar`` are webdataset shards; each sample is ``<key>.ref.png`` (the
conditioning panel), ``<key>.target.png`` (the panel to generate) and ``<key>.json`` (caption,
verdict, grid id, seed, prompt). ``dataset/index.parquet`` lists every sample (key, shard,
caption, grid_id, seed, prompt, subject, confidence). Samples are sorted by key and tar members
carry fixed metadata (mtime 0, uid 0), so the same curated pairs always give byte-identical
shards: a run killed at any point and rerun ends equal to an uninterrupted run. Each shard is
written to a temporary file and renamed; ``dataset/shards.jsonl`` remembers which shard content
(a digest of its samples) is already on disk, so a rerun rewrites only what changed. A sample
whose panel is missing or does not decode is left out of its shard, not the dataset: it counts as
a reject, and ``shards.jsonl`` keeps it with its reason under the shard's ``dropped``.

The authors' layout is one parquet file with ``image`` (target), ``conditioning`` (reference)
- each a ``{"bytes": png}`` struct (Hugging Face ``Image`` feature) or raw bytes - and
``caption``. ``export_authors`` writes it from our shards; ``import_authors`` turns one into our
shards + index, so the trainer reads either source the same way.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from dsd.images import to_rgb
from dsd.io import atomic_path, clean_stale_temporaries
from dsd.manifest import RecordLog, read_records

from .config import DatagenInputError, DatasetConfig
from .parquet_io import iter_batches, open_parquet
from .summary import StageSummary, item_failure

logger = logging.getLogger(__name__)

SHARD_PATTERN = "shard-{:06d}.tar"


@dataclass
class Sample:
    key: str
    meta: dict[str, Any]  # the <key>.json payload
    ref: Path | bytes
    target: Path | bytes


def _index_schema():
    import pyarrow as pa

    return pa.schema([
        ("key", pa.string()), ("shard", pa.string()), ("caption", pa.string()), ("grid_id", pa.string()),
        ("seed", pa.int64()), ("prompt", pa.string()), ("subject", pa.string()), ("confidence", pa.float64()),
    ])  # fmt: skip


def _png_bytes(src: Path | bytes, what: str) -> bytes:
    """The PNG bytes of ``src`` after checking they decode; other formats are converted to PNG."""
    name = str(src) if isinstance(src, Path) else what
    try:
        data = src.read_bytes() if isinstance(src, Path) else src
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.load()
            if fmt == "PNG":
                return data
            buf = io.BytesIO()
            to_rgb(im).save(buf, format="PNG")  # a JPEG's EXIF orientation would be lost in the PNG: apply it
            return buf.getvalue()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DatagenInputError(f"unreadable image {name}: {type(exc).__name__}: {exc}") from exc


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _meta_bytes(meta: dict[str, Any]) -> bytes:
    return (json.dumps(meta, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def shard_spec(samples: list[Sample]) -> str:
    """A digest of what the shard will contain (keys, metadata, image sources)."""
    h = hashlib.sha1()
    for s in samples:
        h.update(s.key.encode() + b"\0" + _meta_bytes(s.meta))
        for src in (s.ref, s.target):
            h.update(str(src).encode() if isinstance(src, Path) else hashlib.sha1(src).digest())
    return h.hexdigest()


def write_shard(dest: Path, samples: list[Sample]) -> dict[str, str]:
    """One webdataset tar, atomically (temporary sibling, then rename). A sample whose images do not
    decode is left out, not the shard: returns {key: reason} of those."""
    dropped: dict[str, str] = {}
    with atomic_path(dest, suffix=".tar") as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            try:
                ref, target = _png_bytes(s.ref, f"{s.key}.ref.png"), _png_bytes(s.target, f"{s.key}.target.png")
            except DatagenInputError as exc:
                logger.warning("dataset: sample %s left out: %s", s.key, exc)
                dropped[s.key] = str(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - one sample's failure leaves it out, not the stage
                dropped[s.key] = item_failure("dataset", s.key, "decode", exc)[0]
                continue
            _member(tar, f"{s.key}.ref.png", ref)
            _member(tar, f"{s.key}.target.png", target)
            _member(tar, f"{s.key}.json", _meta_bytes(s.meta))
    return dropped


def _drop_category(reason: str) -> str:
    """The summary key of a left-out sample (its full reason, with the path, stays in shards.jsonl)."""
    return "unreadable image" if reason.startswith("unreadable image") else reason.split(":", 1)[0]


def _index_row(s: Sample, shard: str) -> dict[str, Any]:
    m = s.meta
    seed = m.get("seed")
    conf = m.get("confidence")
    return {
        "key": s.key, "shard": shard, "caption": m.get("caption", ""), "grid_id": m.get("grid_id") or "",
        "seed": int(seed) if isinstance(seed, int) else None, "prompt": m.get("prompt") or "",
        "subject": m.get("subject") or "", "confidence": float(conf) if isinstance(conf, int | float) else None,
    }  # fmt: skip


def write_dataset(
    samples: Iterable[Sample], out_dir: Path, shard_size: int, summary: StageSummary, progress: bool = True,
    total: int | None = None,
) -> int:
    """Shards of ``shard_size`` samples (in the given order) + index.parquet; returns the shard count."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(out_dir)
    rows: list[dict[str, Any]] = []
    n_shards = 0
    bar = tqdm(total=total, desc="dataset", unit="sample", disable=not progress, mininterval=0.5)
    with RecordLog(out_dir / "shards.jsonl") as written:
        batch: list[Sample] = []

        def flush() -> None:
            nonlocal n_shards
            name = SHARD_PATTERN.format(n_shards)
            spec = shard_spec(batch)
            done_id = f"{name}:{spec}"
            earlier = written.get(done_id)
            if earlier is not None and (out_dir / name).is_file():
                dropped = earlier.get("dropped", {})
                summary.skipped_done += len(batch) - len(dropped)
            else:
                dropped = write_shard(out_dir / name, batch)
                written.append({"id": done_id, "shard": name, "samples": len(batch) - len(dropped), "dropped": dropped})
            for reason in dropped.values():
                summary.reject(_drop_category(reason))
            kept = [s for s in batch if s.key not in dropped]
            rows.extend(_index_row(s, name) for s in kept)
            summary.items_out += len(kept)
            bar.update(len(batch))
            n_shards += 1
            batch.clear()

        for sample in samples:
            summary.items_in += 1
            batch.append(sample)
            if len(batch) >= shard_size:
                flush()
        if batch:
            flush()
    bar.close()
    # Shards past the end belong to an earlier, larger dataset.
    for stale in sorted(out_dir.glob("shard-*.tar")):
        if int(stale.stem.split("-")[1]) >= n_shards:
            stale.unlink()
    table = pa.Table.from_pylist(rows, schema=_index_schema())
    with atomic_path(out_dir / "index.parquet", suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return n_shards


# ---------------------------------------------------------------- stage
def _curated_samples(workdir: Path, include_rejected: bool) -> list[Sample]:
    verdicts_path = workdir / "curate" / "verdicts.jsonl"
    if not verdicts_path.is_file():
        raise DatagenInputError(f"{verdicts_path} does not exist: run the curate stage first")
    pairs = {str(p["id"]): p for p in read_records(workdir / "panels" / "pairs.jsonl")}
    from .curate import prompt_index, resolve_path

    prompts = prompt_index(workdir)
    out = []
    for v in sorted(read_records(verdicts_path), key=lambda r: str(r["id"])):
        if not (v.get("accepted") or include_rejected):
            continue
        pair = pairs.get(str(v["id"]))
        if pair is None:
            raise DatagenInputError(f"{verdicts_path}: pair {v['id']} is not in {workdir / 'panels' / 'pairs.jsonl'}")
        prompt = prompts.get(str(pair.get("grid_id")), {})
        verdict = {k: v.get(k) for k in ("accepted", "verdict", "subject", "description_a", "description_b",
                                         "same_identity", "confidence", "reason")}
        meta = {
            "caption": v.get("caption", ""), "verdict": verdict, "grid_id": pair.get("grid_id"),
            "seed": prompt.get("seed"), "prompt": prompt.get("prompt", ""), "prompt_id": prompt.get("id"),
            "subject": v.get("subject") or prompt.get("subject", ""), "confidence": v.get("confidence"),
            "pair_id": v["id"], "ref_index": pair.get("ref_index"), "target_index": pair.get("target_index"),
        }  # fmt: skip
        base = workdir / "panels"
        out.append(Sample(str(v["id"]).replace(".", "_"), meta, resolve_path(pair["ref_path"], base),
                          resolve_path(pair["target_path"], base)))
    return out


def run_dataset(cfg: DatasetConfig, workdir: Path, *, progress: bool = True) -> StageSummary:
    """Write ``workdir/dataset`` (shards + index.parquet) from the curated pairs."""
    summary = StageSummary("dataset")
    samples = _curated_samples(workdir, cfg.include_rejected)
    return _write_stage(summary, samples, workdir / "dataset", cfg.shard_size, progress, total=len(samples))


def _write_stage(summary: StageSummary, samples: Iterable[Sample], out_dir: Path, shard_size: int, progress: bool,
                 total: int | None = None) -> StageSummary:  # fmt: skip
    summary.extra["shards"] = write_dataset(samples, out_dir, shard_size, summary, progress, total=total)
    return summary.stop()


# ---------------------------------------------------------------- reading back
def iter_dataset(dataset_dir: Path) -> Iterator[tuple[str, bytes, bytes, dict[str, Any]]]:
    """(key, ref_png, target_png, meta) for every sample, in index order."""
    import pyarrow.parquet as pq

    index_path = dataset_dir / "index.parquet"
    if not index_path.is_file():
        raise DatagenInputError(f"{index_path} does not exist: run the dataset stage (or import-authors) first")
    shards = list(dict.fromkeys(pq.read_table(index_path, columns=["shard"]).column(0).to_pylist()))
    for shard in shards:
        members: dict[str, dict[str, bytes]] = {}
        order: list[str] = []
        with tarfile.open(dataset_dir / shard) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                fh = tar.extractfile(info)
                if fh is None:
                    continue
                if key not in members:
                    members[key] = {}
                    order.append(key)
                members[key][ext] = fh.read()
        for key in order:
            m = members[key]
            yield key, m["ref.png"], m["target.png"], json.loads(m["json"])


# ---------------------------------------------------------------- the authors' layout
def _image_cell(value: Any, path: Path, row: int, column: str) -> bytes:
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, bytes | bytearray) and value:
        return bytes(value)
    raise DatagenInputError(
        f"{path}: row {row} column {column!r} holds no image bytes (expected {{'bytes': png}} or raw bytes)"
    )


def export_authors(workdir: Path, out: Path, *, row_group: int = 256, progress: bool = True) -> int:
    """Write our dataset as the authors' parquet (image = target, conditioning = reference, caption)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    img = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", img), ("conditioning", img), ("caption", pa.string())])
    count = 0
    with atomic_path(out, suffix=".parquet") as tmp, pq.ParquetWriter(tmp, schema) as writer:
        rows: list[dict[str, Any]] = []
        for _key, ref, target, meta in tqdm(iter_dataset(workdir / "dataset"), desc="export", disable=not progress):
            rows.append({"image": {"bytes": target, "path": None}, "conditioning": {"bytes": ref, "path": None},
                         "caption": meta.get("caption", "")})
            if len(rows) >= row_group:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                count += len(rows)
                rows = []
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            count += len(rows)
    return count


def _authors_samples(path: Path, summary: StageSummary) -> Iterator[Sample]:
    """The samples of an authors'-layout parquet; a row whose images are missing or do not decode
    is a reject (counted, named in a warning), not the end of the import."""
    if not path.is_file():
        raise DatagenInputError(f"{path} does not exist")
    pf = open_parquet(path)
    names = list(pf.schema_arrow.names)
    missing = [c for c in ("image", "conditioning", "caption") if c not in names]
    if missing:
        raise DatagenInputError(
            f"{path}: missing column(s) {', '.join(missing)} (columns: {', '.join(names)}); the authors' layout has "
            "image (target), conditioning (reference) and caption"
        )
    row = 0
    for batch in iter_batches(pf, path, ["image", "conditioning", "caption"], 64):
        for item in batch.to_pylist():
            row += 1
            try:
                sample = _authors_sample(item, path, row)
            except DatagenInputError as exc:
                logger.warning("import-authors: %s", exc)
                summary.items_in += 1
                summary.reject("row without a readable image")
                continue
            except Exception as exc:  # noqa: BLE001 - one row's failure is its reject, not the import's end
                summary.items_in += 1
                summary.reject(item_failure("import-authors", f"{path.name}:{row}", "decode", exc)[1])
                continue
            yield sample


def _authors_sample(item: dict[str, Any], path: Path, row: int) -> Sample:
    target = _png_bytes(_image_cell(item["image"], path, row, "image"), f"{path} row {row} image")
    ref = _png_bytes(_image_cell(item["conditioning"], path, row, "conditioning"), f"{path} row {row} conditioning")
    caption = item["caption"] or ""
    key = hashlib.sha1(hashlib.sha1(ref).digest() + hashlib.sha1(target).digest() + caption.encode()).hexdigest()[:16]
    meta = {"caption": caption, "verdict": {"verdict": "imported", "accepted": True}, "grid_id": "",
            "seed": None, "prompt": "", "subject": "", "confidence": None, "source": f"{path.name}:{row}"}  # fmt: skip
    return Sample(key, meta, ref, target)


def import_authors(path: Path, workdir: Path, *, shard_size: int = 1000, progress: bool = True) -> StageSummary:
    """Turn an authors'-layout parquet into ``workdir/dataset`` (shards + index), streaming; rows that
    cannot be read are counted as rejects (the import is a conversion: a rerun reads them again)."""
    summary = StageSummary("import-authors")
    return _write_stage(summary, _authors_samples(path, summary), workdir / "dataset", shard_size, progress)
