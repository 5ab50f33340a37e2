"""The helpers the datagen stages share: the failed-answer rule, the per-item exception boundary,
resume accounting, timing and the parquet reader's errors."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datagen.config import DatagenInputError
from datagen.llm import LLM_FAILURES, VLM_FAILURES, LLMStageError, settle_failure
from datagen.parquet_io import iter_batches, open_parquet
from datagen.summary import ItemErrors, StageSummary
from dsd.manifest import RecordLog
from dsd.providers import ProviderAuthError, ProviderRefusal, ProviderResponseError, ProviderUnavailable


def test_settle_failure_rejects_stops_or_leaves_undone() -> None:
    summary = StageSummary("x")
    assert settle_failure(ProviderRefusal("no\nmore"), summary, "x stage") == "refused: no"
    assert settle_failure(ProviderResponseError("bad json"), summary, "x stage") == "malformed answer: bad json"
    assert settle_failure(ProviderUnavailable("down"), summary, "x stage", items=3) is None
    assert settle_failure(ConnectionError("reset"), summary, "x stage", counter=VLM_FAILURES) is None
    assert summary.extra == {LLM_FAILURES: 3, VLM_FAILURES: 1}
    with pytest.raises(LLMStageError, match=r"^x stage: key rejected$"):
        settle_failure(ProviderAuthError("key rejected"), summary, "x stage")


def test_count_earlier_counts_a_resumed_decision_once(tmp_path: Path) -> None:
    with RecordLog(tmp_path / "done.jsonl") as done, RecordLog(tmp_path / "rejected.jsonl") as rejected:
        done.append({"id": "a"})
        rejected.append({"id": "b", "reason": "too short"})
        summary = StageSummary("x")
        assert [summary.count_earlier(i, done, rejected) for i in "abc"] == ["done", "rejected", None]
    assert (summary.skipped_done, summary.rejected, summary.reject_reasons) == (1, 1, {"too short": 1})
    assert summary.stop().seconds > 0 and "_started" not in summary.to_dict()


def test_parquet_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(DatagenInputError, match="bad.parquet: not a readable parquet file"):
        open_parquet(bad)
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"caption": [f"c{i}" for i in range(10)]}), good, row_group_size=4)
    pf = open_parquet(good)
    sizes = [b.num_rows for b in iter_batches(pf, good, ["caption"], 4)]
    assert sum(sizes) == 10


def _recorder(summary: StageSummary, log: list):
    def write(reason: str, category: str) -> None:
        log.append(reason)
        summary.reject(category)

    return write


def test_an_item_that_raises_is_a_reject_once_the_stage_is_known_to_work() -> None:
    summary, log = StageSummary("x"), []
    with ItemErrors(summary, limit=3) as errors:
        errors.failed("a", "decode", KeyError("ref_path"), _recorder(summary, log))
        assert log == []  # held: nothing decided yet, this could be the stage's own bug
        summary.items_out += 1  # another item went through: the stage works
        errors.failed("b", "verdict", ValueError("bad\nsecond line"), _recorder(summary, log))
        assert log == ["decode failed (KeyError): 'ref_path'", "verdict failed (ValueError): bad"]
        errors.failed("c", "view", OSError(), _recorder(summary, log))
    assert log[-1] == "view failed (OSError)"
    assert summary.reject_reasons == {"decode failed (KeyError)": 1, "verdict failed (ValueError)": 1,
                                      "view failed (OSError)": 1}  # fmt: skip
    # fewer than `limit` failures and nothing else: written when the stage ends normally
    summary, log = StageSummary("x"), []
    with ItemErrors(summary, limit=3) as errors:
        errors.failed("a", "cut", ZeroDivisionError("division by zero"), _recorder(summary, log))
    assert log == ["cut failed (ZeroDivisionError): division by zero"] and summary.rejected == 1
    # a stage stopped by something else (Ctrl-C) records nothing it held
    summary, log = StageSummary("x"), []
    with pytest.raises(KeyboardInterrupt), ItemErrors(summary, limit=3) as errors:
        errors.failed("a", "cut", ValueError("x"), _recorder(summary, log))
        raise KeyboardInterrupt
    assert log == [] and summary.rejected == 0


def test_the_first_items_all_raising_is_the_stage_s_fault_and_records_nothing() -> None:
    summary, log = StageSummary("x"), []
    with pytest.raises(TypeError, match="NoneType") as info, ItemErrors(summary, limit=3) as errors:
        for item in "abcd":
            try:
                int(None)  # type: ignore[arg-type]  # a bug every item hits
            except Exception as exc:  # noqa: BLE001 - the stage's per-item boundary
                errors.failed(item, "verdict", exc, _recorder(summary, log))
    assert log == [] and summary.rejected == 0
    assert any("the first 3 items all raised" in note for note in info.value.__notes__)
