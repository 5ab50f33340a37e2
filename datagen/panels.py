"""Stage ``panels``: cut each teacher grid into its panels and form ordered (reference, target) pairs.

Panel detection lives in ``datagen/panel_detect.py`` (gutters and borders found by what separates
panels; touching panels split at colour edges with a confidence; a grid whose visible structure
contradicts its layout is rejected with the counts on both axes). Each grid's record in
``panels.jsonl`` says how it was split (``split``: gutters or edges, ``confidence``, ``detail``)
or why it was rejected (``reason``).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dsd.io import atomic_path, clean_stale_temporaries
from dsd.manifest import RecordLog, read_records

from .panel_detect import analyse_grid
from .panel_types import Box, Detection, PanelCountMismatch, PanelDetectionError, PanelsConfig
from .summary import StageSummary
from .vlm_view import UnreadableImage, ViewSpec, encode_view, read_rgb, view_path

logger = logging.getLogger(__name__)

MAX_GRID_SIDE = 8


class LayoutError(ValueError):
    """A record's layout (rows x cols) is missing or not understood."""


_LAYOUT_RE = re.compile(r"^\s*(\d+)\s*[xX\u00d7]\s*(\d+)\s*$")


def parse_layout(record: dict[str, Any], where: str = "record") -> tuple[int, int]:
    """(rows, cols) from a prompt/grid record: its ``rows``/``cols`` fields or ``layout`` like "2x2"."""
    rows, cols = record.get("rows"), record.get("cols")
    layout = record.get("layout")
    if (rows is None or cols is None) and isinstance(layout, str) and (m := _LAYOUT_RE.match(layout)):
        rows, cols = int(m.group(1)), int(m.group(2))
    ok = isinstance(rows, int) and isinstance(cols, int) and not isinstance(rows, bool) and not isinstance(cols, bool)
    if not ok or not (1 <= rows <= MAX_GRID_SIDE and 1 <= cols <= MAX_GRID_SIDE) or rows * cols < 2:
        raise LayoutError(
            f"{where} (id {record.get('id')!r}): unknown layout (layout={layout!r}, rows={rows!r}, cols={cols!r}); "
            f"give 'rows' and 'cols' as integers 1..{MAX_GRID_SIDE} (or layout like \"2x2\") with at least 2 panels"
        )
    return rows, cols


# ----------------------------------------------------------------------------------------------
# detection


def _as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise PanelDetectionError(f"expected an HxW or HxWxC image array, got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        scale = 255.0 if arr.dtype.kind == "f" and arr.max(initial=0) <= 1.0 else 1.0
        arr = np.clip(arr.astype(np.float32) * scale, 0, 255).astype(np.uint8)
    return arr


def analyse_panels(
    image: Image.Image | np.ndarray, rows: int, cols: int, cfg: PanelsConfig = PanelsConfig()
) -> Detection:
    """Panel boxes of a ``rows`` x ``cols`` grid and how they were found (see datagen/panel_detect.py).

    Raises PanelCountMismatch when the visible panels contradict the layout and
    PanelDetectionError when the grid cannot be cut with confidence (too small, blank, no clear split).
    """
    if rows < 1 or cols < 1:
        raise LayoutError(f"rows and cols must be >= 1, got {rows}x{cols}")
    arr = _as_rgb_array(image)
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise PanelDetectionError(f"image of {arr.shape[1]}x{arr.shape[0]} px is too small")
    try:
        return analyse_grid(arr, rows, cols, cfg)
    except PanelCountMismatch:
        raise
    except PanelDetectionError as exc:
        if str(exc).startswith("cannot cut the grid"):
            raise
        raise PanelDetectionError(f"cannot cut the grid into {rows}x{cols} panels: {exc}") from exc


def detect_panels(
    image: Image.Image | np.ndarray, rows: int, cols: int, cfg: PanelsConfig = PanelsConfig()
) -> list[Box]:
    """Panel boxes of a ``rows`` x ``cols`` grid, row-major, borders and gutters excluded."""
    return list(analyse_panels(image, rows, cols, cfg).boxes)


def cut_panels(image: Image.Image | np.ndarray, boxes: list[Box]) -> list[Image.Image]:
    pil = image if isinstance(image, Image.Image) else Image.fromarray(_as_rgb_array(image))
    pil = pil.convert("RGB")
    return [pil.crop((b.x0, b.y0, b.x1, b.y1)) for b in boxes]


def make_pairs(n_panels: int, max_pairs: int, rng_seed: int) -> list[tuple[int, int]]:
    """Ordered (reference, target) pairs of distinct panels, at most ``max_pairs``, sampled by seed.

    Sorted, so the same seed gives the same list whatever the caller does with it afterwards.
    """
    pairs = list(itertools.permutations(range(n_panels), 2))
    if max_pairs < len(pairs):
        pairs = random.Random(rng_seed).sample(pairs, max_pairs)
    return sorted(pairs)


# ----------------------------------------------------------------------------------------------
# stage


def _grid_seed(cfg_seed: int, grid_id: str) -> int:
    return int(hashlib.sha1(f"{cfg_seed}:{grid_id}".encode()).hexdigest()[:12], 16)


def _resolve(path_str: str, base: Path) -> Path:
    path = Path(path_str)
    if path.is_absolute() or path.exists():
        return path
    return base / path


def _save_png(image: Image.Image, dest: Path) -> None:
    with atomic_path(dest, suffix=".png") as tmp:
        image.save(tmp, format="PNG")


ANALYSIS_FAILED = "analysis failed"
# What a bug in the detector raises on one odd grid (numpy's errors are ValueError, IndexError,
# FloatingPointError, ...): that grid is rejected with the error as its reason, and the run goes on.
_ANALYSIS_BUGS = (ValueError, ArithmeticError, IndexError, TypeError, KeyError)


def _reason_category(reason: str) -> str:
    # The summary groups rejects by kind; the full reason (with paths and counts) stays in the log.
    for kind in ("unreadable image", "panel count mismatch", "cannot cut the grid", ANALYSIS_FAILED):
        if reason.startswith(kind):
            return kind
    return reason


def _process_grid(
    record: dict[str, Any], grids_path: Path, out_dir: Path, cfg: PanelsConfig, pairs_log: RecordLog,
    vlm_view: ViewSpec | None = None,
) -> dict[str, Any]:
    grid_id = str(record["id"])
    rows, cols = parse_layout(record, where=str(grids_path))
    result: dict[str, Any] = {"id": grid_id, "status": "rejected", "reason": "", "boxes": [], "panel_paths": []}
    src = _resolve(str(record.get("path", "")), grids_path.parent)
    try:
        image = read_rgb(src)
    except UnreadableImage as exc:
        result["reason"] = str(exc)
        return result
    try:
        found = analyse_panels(image, rows, cols, cfg)
    except PanelDetectionError as exc:
        result["reason"] = str(exc)
        return result
    except _ANALYSIS_BUGS as exc:  # a detector bug on one grid rejects that grid, never the whole run
        logger.warning("panels: analysing grid %s failed", grid_id, exc_info=True)
        result["reason"] = f"{ANALYSIS_FAILED}: {type(exc).__name__}: {exc}"
        return result
    boxes = list(found.boxes)
    panel_paths = []
    for k, panel in enumerate(cut_panels(image, boxes)):
        dest = out_dir / "panels" / f"{grid_id}_{k}.png"
        _save_png(panel, dest)
        if vlm_view is not None:
            with atomic_path(view_path(dest, vlm_view)) as tmp:
                tmp.write_bytes(encode_view(panel, vlm_view))
        panel_paths.append(str(dest))
    for ref, target in make_pairs(len(boxes), cfg.max_pairs_per_grid, _grid_seed(cfg.seed, grid_id)):
        pairs_log.append(
            {"id": f"{grid_id}_{ref}_{target}", "grid_id": grid_id, "ref_path": panel_paths[ref],
             "target_path": panel_paths[target], "ref_index": ref, "target_index": target}
        )  # fmt: skip
    result.update(status="ok", boxes=[b.as_list() for b in boxes], panel_paths=panel_paths, split=found.method,
                  confidence=round(found.confidence, 3), detail=found.detail)
    return result


def run_panels(
    cfg: PanelsConfig, grids_path: Path, out_dir: Path, *, progress: bool = True, vlm_view: ViewSpec | None = None
) -> StageSummary:
    """Cut every grid listed in ``grids_path`` (the teacher's grids.jsonl) into panels and pairs.

    ``vlm_view``: also write each panel's VLM upload bytes (datagen/vlm_view.py) for curation.

    Resumable: grids already in ``out_dir/panels.jsonl`` are skipped; panel PNGs and pair records
    are written before the grid's record, so a crash in between redoes that grid only (pair ids
    are stable, duplicates are dropped by the log).
    """
    from tqdm import tqdm

    grids_path, out_dir = Path(grids_path), Path(out_dir)
    if not grids_path.is_file():
        raise FileNotFoundError(f"{grids_path} does not exist: run the teacher stage first")
    start = time.perf_counter()
    summary = StageSummary(stage="panels")
    clean_stale_temporaries(out_dir / "panels")
    records = sorted(read_records(grids_path), key=lambda r: str(r["id"]))
    for record in records:  # fail fast on a bad layout before doing any work
        parse_layout(record, where=str(grids_path))
    with RecordLog(out_dir / "panels.jsonl") as log, RecordLog(out_dir / "pairs.jsonl") as pairs_log:
        for record in tqdm(records, desc="panels", unit="grid", disable=not progress):
            summary.items_in += 1
            if str(record["id"]) in log:
                summary.skipped_done += 1
                continue
            result = _process_grid(record, grids_path, out_dir, cfg, pairs_log, vlm_view)
            log.append(result)
            if result["status"] == "ok":
                summary.items_out += 1
                key = "cut at gutters" if result["split"] == "gutters" else "cut at colour edges (no gutter)"
                summary.extra[key] = summary.extra.get(key, 0) + 1
            else:
                summary.reject(_reason_category(result["reason"]))
        summary.extra["pairs"] = len(pairs_log)
    summary.seconds = time.perf_counter() - start
    return summary


__all__ = [
    "Box", "Detection", "LayoutError", "PanelCountMismatch", "PanelDetectionError", "PanelsConfig",
    "analyse_panels", "cut_panels", "detect_panels", "make_pairs", "parse_layout", "run_panels",
]  # fmt: skip
