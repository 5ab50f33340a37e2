from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from datagen.cli import main
from datagen.config import CurateConfig, DatagenInputError, DatasetConfig
from datagen.curate import run_curate
from datagen.dataset import export_authors, import_authors, iter_dataset, run_dataset
from dsd.manifest import read_records


@pytest.fixture
def curated(pairs_workdir: Path) -> Path:
    run_curate(CurateConfig(), pairs_workdir, vlm=None, progress=False)
    return pairs_workdir


def test_shards_and_index_round_trip(curated: Path) -> None:
    s = run_dataset(DatasetConfig(shard_size=4), curated, progress=False)
    ds = curated / "dataset"
    shards = sorted(ds.glob("shard-*.tar"))
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar"] and s.extra["shards"] == 2
    index = pq.read_table(ds / "index.parquet")
    assert index.column_names == ["key", "shard", "caption", "grid_id", "seed", "prompt", "subject", "confidence"]
    rows = index.to_pylist()
    assert len(rows) == 6 and [r["key"] for r in rows] == sorted(r["key"] for r in rows)
    assert rows[0]["grid_id"] == "grid000" and rows[0]["seed"] == 100 and rows[0]["prompt"].startswith(("a grid", "an "))
    samples = list(wds.WebDataset([str(p) for p in shards], shardshuffle=False))
    assert [x["__key__"] for x in samples] == [r["key"] for r in rows]
    first = samples[0]
    meta = json.loads(first["json"])
    assert meta["caption"] == rows[0]["caption"] and meta["verdict"]["verdict"] == "skipped"
    ref = Image.open(io.BytesIO(first["ref.png"]))
    assert ref.size == (64, 64)
    assert first["target.png"] == (curated / "panels" / "panels" / "grid000_1.png").read_bytes()
    # a rerun rewrites nothing and leaves identical bytes
    before = {p.name: p.read_bytes() for p in shards}
    s2 = run_dataset(DatasetConfig(shard_size=4), curated, progress=False)
    assert s2.skipped_done == 6 and {p.name: p.read_bytes() for p in sorted(ds.glob("shard-*.tar"))} == before


def test_authors_layout_export_import_round_trip(curated: Path, tmp_path: Path) -> None:
    run_dataset(DatasetConfig(shard_size=4), curated, progress=False)
    out = tmp_path / "authors.parquet"
    assert export_authors(curated, out, progress=False) == 6
    table = pq.read_table(out)
    assert table.column_names == ["image", "conditioning", "caption"]
    assert pa.types.is_struct(table.schema.field("image").type)
    w2 = tmp_path / "w2"
    s = import_authors(out, w2, shard_size=5, progress=False)
    assert s.items_out == 6
    out2 = tmp_path / "again.parquet"
    export_authors(w2, out2, progress=False)

    def content(p: Path) -> list[tuple]:
        return sorted((r["image"]["bytes"], r["conditioning"]["bytes"], r["caption"]) for r in pq.read_table(p).to_pylist())

    assert content(out) == content(out2)
    # raw-bytes columns (not structs) are accepted too
    raw = pa.table({"image": [r["image"]["bytes"] for r in table.to_pylist()],
                    "conditioning": [r["conditioning"]["bytes"] for r in table.to_pylist()],
                    "caption": table.column("caption").to_pylist()})
    pq.write_table(raw, tmp_path / "raw.parquet")
    import_authors(tmp_path / "raw.parquet", tmp_path / "w3", progress=False)
    assert sorted(k for k, *_ in iter_dataset(tmp_path / "w3" / "dataset")) == sorted(
        k for k, *_ in iter_dataset(w2 / "dataset"))


def _bomb_png(path: Path, side: int = 20000) -> None:
    """A tiny PNG whose header claims side x side pixels: Pillow refuses to open it
    (DecompressionBombError, not an OSError) before reading any pixel."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))  # fmt: skip


def test_a_sample_that_does_not_decode_is_left_out_not_the_dataset(curated: Path) -> None:
    """Through the CLI: a corrupt panel, a missing one and one that makes decoding raise something
    else; the other samples make the dataset, and a rerun leaves the same three out without work."""
    panels = curated / "panels" / "panels"
    (panels / "grid002_1.png").write_bytes(b"not a png at all")  # grid002_0_1
    (panels / "grid001_2.png").unlink()  # grid001_2_3
    _bomb_png(panels / "grid000_3.png")  # grid000_2_3
    args = ["dataset", "--workdir", str(curated), "--no-progress", "--set", "dataset.shard_size=2"]
    assert main(args) == 0
    summary = json.loads((curated / "dataset" / "summary.json").read_text())
    assert (summary["items_in"], summary["items_out"], summary["rejected"]) == (6, 3, 3)
    assert summary["reject_reasons"] == {"unreadable image": 2, "decode failed (DecompressionBombError)": 1}
    ds = curated / "dataset"
    keys = [r["key"] for r in pq.read_table(ds / "index.parquet").to_pylist()]
    assert keys == ["grid000_0_1", "grid001_0_1", "grid002_2_3"]
    assert sorted(k for k, *_ in iter_dataset(ds)) == keys
    dropped = {k: v for r in read_records(ds / "shards.jsonl") for k, v in r["dropped"].items()}
    assert "grid002_1.png" in dropped["grid002_0_1"] and "grid001_2.png" in dropped["grid001_2_3"]
    before = {p.name: p.read_bytes() for p in sorted(ds.glob("shard-*.tar"))}
    assert main(args) == 0
    again = json.loads((ds / "summary.json").read_text())
    assert again["skipped_done"] == 3 and again["reject_reasons"] == summary["reject_reasons"]
    assert {p.name: p.read_bytes() for p in sorted(ds.glob("shard-*.tar"))} == before


def test_authors_rows_without_a_readable_image_are_rejects(curated: Path, tmp_path: Path) -> None:
    run_dataset(DatasetConfig(), curated, progress=False)
    export_authors(curated, tmp_path / "a.parquet", progress=False)
    rows = pq.read_table(tmp_path / "a.parquet").to_pylist()
    rows[1]["image"] = {"bytes": b"not a png", "path": None}
    rows[4]["conditioning"] = None
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(tmp_path / "a.parquet")), tmp_path / "b.parquet")
    s = import_authors(tmp_path / "b.parquet", tmp_path / "w", progress=False)
    assert (s.items_in, s.items_out, s.reject_reasons) == (6, 4, {"row without a readable image": 2})


def test_bad_inputs_name_the_file(curated: Path, tmp_path: Path) -> None:
    pq.write_table(pa.table({"image": [b"x"], "caption": ["c"]}), tmp_path / "x.parquet")
    with pytest.raises(DatagenInputError, match=r"x\.parquet: missing column\(s\) conditioning"):
        import_authors(tmp_path / "x.parquet", tmp_path / "w", progress=False)
    with pytest.raises(DatagenInputError, match=r"verdicts\.jsonl does not exist"):
        run_dataset(DatasetConfig(), tmp_path / "empty", progress=False)
