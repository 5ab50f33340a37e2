"""Split the teacher's work list across processes and merge their logs.

Launch one process per GPU with ``torchrun`` or ``accelerate launch``; both export ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``. Each item goes to exactly one rank by a stable hash of its id
(not by its position in the list, so a longer prompt file does not move finished items to other
ranks). Every rank appends to its own log ``grids.rank<r>.jsonl``; ``merge_teacher_logs`` unions
them into ``grids.jsonl`` sorted by id. Ranks skip ids finished in *any* rank log, so a rerun with
a different world size draws nothing twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dsd.io import atomic_write_text
from dsd.manifest import read_records

logger = logging.getLogger(__name__)

RANK_LOG_RE = re.compile(r"^grids\.rank(\d+)\.jsonl$")
MERGED_LOG = "grids.jsonl"


class ShardingError(ValueError):
    """Rank / world size are inconsistent (bad env vars or arguments)."""


def _env_int(names: tuple[str, ...]) -> int | None:
    for name in names:
        raw = os.environ.get(name)
        if raw is not None and raw.strip() != "":
            try:
                return int(raw)
            except ValueError as exc:
                raise ShardingError(f"environment variable {name}={raw!r} is not an integer") from exc
    return None


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Rank and world size: explicit values win, else torchrun/accelerate env vars, else (0, 1)."""
    if rank is None:
        rank = _env_int(("RANK", "SLURM_PROCID"))
    if world_size is None:
        world_size = _env_int(("WORLD_SIZE", "SLURM_NTASKS"))
    rank = 0 if rank is None else rank
    world_size = 1 if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ShardingError(
            f"rank {rank} / world size {world_size} is invalid: need 0 <= rank < world size "
            "(check RANK / WORLD_SIZE or the --rank / --world-size options)"
        )
    return rank, world_size


def local_rank() -> int:
    return _env_int(("LOCAL_RANK", "SLURM_LOCALID")) or 0


def stable_hash(item_id: str) -> int:
    return int(hashlib.sha1(item_id.encode("utf-8")).hexdigest()[:16], 16)


def shard_of(item_id: str, world_size: int) -> int:
    """The rank that owns ``item_id``; depends only on the id and the world size."""
    return stable_hash(item_id) % world_size


def rank_log_path(out_dir: Path, rank: int) -> Path:
    return Path(out_dir) / f"grids.rank{rank}.jsonl"


def rank_logs(out_dir: Path) -> list[Path]:
    """All per-rank logs in ``out_dir``, ordered by rank number."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out_dir.iterdir() if (m := RANK_LOG_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def done_ids_all_ranks(out_dir: Path) -> set[str]:
    done: set[str] = set()
    for path in rank_logs(out_dir):
        done.update(str(r["id"]) for r in read_records(path))
    return done


@contextlib.contextmanager
def _merge_lock(out_dir: Path) -> Iterator[None]:
    # Serialises concurrent merges: the last rank to finish then always writes the complete union.
    try:
        import fcntl
    except ImportError:  # Windows: single-process use there
        yield
        return
    with open(Path(out_dir) / ".grids.merge.lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def merge_teacher_logs(out_dir: Path) -> Path:
    """Union every ``grids.rank*.jsonl`` into ``grids.jsonl`` (sorted by id, one line per id).

    Deterministic: the output depends only on the set of finished records, not on which rank
    finished first. An id present in two rank logs (a rerun with another world size after a
    crash) keeps the record of the lowest rank.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _merge_lock(out_dir):
        merged: dict[str, dict[str, Any]] = {}
        for path in rank_logs(out_dir):
            for record in read_records(path):
                merged.setdefault(str(record["id"]), record)
        lines = [json.dumps(merged[k], sort_keys=True, ensure_ascii=False) + "\n" for k in sorted(merged)]
        dest = out_dir / MERGED_LOG
        atomic_write_text(dest, "".join(lines))
    logger.info("merged %d grid records from %d rank log(s) into %s", len(merged), len(rank_logs(out_dir)), dest)
    return dest
