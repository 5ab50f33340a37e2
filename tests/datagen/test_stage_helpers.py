"""The helpers the datagen stages share: the failed-answer rule, resume accounting, timing and the
parquet reader's errors."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datagen.config import DatagenInputError
from datagen.llm import LLM_FAILURES, VLM_FAILURES, LLMStageError, settle_failure
from datagen.parquet_io import iter_batches, open_parquet
from datagen.summary import StageSummary
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
