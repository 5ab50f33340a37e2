"""The parquet files datagen reads from outside (caption shards, the authors' dataset): opened and
streamed by row group, with errors that name the file and where it is broken."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import DatagenInputError


def open_parquet(path: Path) -> Any:  # -> pyarrow.parquet.ParquetFile
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatagenInputError(f"{path}: not a readable parquet file ({exc})") from exc


def iter_batches(pf: Any, path: Path, columns: list[str], batch_rows: int) -> Iterator[Any]:
    """``pf.iter_batches`` (pyarrow RecordBatches); corrupt data raises DatagenInputError naming the row."""
    import pyarrow as pa

    row = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            yield batch
            row += batch.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatagenInputError(f"{path}: parquet data is corrupt near row {row} ({exc})") from exc
