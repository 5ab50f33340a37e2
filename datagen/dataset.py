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

Tuples (issue 20, ``dataset.max_references`` > 1): a sample with k references holds
``<key>.ref.png``, ``<key>.ref_2.png`` ... ``<key>.ref_<k>.png``, ``<key>.target.png`` and
``<key>.json`` with ``"k": k`` (absent = 1; caption = the target's); the index then has a
nullable int column ``k``. With ``max_references = 1`` (the default) the output is exactly the
pairs-only dataset, shard bytes and index columns alike.

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
    more_refs: tuple[Path | bytes, ...] = ()  # a tuple's references 2..k (<key>.ref_2.png ...); () for a pair

    @property
    def refs(self) -> tuple[Path | bytes, ...]:
        return (self.ref, *self.more_refs)

    def members(self) -> list[tuple[str, Path | bytes]]:
        """(member suffix, source) in tar order: ref.png[, ref_2.png ...], target.png (pairs as before issue 20)."""
        extra = [(f"ref_{i}.png", src) for i, src in enumerate(self.more_refs, start=2)]
        return [("ref.png", self.ref), *extra, ("target.png", self.target)]


def _index_schema(with_k: bool = False):
    """The index columns; ``with_k`` (a dataset with tuples) adds the nullable "k" (references per sample)."""
    import pyarrow as pa

    fields = [
        ("key", pa.string()), ("shard", pa.string()), ("caption", pa.string()), ("grid_id", pa.string()),
        ("seed", pa.int64()), ("prompt", pa.string()), ("subject", pa.string()), ("confidence", pa.float64()),
    ]  # fmt: skip
    return pa.schema(fields + [("k", pa.int64())] if with_k else fields)


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
        for _, src in s.members():
            h.update(str(src).encode() if isinstance(src, Path) else hashlib.sha1(src).digest())
    return h.hexdigest()


def write_shard(dest: Path, samples: list[Sample]) -> dict[str, str]:
    """One webdataset tar, atomically (temporary sibling, then rename). A sample whose images do not
    decode is left out, not the shard: returns {key: reason} of those."""
    dropped: dict[str, str] = {}
    with atomic_path(dest, suffix=".tar") as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            try:
                members = [(name, _png_bytes(src, f"{s.key}.{name}")) for name, src in s.members()]
            except DatagenInputError as exc:
                logger.warning("dataset: sample %s left out: %s", s.key, exc)
                dropped[s.key] = str(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - one sample's failure leaves it out, not the stage
                dropped[s.key] = item_failure("dataset", s.key, "decode", exc)[0]
                continue
            for name, data in members:
                _member(tar, f"{s.key}.{name}", data)
            _member(tar, f"{s.key}.json", _meta_bytes(s.meta))
    return dropped


def _drop_category(reason: str) -> str:
    """The summary key of a left-out sample (its full reason, with the path, stays in shards.jsonl)."""
    return "unreadable image" if reason.startswith("unreadable image") else reason.split(":", 1)[0]


def _index_row(s: Sample, shard: str, with_k: bool = False) -> dict[str, Any]:
    m = s.meta
    seed = m.get("seed")
    conf = m.get("confidence")
    row = {
        "key": s.key, "shard": shard, "caption": m.get("caption", ""), "grid_id": m.get("grid_id") or "",
        "seed": int(seed) if isinstance(seed, int) else None, "prompt": m.get("prompt") or "",
        "subject": m.get("subject") or "", "confidence": float(conf) if isinstance(conf, int | float) else None,
    }  # fmt: skip
    if with_k:
        row["k"] = len(s.refs)
    return row


def _on_disk(latest: dict[str, Any] | None, done_id: str, path: Path) -> dict[str, Any] | None:
    """``latest`` (the shard's last write) when it wrote this content and the file is there, else None."""
    if latest is not None and str(latest["id"]).split("#")[0] == done_id and path.is_file():
        return latest
    return None


def write_dataset(
    samples: Iterable[Sample], out_dir: Path, shard_size: int, summary: StageSummary, progress: bool = True,
    total: int | None = None, with_k: bool = False,
) -> int:
    """Shards of ``shard_size`` samples (in the given order) + index.parquet; returns the shard count.
    ``with_k``: the index gets the "k" column (a dataset made with ``dataset.max_references`` > 1)."""
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
        last = {str(r["shard"]): r for r in written.records()}  # each shard's latest write

        def flush() -> None:
            nonlocal n_shards
            name = SHARD_PATTERN.format(n_shards)
            spec = shard_spec(batch)
            done_id = f"{name}:{spec}"
            earlier = _on_disk(last.get(name), done_id, out_dir / name)
            if earlier is not None:
                dropped = earlier.get("dropped", {})
                summary.skipped_done += len(batch) - len(dropped)
            else:
                dropped = write_shard(out_dir / name, batch)
                # a content written before (then replaced by another) gets a fresh id: the log keeps first records
                record_id = done_id if done_id not in written else f"{done_id}#{len(written)}"
                last[name] = {"id": record_id, "shard": name, "samples": len(batch) - len(dropped), "dropped": dropped}
                written.append(last[name])
            for reason in dropped.values():
                summary.reject(_drop_category(reason))
            kept = [s for s in batch if s.key not in dropped]
            rows.extend(_index_row(s, name, with_k) for s in kept)
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
    table = pa.Table.from_pylist(rows, schema=_index_schema(with_k))
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


def _tuple_samples(workdir: Path, cfg: DatasetConfig, mode: str) -> list[Sample]:
    """The curated tuples (k = 2 .. ``cfg.max_references``) of ``curate/tuples.<mode>.jsonl`` as samples."""
    from .curate import prompt_index, resolve_path
    from .tuples import read_tuple_verdicts, tuple_item

    panels = {str(g["id"]): g.get("panel_paths") or [] for g in read_records(workdir / "panels" / "panels.jsonl")}
    prompts = prompt_index(workdir)
    base = workdir / "panels"
    out = []
    for v in sorted(read_tuple_verdicts(workdir, mode), key=lambda r: str(r["id"])):
        if not (v.get("accepted") or cfg.include_rejected) or int(v.get("k") or 0) > cfg.max_references:
            continue  # a tuple of a larger max_references than this dataset's
        item = tuple_item(v, panels.get(str(v["grid_id"]), []))
        if item is None:
            raise DatagenInputError(f"{workdir / 'curate'}: tuple {v['id']} names panels its grid does not have")
        prompt = prompts.get(str(item["grid_id"]), {})
        verdict = {k: v.get(k) for k in ("accepted", "verdict", "subject", "descriptions", "same_identity",
                                         "confidence", "reason")}  # fmt: skip
        meta = {
            "caption": v.get("caption", ""), "verdict": verdict, "grid_id": item["grid_id"], "seed": prompt.get("seed"),
            "prompt": prompt.get("prompt", ""), "prompt_id": prompt.get("id"),
            "subject": v.get("subject") or prompt.get("subject", ""), "confidence": v.get("confidence"),
            "tuple_id": v["id"], "k": item["k"], "ref_index": item["ref_indices"][0], "ref_indices": item["ref_indices"],
            "target_index": item["target_index"],
        }  # fmt: skip
        refs = [resolve_path(p, base) for p in item["ref_paths"]]
        out.append(Sample(str(v["id"]).replace(".", "_"), meta, refs[0], resolve_path(item["target_path"], base),
                          tuple(refs[1:])))
    return out


def run_dataset(cfg: DatasetConfig, workdir: Path, *, progress: bool = True, tuple_verdicts: str = "derived") -> StageSummary:
    """Write ``workdir/dataset`` (shards + index.parquet) from the curated pairs, and with
    ``cfg.max_references`` > 1 the curated tuples of ``curate/tuples.<tuple_verdicts>.jsonl``."""
    summary = StageSummary("dataset")
    samples = _curated_samples(workdir, cfg.include_rejected)
    with_k = cfg.max_references > 1
    if with_k:
        samples = sorted(samples + _tuple_samples(workdir, cfg, tuple_verdicts), key=lambda s: s.key)
        summary.extra["tuples (k > 1)"] = sum(1 for s in samples if s.more_refs)
    summary.extra["shards"] = write_dataset(samples, workdir / "dataset", cfg.shard_size, summary, progress,
                                            total=len(samples), with_k=with_k)  # fmt: skip
    return summary.stop()


def _write_stage(summary: StageSummary, samples: Iterable[Sample], out_dir: Path, shard_size: int, progress: bool,
                 total: int | None = None) -> StageSummary:  # fmt: skip
    summary.extra["shards"] = write_dataset(samples, out_dir, shard_size, summary, progress, total=total)
    return summary.stop()


# ---------------------------------------------------------------- reading back
def iter_samples(dataset_dir: Path) -> Iterator[tuple[str, list[bytes], bytes, dict[str, Any]]]:
    """(key, [ref_png, ref_2_png, ...], target_png, meta) for every sample, in index order (k = len(refs))."""
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
            meta = json.loads(m["json"])
            refs = [m["ref.png"], *(m[f"ref_{i}.png"] for i in range(2, int(meta.get("k") or 1) + 1))]
            yield key, refs, m["target.png"], meta


def iter_dataset(dataset_dir: Path) -> Iterator[tuple[str, bytes, bytes, dict[str, Any]]]:
    """(key, ref_png, target_png, meta) for every sample, in index order (a tuple's first reference)."""
    for key, refs, target, meta in iter_samples(dataset_dir):
        yield key, refs[0], target, meta


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
    """Write our dataset as the authors' parquet (image = target, conditioning = reference, caption); pairs
    only (a tuple with k > 1 references has no place in that layout)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    img = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", img), ("conditioning", img), ("caption", pa.string())])
    count = 0
    with atomic_path(out, suffix=".parquet") as tmp, pq.ParquetWriter(tmp, schema) as writer:
        rows: list[dict[str, Any]] = []
        for _key, ref, target, meta in tqdm(iter_dataset(workdir / "dataset"), desc="export", disable=not progress):
            if int(meta.get("k") or 1) != 1:
                continue  # the authors' layout holds pairs only: one conditioning image per row
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
