"""Append-only, crash-safe record logs with resume: the one resume mechanism of datagen and training.

A stage writes one JSON object per finished item to ``<name>.jsonl``. Each line is written
and fsync'ed whole; a line cut off by ``kill -9`` is detected (it does not parse) and ignored
on the next open, and the file is truncated back to the last good line before appending.
Items are keyed by a stable id, so re-running a stage skips what is done and a duplicate
id (the same item finished twice around a crash) is read once.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_ID_ONLY: dict[str, Any] = {}


class ManifestError(RuntimeError):
    pass


class RecordLog:
    """Append-only JSONL log of finished items keyed by ``key``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        key: str = "id",
        *,
        flush_every: int = 1,
        flush_s: float = 1.0,
        ids_only: bool = False,
    ) -> None:
        """``flush_every`` > 1 batches appends into one write + fsync (per-record fsync dominates cheap
        stages); records still buffered when the process dies are simply redone by the rerun, since
        every stage is deterministic per id. ``ids_only`` keeps only ids in memory (100k-item logs).
        """
        self.path = Path(path)
        self.key = key
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, dict[str, Any]] = {}
        self._flush_every = max(1, flush_every)
        self._flush_s = flush_s
        self._ids_only = ids_only
        self._last_flush = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._recover()
        if ids_only:
            self._records = dict.fromkeys(self._records, _ID_ONLY)
        self._fh = open(self.path, "ab")  # noqa: SIM115 - kept open for the log's lifetime

    def _recover(self) -> None:
        if not self.path.exists():
            return
        good_end = 0
        with open(self.path, "rb") as fh:
            data = fh.read()
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:
                break  # a final line without newline was cut off mid-write
            line = data[pos:nl]
            pos = nl + 1
            if not line.strip():
                good_end = pos
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if not isinstance(record, dict) or self.key not in record:
                raise ManifestError(f"{self.path}: line without {self.key!r}; the file is not a record log")
            self._records.setdefault(str(record[self.key]), record)
            good_end = pos
        if good_end < len(data):
            logger.warning("%s: dropping %d bytes of an interrupted write", self.path, len(data) - good_end)
            with open(self.path, "rb+") as fh:
                fh.truncate(good_end)

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self._records or str(item_id) in self._pending

    def __len__(self) -> int:
        return len(self._records) + len(self._pending)

    def get(self, item_id: str) -> dict[str, Any] | None:
        return self._pending.get(str(item_id)) or self._records.get(str(item_id))

    def done_ids(self) -> set[str]:
        return set(self._records) | set(self._pending)

    def records(self) -> list[dict[str, Any]]:
        """All records, in first-written order (``ids_only`` logs hold no record bodies)."""
        self.flush()
        return list(self._records.values())

    def append(self, record: dict[str, Any]) -> bool:
        """Log ``record`` (durably once flushed). Returns False (and writes nothing) when its id is done."""
        return self.append_many([record]) == 1

    def append_many(self, records: list[dict[str, Any]]) -> int:
        """Log several records with one write; returns how many were new."""
        added = 0
        with self._lock:
            for record in records:
                item_id = str(record[self.key])
                if item_id in self._records or item_id in self._pending:
                    continue
                self._pending[item_id] = record
                added += 1
            due = len(self._pending) >= self._flush_every or time.monotonic() - self._last_flush >= self._flush_s
        if due or len(records) > 1:
            self.flush()
        return added

    def flush(self) -> None:
        with self._lock:
            if self._pending and not self._fh.closed:
                data = b"".join(
                    (json.dumps(r, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode("utf-8")
                    for r in self._pending.values()
                )
                self._fh.write(data)
                self._fh.flush()
                os.fsync(self._fh.fileno())
                for item_id, rec in self._pending.items():
                    self._records[item_id] = _ID_ONLY if self._ids_only else rec
                self._pending.clear()
            self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        with self._lock:
            if not self._fh.closed:
                self._fh.close()

    def __enter__(self) -> RecordLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: str | os.PathLike[str], key: str = "id") -> list[dict[str, Any]]:
    """Read a record log without opening it for writing (tolerates a cut-off last line)."""
    path = Path(path)
    if not path.exists():
        return []
    out: dict[str, dict[str, Any]] = {}
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                break
            out.setdefault(str(record[key]), record)
    return list(out.values())


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Stream a JSONL file line by line (constant memory)."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
