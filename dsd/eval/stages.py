"""The scoring stages of ``dsd eval``: which images to score, embedding metrics, the judge, the table.

Every image has a stable id ``<system>/<subject>/<name>``. Each metric family has its own record
log under ``<out>/scores`` (``embeddings.jsonl``, ``judge.jsonl``; dsd.manifest, as datagen), so
``kill -9`` loses at most the item in hand, a rerun does only what is missing, and a judge added
later scores the same images without recomputing the embeddings. The final table is a join of the
image list with both logs, sorted by id: it depends on the set of finished records only.

Images made elsewhere (DSD, Kontext, USO, ACE++ ...) are read from ``<folder>/<subject>/<prompt
id>.png`` or ``<prompt id>_<anything>.png`` (several samples per prompt), jpg/webp too; the ids are
the benchmark's (see ``dsd eval --list``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..manifest import RecordLog, read_records
from .layout import IMAGE_SUFFIXES, Benchmark, BenchmarkError
from .sampling import judge_view, read_samples

logger = logging.getLogger(__name__)

EMBED_LOG = "embeddings.jsonl"
JUDGE_LOG = "judge.jsonl"


@dataclass(frozen=True)
class ImageSource:
    """A folder of images made by any system, scored under ``name``."""

    name: str
    folder: Path
    step: int | None = None


def collect_folder(source: ImageSource, bench: Benchmark) -> list[dict[str, Any]]:
    """The images of ``source`` that belong to a benchmark prompt (others are listed in a warning)."""
    if not source.folder.is_dir():
        raise BenchmarkError(f"image folder {source.folder} (system {source.name!r}) does not exist")
    ids_by_subject: dict[str, list[str]] = {}
    for p in bench.prompts:
        ids_by_subject.setdefault(p.subject, []).append(p.id)
    rows, stray = [], []
    for sid, prompt_ids in sorted(ids_by_subject.items()):
        folder = source.folder / sid
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        for f in files:
            match = [pid for pid in prompt_ids if f.stem == pid or f.stem.startswith(f"{pid}_")]
            if not match:
                stray.append(f.name)
                continue
            pid = max(match, key=len)
            rows.append({"id": f"{source.name}/{sid}/{f.stem}", "system": source.name, "step": source.step, "subject": sid,
                         "prompt_id": pid, "sample": f.stem[len(pid) + 1:], "path": str(f.resolve()), "recon_mse": None})  # fmt: skip
    if stray:
        logger.warning("%s: %d file(s) match no prompt id and are ignored (e.g. %s)", source.folder, len(stray), stray[:3])
    if not rows:
        raise BenchmarkError(
            f"image folder {source.folder} has no images named <subject>/<prompt id>[_<anything>].png for this "
            "benchmark; `python -m dsd eval --list` prints the ids"
        )
    return rows


def collect_samples(out_dir: Path, system: str, step: int | None) -> list[dict[str, Any]]:
    rows = []
    for rec in read_samples(out_dir, system):
        rows.append({"id": rec["id"], "system": system, "step": step, "subject": rec["subject"], "prompt_id": rec["prompt_id"],
                     "sample": f"s{rec['seed']}", "path": str((Path(out_dir) / rec["path"]).resolve()),
                     "recon_mse": rec.get("recon_mse"), "view": str(Path(out_dir) / judge_view(Path(rec["path"])))})  # fmt: skip
    return rows


def _open(path: str | Path):
    from ..images import read_image

    return read_image(path)


def _by_subject(rows: list[dict[str, Any]], size: int) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["subject"], []).append(row)
    for sid in sorted(groups):
        members = groups[sid]
        for start in range(0, len(members), size):
            yield sid, members[start : start + size]


def embed_stage(rows: list[dict[str, Any]], bench: Benchmark, models, scores_dir: Path, *, chunk: int = 32,
                progress: bool = True) -> int:  # fmt: skip
    """CLIP-I / CLIP-T / DINO for every row not yet in ``embeddings.jsonl``; images are read chunk by chunk."""
    from tqdm import tqdm

    texts = {p.key: p.text for p in bench.prompts}
    with RecordLog(Path(scores_dir) / EMBED_LOG) as log:
        todo = [r for r in rows if r["id"] not in log]
        bar = tqdm(total=len(todo), desc="embeddings", unit="img", disable=not progress)
        reference_cache: tuple[str, Any] | None = None
        for sid, group in _by_subject(todo, chunk):
            if reference_cache is None or reference_cache[0] != sid:
                reference_cache = (sid, _open(bench.subjects[sid].reference))
            outputs = [_open(r["path"]) for r in group]
            prompts = [texts[f"{sid}/{r['prompt_id']}"] for r in group]
            scores = models.score(reference_cache[1], outputs, prompts)
            log.append_many([{"id": r["id"], **s} for r, s in zip(group, scores, strict=True)])
            bar.update(len(group))
        bar.close()
    return len(todo)


@dataclass
class JudgeStageResult:
    judged: int = 0
    unavailable: int = 0
    failures: int = 0


def _judge_input(row: dict[str, Any]) -> str:
    view = row.get("view")
    return view if view and Path(view).is_file() else row["path"]


def judge_stage(rows: list[dict[str, Any]], bench: Benchmark, judge, scores_dir: Path, *, chunk: int = 512,
                progress: bool = True) -> JudgeStageResult:  # fmt: skip
    """The VLM judge for every row not yet in ``judge.jsonl``. An item whose server stayed unreachable is
    left undone (the next run asks again); a refused or malformed run is recorded in its failures."""
    from tqdm import tqdm

    from .judge import JudgeUnavailable

    texts = {p.key: p.text for p in bench.prompts}
    result = JudgeStageResult()
    with RecordLog(Path(scores_dir) / JUDGE_LOG, flush_every=16, flush_s=0.5) as log:
        todo = [r for r in rows if r["id"] not in log]
        items = [(str(bench.subjects[r["subject"]].reference), _judge_input(r), texts[f"{r['subject']}/{r['prompt_id']}"])
                 for r in todo]  # fmt: skip
        bar = tqdm(total=len(todo), desc="judge", unit="img", disable=not progress)
        for index, score in judge.score_many(items, chunk=chunk):
            bar.update(1)
            if isinstance(score, JudgeUnavailable):
                result.unavailable += 1
                logger.warning("judge: %s left for the next run: %s", todo[index]["id"], score)
                continue
            result.judged += 1
            result.failures += bool(score.failures)
            log.append({"id": todo[index]["id"], **score.to_record()})
        bar.close()
    return result


METRICS = ("clip_i", "clip_t", "dino", "dino_v1", "cp", "pf", "cp_x_pf", "cp_std", "pf_std", "recon_mse")
TABLE_COLUMNS = ("id", "system", "step", "references", "subject", "subject_category", "prompt_id", "prompt_category", "prompt",
                 "sample", "path", "reference", *METRICS, "judge_failures")  # fmt: skip


def build_table(rows: list[dict[str, Any]], bench: Benchmark, scores_dir: Path):
    """One row per image: ids, benchmark fields, every metric (NaN where not computed), sorted by id."""
    import pandas as pd

    embed = {str(r["id"]): r for r in read_records(Path(scores_dir) / EMBED_LOG)}
    judged = {str(r["id"]): r for r in read_records(Path(scores_dir) / JUDGE_LOG)}
    prompts = {p.key: p for p in bench.prompts}
    out = []
    for row in sorted(rows, key=lambda r: r["id"]):
        p = prompts[f"{row['subject']}/{row['prompt_id']}"]
        subject = bench.subjects[row["subject"]]
        rec = {**row, "subject_category": subject.category, "prompt_category": p.category, "prompt": p.text,
               "reference": str(subject.reference)}  # fmt: skip
        for source in (embed.get(row["id"], {}), judged.get(row["id"], {})):
            rec.update({k: source[k] for k in METRICS if k in source})
        rec["judge_failures"] = "; ".join(judged.get(row["id"], {}).get("judge_failures", []))
        out.append({k: rec.get(k) for k in TABLE_COLUMNS})
    frame = pd.DataFrame(out, columns=list(TABLE_COLUMNS))
    for k in METRICS:
        frame[k] = pd.to_numeric(frame[k], errors="coerce").astype("float64")
    frame["step"] = pd.to_numeric(frame["step"], errors="coerce").astype("Int64")
    frame["references"] = pd.to_numeric(frame["references"], errors="coerce").astype("Int64")  # k (issue 20)
    return frame
