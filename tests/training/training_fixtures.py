"""Small writers for training test data in the two formats the trainer reads (written to the contract)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def make_image(seed: int, width: int = 40, height: int = 40) -> Image.Image:
    """Smooth, deterministic, per-seed image (gradients + a blob), so pairs are distinguishable."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    base = rng.uniform(0, 1, 3)
    slope = rng.uniform(-1, 1, (2, 3))
    img = base + xx[..., None] * slope[0] + yy[..., None] * slope[1]
    cy, cx = rng.uniform(0.3, 0.7, 2)
    img += 0.5 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.02)[..., None] * rng.uniform(-1, 1, 3)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "RGB")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tf.addfile(info, io.BytesIO(data))


def write_wds_dataset(out: Path, n: int = 4, per_shard: int = 3, wide: tuple[int, ...] = (), bad: tuple[int, ...] = (),
                      seed: int = 0) -> Path:  # fmt: skip
    """Datagen layout: shard-000000.tar ... with <key>.ref.png/.target.png/.json, plus index.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(0, n, per_shard):
        shard = out / f"shard-{s // per_shard:06d}.tar"
        with tarfile.open(shard, "w") as tf:
            for i in range(s, min(n, s + per_shard)):
                key = f"pair{i:04d}"
                w, h = (60, 40) if i in wide else (40, 40)
                ref = png_bytes(make_image(seed + 1000 + i, w, h))
                tgt = b"not a png at all" if i in bad else png_bytes(make_image(seed + 2000 + i, w, h))
                _add(tf, f"{key}.ref.png", ref)
                _add(tf, f"{key}.target.png", tgt)
                _add(tf, f"{key}.json", json.dumps({"caption": f"a toy object number {i}", "id": key}).encode())
                rows.append({"key": key, "shard": shard.name, "caption": f"a toy object number {i}"})
    pq.write_table(pa.Table.from_pylist(rows), out / "index.parquet")
    return out


def write_wds_tuples(out: Path, ks: tuple[int, ...] = (3, 3, 2, 1), seed: int = 0, frame: int = 40,
                     first_only: bool = False) -> Path:  # fmt: skip
    """Datagen tuples (issue 20 contract): <key>.ref.png, <key>.ref_2.png ... ref_<k>.png, target.png, json with "k".

    ``first_only`` writes the same samples as pairs (ref_1 and the target alone, no "k"): what one reference trains on.
    """
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "shard-000000.tar", "w") as tf:
        for i, k in enumerate(ks):
            key = f"tuple{i:04d}"
            refs = [png_bytes(make_image(seed + 5000 + 10 * i + j, frame, frame)) for j in range(k)]
            names = ["ref.png", *(f"ref_{j}.png" for j in range(2, k + 1))]
            for name, data in list(zip(names, refs, strict=True))[: 1 if first_only else k]:
                _add(tf, f"{key}.{name}", data)
            _add(tf, f"{key}.target.png", png_bytes(make_image(seed + 6000 + i, frame, frame)))
            meta = {"caption": f"a toy subject number {i}", "id": key, **({} if first_only else {"k": k})}
            _add(tf, f"{key}.json", json.dumps(meta).encode())
    return out


def write_authors_parquet(path: Path, n: int = 4, struct: bool = True, seed: int = 0, row_group_size: int = 2) -> Path:
    """The authors' layout: image (target), conditioning (reference), caption; images as {"bytes"} or raw bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        tgt, ref = png_bytes(make_image(seed + 3000 + i)), png_bytes(make_image(seed + 4000 + i))
        cell = (lambda b: {"bytes": b, "path": None}) if struct else (lambda b: b)
        rows.append({"image": cell(tgt), "conditioning": cell(ref), "caption": f"an authors' pair {i}"})
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


REPO = Path(__file__).resolve().parents[2]
TINY_TOML = REPO / "training" / "configs" / "tiny.toml"


def tiny_overrides(flux: Path, data: Path | list[Path], work: Path, *extra: str) -> list[str]:
    paths = data if isinstance(data, list) else [data]
    return [
        f"model.flux='{flux}'",
        "dataset.paths=[" + ", ".join(f"'{p}'" for p in paths) + "]",
        f"dataset.cache_dir='{work / 'cache'}'",
        f"saving.output_dir='{work / 'out'}'",
        *extra,
    ]
