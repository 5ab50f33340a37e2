from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datagen.captions import looks_english, normalise, read_captions, run_captions
from datagen.config import CaptionsConfig, DatagenInputError
from dsd.manifest import read_records
from tests.support.llm_server import FakeLLMServer

CAPS = [
    "A photo of a golden retriever puppy on a red couch",
    "A vintage red bicycle leaning against a brick wall",
    "A ceramic teapot with blue flowers on a wooden table",
]


def test_parquet_streams_by_row_group_with_configured_column(tmp_path: Path) -> None:
    path = tmp_path / "laion.parquet"
    table = pa.table({"URL": [f"u{i}" for i in range(50)], "TEXT": [f"caption {i}" for i in range(50)],
                      "caption": ["other"] * 50})
    pq.write_table(table, path, row_group_size=7)
    got = list(read_captions(path, batch_rows=5))  # auto-detect picks TEXT first
    assert [c.text for c in got] == [f"caption {i}" for i in range(50)]
    assert got[3].source == "laion.parquet:4"
    assert {c.text for c in read_captions(path, column="caption")} == {"other"}


def test_csv_tsv_jsonl_text_readers(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text('url,caption\nx,"hello, world"\ny,second one\n')
    (tmp_path / "b.tsv").write_text("TEXT\tother\nfirst tsv\t1\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "json one"}) + "\n\n" + json.dumps({"text": None}) + "\n"
                                      + json.dumps({"text": "json two"}) + "\n")
    (tmp_path / "d.txt").write_text("line one\n\n  line two  \n")
    assert [c.text for c in read_captions(tmp_path / "a.csv")] == ["hello, world", "second one"]
    assert [c.text for c in read_captions(tmp_path / "b.tsv")] == ["first tsv"]
    assert [c.text for c in read_captions(tmp_path / "c.jsonl")] == ["json one", "json two"]
    assert [c.text for c in read_captions(tmp_path / "d.txt")] == ["line one", "line two"]


def test_missing_column_and_empty_file_name_the_file(tmp_path: Path) -> None:
    pq.write_table(pa.table({"url": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(DatagenInputError, match=r"bad\.parquet.*no caption column.*captions\.column"):
        list(read_captions(tmp_path / "bad.parquet"))
    (tmp_path / "a.csv").write_text("url,caption\nx,y\n")
    with pytest.raises(DatagenInputError, match=r"a\.csv: no column 'TEXT'"):
        list(read_captions(tmp_path / "a.csv", column="TEXT"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DatagenInputError, match=r"empty\.txt: no captions"):
        list(read_captions(tmp_path / "empty.txt"))
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DatagenInputError, match=r"corrupt\.parquet"):
        list(read_captions(tmp_path / "corrupt.parquet"))


def test_filters_language_and_dedup(tmp_path: Path) -> None:
    src = tmp_path / "c.txt"
    src.write_text("\n".join([
        CAPS[0], CAPS[0].upper() + "!!",  # duplicate after normalisation
        "short",  # too short
        "le chat de la maison est sur la table avec des fleurs",  # French
        "Ein Hund mit einem roten Ball",  # German, ASCII
        "一只可爱的小猫坐在窗台上看着外面",  # not ASCII
        CAPS[1],
    ]))
    s = run_captions(CaptionsConfig(sources=(str(src),)), tmp_path / "out", progress=False)
    recs = read_records(tmp_path / "out" / "captions.jsonl")
    assert [r["caption"] for r in recs] == [CAPS[0], CAPS[1]]
    assert s.items_in == 7 and s.items_out == 2
    assert s.reject_reasons["duplicate"] == 1 and s.reject_reasons["too short"] == 1
    assert s.reject_reasons["not English"] == 2 and s.reject_reasons["too few words"] == 1  # zh: one "word"
    assert looks_english("A red Nike running shoe size 10")
    assert normalise("Hello,  WORLD!") == "hello world"


def test_hash_sampling_and_reservoir_are_deterministic_and_resumable(tmp_path: Path) -> None:
    src = tmp_path / "c.txt"
    src.write_text("\n".join(f"a small caption about item number {i}" for i in range(400)))
    cfg = CaptionsConfig(sources=(str(src),), sample_rate=0.25, seed=3)
    run_captions(cfg, tmp_path / "a", progress=False)
    run_captions(cfg, tmp_path / "b", progress=False)
    a = read_records(tmp_path / "a" / "captions.jsonl")
    assert a == read_records(tmp_path / "b" / "captions.jsonl")
    assert 60 < len(a) < 140  # ~100 expected
    # another seed picks another sample
    run_captions(CaptionsConfig(sources=(str(src),), sample_rate=0.25, seed=4), tmp_path / "c", progress=False)
    assert {r["id"] for r in a} != {r["id"] for r in read_records(tmp_path / "c" / "captions.jsonl")}
    # rerun over a finished log does nothing new
    s = run_captions(cfg, tmp_path / "a", progress=False)
    assert s.items_out == 0 and s.skipped_done == len(a)
    res = CaptionsConfig(sources=(str(src),), sampling="reservoir", max_captions=30, seed=1)
    run_captions(res, tmp_path / "r1", progress=False)
    r1 = read_records(tmp_path / "r1" / "captions.jsonl")
    assert len(r1) == 30
    run_captions(res, tmp_path / "r2", progress=False)
    assert r1 == read_records(tmp_path / "r2" / "captions.jsonl")


@pytest.mark.parametrize("kind", ["openai", "gemini"])
def test_llm_filter_is_batched_structured_and_cached(tmp_path: Path, kind: str, dg) -> None:
    src = tmp_path / "c.txt"
    lines = [f"a blurry photo of thing {i} in a room" if i % 3 == 0 else f"a clear red object number {i} here"
             for i in range(10)]
    src.write_text("\n".join(lines))
    with FakeLLMServer(responder=dg.smart_responder()) as srv:
        cfg = CaptionsConfig(sources=(str(src),), llm_filter=True, llm_filter_batch=4)
        s = run_captions(cfg, tmp_path / "out", llm=dg.provider_cfg(srv, kind), progress=False)
        assert len(srv.requests) == 3  # 10 captions, 4 per request
        assert srv.requests[0].json_schema is not None
        kept = read_records(tmp_path / "out" / "captions.jsonl")
        assert len(kept) == 6 and all("blurry" not in r["caption"] for r in kept)
        assert s.reject_reasons == {"llm filter: no clear subject": 4}
        assert s.usage is not None and s.usage.requests == 3
        # a fresh log answers from the cache: zero requests
        (tmp_path / "out" / "captions.jsonl").unlink()
        (tmp_path / "out" / "rejected.jsonl").unlink()
        run_captions(cfg, tmp_path / "out", llm=dg.provider_cfg(srv, kind), progress=False)
        assert len(srv.requests) == 3
        assert len(read_records(tmp_path / "out" / "captions.jsonl")) == 6


def test_an_answer_that_breaks_the_parser_rejects_its_batch_not_the_stage(tmp_path: Path, dg, monkeypatch) -> None:
    from datagen import captions

    src = tmp_path / "c.txt"
    src.write_text("\n".join(f"a clear red object number {i} here" for i in range(8)))
    real = captions._batch_decisions

    def batch_decisions(batch, data):
        if any("number 5" in cap.text for _, cap in batch):
            raise KeyError("results")
        return real(batch, data)

    monkeypatch.setattr(captions, "_batch_decisions", batch_decisions)
    with FakeLLMServer(responder=dg.smart_responder()) as srv:
        cfg = CaptionsConfig(sources=(str(src),), llm_filter=True, llm_filter_batch=4)
        s = run_captions(cfg, tmp_path / "out", llm=dg.provider_cfg(srv), progress=False)
        assert len(read_records(tmp_path / "out" / "captions.jsonl")) == 4
        rejected = read_records(tmp_path / "out" / "rejected.jsonl")
        assert len(rejected) == 4 and {r["reason"] for r in rejected} == {"llm filter answer failed (KeyError): 'results'"}
        assert s.items_out == 4 and s.rejected == 4
        monkeypatch.setattr(captions, "_batch_decisions", real)  # decided: a rerun asks nothing again
        again = run_captions(cfg, tmp_path / "out", llm=dg.provider_cfg(srv), progress=False)
        assert (again.skipped_done, again.rejected, len(srv.requests)) == (4, 4, 2)
