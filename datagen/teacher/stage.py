"""Stage ``teacher``: draw one grid image per (prompt, seed) with the frozen FLUX teacher.

Work list: every prompt of ``prompts.jsonl`` times ``seeds_per_prompt`` seeds. A seed is a hash
of (``base_seed``, prompt id, seed index) and the grid id a hash of (prompt id, seed), so both are
independent of the order of the prompt file and of the number of processes. Each item goes to one
rank (``sharding.shard_of``); a rank writes ``grids/<id>.png`` atomically, then appends its record
to ``grids.rank<r>.jsonl``. A rerun skips ids finished by any rank and adopts a PNG whose record
was lost to a crash (same seed, same picture) instead of drawing it again.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from dsd.io import atomic_path, clean_stale_temporaries
from dsd.manifest import RecordLog, read_records

from ..panels import parse_layout
from ..summary import StageSummary
from .config import TeacherConfig
from .sharding import (
    MERGED_LOG,
    done_ids_all_ranks,
    local_rank,
    merge_teacher_logs,
    rank_log_path,
    resolve_rank,
    shard_of,
)

logger = logging.getLogger(__name__)

__all__ = ["WorkItem", "build_work_list", "merge_teacher_logs", "run_teacher", "make_backend"]


class PromptFileError(ValueError):
    """The prompts file is missing or has a record the teacher cannot use."""


class Backend(Protocol):
    name: str

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class WorkItem:
    grid_id: str
    prompt_id: str
    prompt: str
    seed: int
    rows: int
    cols: int


def derive_seed(base_seed: int, prompt_id: str, index: int) -> int:
    return int(hashlib.sha1(f"{base_seed}:{prompt_id}:{index}".encode()).hexdigest()[:8], 16)


def grid_id_for(prompt_id: str, seed: int) -> str:
    return hashlib.sha1(f"{prompt_id}:{seed}".encode()).hexdigest()[:16]


def build_work_list(prompts_path: Path, cfg: TeacherConfig) -> list[WorkItem]:
    """Every (prompt, seed) item, sorted by grid id (the order all ranks and reruns agree on)."""
    prompts_path = Path(prompts_path)
    if not prompts_path.is_file():
        raise PromptFileError(f"{prompts_path} does not exist: run the prompts stage first (or pass --prompts)")
    items: dict[str, WorkItem] = {}
    for record in read_records(prompts_path):
        text = record.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise PromptFileError(f"{prompts_path}: record {record.get('id')!r} has no 'prompt' text")
        rows, cols = parse_layout(record, where=str(prompts_path))
        pid = str(record["id"])
        for k in range(cfg.seeds_per_prompt):
            seed = derive_seed(cfg.base_seed, pid, k)
            gid = grid_id_for(pid, seed)
            items[gid] = WorkItem(gid, pid, text, seed, rows, cols)
    return [items[k] for k in sorted(items)]


def make_backend(cfg: TeacherConfig, local_rank_: int = 0) -> Backend:
    if cfg.backend == "toy":
        from .toy import ToyTeacher

        return ToyTeacher(cfg, local_rank_)
    if cfg.backend == "diffusers":
        from .diffusers_backend import DiffusersTeacher

        return DiffusersTeacher(cfg, local_rank_)
    from .comfyui_backend import ComfyUITeacher

    return ComfyUITeacher(cfg, local_rank_)


def _record(item: WorkItem, path: Path, size: tuple[int, int], backend: str, cfg: TeacherConfig) -> dict[str, Any]:
    return {
        "id": item.grid_id, "prompt_id": item.prompt_id, "prompt": item.prompt, "seed": item.seed,
        "width": size[0], "height": size[1], "rows": item.rows, "cols": item.cols, "path": str(path),
        "backend": backend, "steps": cfg.steps, "guidance": cfg.guidance,
    }  # fmt: skip


def _save_grid(image: Image.Image, dest: Path, item: WorkItem, backend: str) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("dsd_grid_id", item.grid_id)
    info.add_text("dsd_prompt_id", item.prompt_id)
    info.add_text("dsd_seed", str(item.seed))
    info.add_text("dsd_backend", backend)
    with atomic_path(dest, suffix=".png") as tmp:
        image.convert("RGB").save(tmp, format="PNG", pnginfo=info)


def _adoptable(path: Path, item: WorkItem) -> tuple[tuple[int, int], str] | None:
    """(size, backend) of a finished PNG of this very item whose record a crash lost, else None."""
    if not path.is_file():
        return None
    try:
        with Image.open(path) as im:
            im.load()
            if im.info.get("dsd_grid_id") == item.grid_id and im.info.get("dsd_seed") == str(item.seed):
                return im.size, str(im.info.get("dsd_backend", "unknown"))
    except (OSError, UnidentifiedImageError, ValueError):
        logger.warning("%s is damaged; drawing it again", path)
    return None


def run_teacher(
    cfg: TeacherConfig,
    prompts_path: Path,
    out_dir: Path,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    backend: Backend | None = None,
    limit: int | None = None,
) -> StageSummary:
    """Draw this rank's share of the grids; returns the rank's summary.

    ``rank``/``world_size`` default to RANK/WORLD_SIZE (torchrun, accelerate). ``backend`` lets a
    caller reuse a loaded model; ``limit`` stops after drawing that many items (smoke runs).
    ``out_dir/grids.jsonl`` is re-merged from all rank logs at the end.
    """
    rank, world_size = resolve_rank(rank, world_size)
    out_dir = Path(out_dir)
    summary = StageSummary(stage="teacher" if world_size == 1 else f"teacher (rank {rank}/{world_size})")
    grids_dir = out_dir / "grids"
    grids_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(grids_dir)
    work = [it for it in build_work_list(Path(prompts_path), cfg) if shard_of(it.grid_id, world_size) == rank]
    summary.items_in = len(work)
    with RecordLog(rank_log_path(out_dir, rank)) as log:
        pending, adopted = _pending(work, out_dir, log, cfg, summary)
        if limit is not None:
            pending = pending[:limit]
        drawn = _draw(pending, log, grids_dir, cfg, backend, f"teacher r{rank}", progress) if pending else 0
    merge_teacher_logs(out_dir)
    summary.items_out = drawn + adopted
    summary.extra.update(rank=rank, world_size=world_size, drawn=drawn, adopted_after_crash=adopted)
    return summary.stop()


def _pending(
    work: list[WorkItem], out_dir: Path, log: RecordLog, cfg: TeacherConfig, summary: StageSummary
) -> tuple[list[WorkItem], int]:
    """(items still to draw, how many were adopted): items any rank finished are skipped, and a PNG
    whose record a crash lost is adopted into ``log``."""
    done = done_ids_all_ranks(out_dir) | {str(r["id"]) for r in read_records(out_dir / MERGED_LOG)}
    pending: list[WorkItem] = []
    adopted = 0
    for item in work:
        if item.grid_id in done or item.grid_id in log:
            summary.skipped_done += 1
            continue
        path = out_dir / "grids" / f"{item.grid_id}.png"
        found = _adoptable(path, item)
        if found is not None:
            log.append(_record(item, path, found[0], found[1], cfg))
            adopted += 1
            continue
        pending.append(item)
    return pending, adopted


def _draw(
    pending: list[WorkItem], log: RecordLog, grids_dir: Path, cfg: TeacherConfig, backend: Backend | None,
    desc: str, progress: bool,
) -> int:
    """Draw ``pending`` in batches, each PNG saved before its record; returns the count drawn. A
    backend made here (``backend`` None) is closed here; a caller's is left loaded."""
    from tqdm import tqdm

    teacher = backend if backend is not None else make_backend(cfg, local_rank())
    drawn = 0
    try:
        with tqdm(total=len(pending), desc=desc, unit="grid", disable=not progress) as bar:
            for i in range(0, len(pending), cfg.batch_size):
                batch = pending[i : i + cfg.batch_size]
                images = teacher.generate([it.prompt for it in batch], [it.seed for it in batch])
                for item, image in zip(batch, images, strict=True):
                    dest = grids_dir / f"{item.grid_id}.png"
                    _save_grid(image, dest, item, teacher.name)
                    log.append(_record(item, dest, image.size, teacher.name, cfg))
                    drawn += 1
                bar.update(len(batch))
    finally:
        if backend is None:
            teacher.close()
    return drawn
