"""`python -m datagen import-grids`: grids made elsewhere enter the pipeline at the panels stage.

The source is a folder of images (every grid with the ``--layout`` given) or a manifest, one grid
per line: ``.jsonl`` records or a ``.csv`` with a header, fields ``path`` (relative to the manifest),
``layout`` ("2x2") or ``rows`` + ``cols``, and optionally ``id`` and ``prompt`` (the prompt the grid
was drawn from; curation shows it to the VLM). Each grid becomes a record of
``WORKDIR/teacher/grids.jsonl``, the file the panels stage reads, pointing at the image where it
is (nothing is copied). Grid ids are stable (from the path), so a rerun after a kill appends only
what is missing; records already there are never rewritten.

A manifest line that cannot be understood (no path, an unknown layout, a duplicate id) stops the
import before anything is written: the manifest is the user's to fix. A grid whose file is missing,
is not an image (its header is read; the panels stage decodes the pixels) or raises while checked
is a reject counted in the summary and not imported; nothing records it, so a rerun after the
file is fixed brings it in.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from dsd.manifest import RecordLog, iter_jsonl

from .config import DatagenInputError
from .panels import LayoutError, parse_layout
from .summary import StageSummary, item_failure

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def grid_id(rel: str) -> str:
    """A file-name-safe id that is the same on every run for the same relative path."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", rel.rsplit(".", 1)[0]).strip("-")[:60] or "grid"
    return f"{stem}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"


def _folder_entries(folder: Path, layout: str | None) -> list[dict[str, Any]]:
    if not layout:
        raise DatagenInputError(f"{folder} is a folder of images: give their layout with --layout (e.g. --layout 2x2)")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatagenInputError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [{"path": str(p), "rel": p.relative_to(folder).as_posix(), "layout": layout} for p in files]


def _manifest_entries(path: Path, layout: str | None) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = list(iter_jsonl(path))
    else:
        raise DatagenInputError(f"{path}: a manifest must be .jsonl or .csv (or give a folder of images)")
    entries = []
    for n, row in enumerate(rows, 1):
        if not row.get("path"):
            raise DatagenInputError(f"{path} line {n}: no 'path' (each line names one grid image)")
        image = Path(str(row["path"]))
        image = image if image.is_absolute() else path.parent / image
        entry = {k: v for k, v in row.items() if v not in (None, "")}
        entry.update(path=str(image), rel=str(row["path"]))
        for key in ("rows", "cols"):
            if isinstance(entry.get(key), str) and entry[key].strip().isdigit():
                entry[key] = int(entry[key])
        if "layout" not in entry and not ("rows" in entry and "cols" in entry):
            if not layout:
                raise DatagenInputError(f"{path} line {n}: no layout; add a 'layout' column or give --layout")
            entry["layout"] = layout
        entries.append(entry)
    return entries


def _record(entry: dict[str, Any], where: str) -> dict[str, Any]:
    try:
        rows, cols = parse_layout(entry, where=where)
    except LayoutError as exc:
        raise DatagenInputError(str(exc)) from exc
    gid = str(entry.get("id") or grid_id(entry["rel"]))
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", gid):
        raise DatagenInputError(f"{where}: grid id {gid!r} may only hold letters, digits, '_', '-' and '.'")
    rec = {"id": gid, "path": str(Path(entry["path"]).resolve()), "rows": rows, "cols": cols,
           "layout": f"{rows}x{cols}", "prompt_id": None, "seed": None, "backend": "import"}  # fmt: skip
    if entry.get("prompt"):
        rec["prompt"] = str(entry["prompt"])
    return rec


def _check_image(path: Path) -> str | None:
    """None when ``path`` is a file with an image header; else the summary's reject reason."""
    if not path.is_file():
        return "image file not found"
    try:
        with Image.open(path):  # the header only: the panels stage decodes the pixels once
            return None
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        logger.warning("import-grids: %s is not an image (%s: %s)", path, type(exc).__name__, exc)
        return "not an image"


def import_grids(source: Path, workdir: Path, *, layout: str | None = None, progress: bool = True) -> StageSummary:
    """Append the grids of ``source`` (folder or manifest) to ``workdir/teacher/grids.jsonl``; resumable."""
    from tqdm import tqdm

    started = time.monotonic()
    source = Path(source)
    if not source.exists():
        raise DatagenInputError(f"{source} does not exist: give a folder of grid images or a manifest")
    entries = _folder_entries(source, layout) if source.is_dir() else _manifest_entries(source, layout)
    records = [_record(e, where=f"{source} ({e['rel']})") for e in entries]  # every layout checked first
    seen: dict[str, str] = {}
    for rec in records:
        if seen.setdefault(rec["id"], rec["path"]) != rec["path"]:
            raise DatagenInputError(f"{source}: grid id {rec['id']!r} names two images; ids must be unique")
    summary = StageSummary("import-grids")
    (workdir / "teacher").mkdir(parents=True, exist_ok=True)
    with RecordLog(workdir / "teacher" / "grids.jsonl") as log:
        for rec in tqdm(records, desc="import-grids", unit="grid", disable=not progress):
            summary.items_in += 1
            if rec["id"] in log:
                summary.skipped_done += 1
                continue
            try:
                problem = _check_image(Path(rec["path"]))
            except Exception as exc:  # noqa: BLE001 - one grid's failure is its reject, not the import's end
                problem = item_failure("import-grids", rec["id"], "check", exc)[1]
            if problem is not None:
                summary.reject(problem)
                continue
            log.append(rec)
            summary.items_out += 1
    summary.seconds = time.monotonic() - started
    return summary
