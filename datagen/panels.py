"""Stage ``panels``: cut each teacher grid into its panels and form ordered (reference, target) pairs.

Panel detection (``detect_panels``) looks for gutters instead of assuming an even split:

1. *Flat lines.* A pixel is "active" along a line when it differs from its neighbour on that line
   by more than ``flat_threshold`` grey levels (max over RGB). A row (column) is *flat* when the
   fraction of active pixels along it is below ``flat_fraction``, or below ``flat_relative`` x the
   median line of the strip (JPEG ringing leaves a few active pixels in narrow gutters). Gutters and borders are flat
   whatever their colour, also with JPEG noise (small differences) or a colour gradient (small
   steps); textured panel content is not.
2. *Bands.* Maximal runs of flat lines. A run touching the image edge is an outer border and is
   trimmed (only when it is at most ``max_border_fraction`` of the side: a wider one is content,
   e.g. sky). Runs inside, at least ``min_gutter_px`` wide, are gutters.
3. *Matching the layout.* Along an axis that must hold ``n`` panels, exactly ``n - 1`` gutters
   must be found and each must lie within ``gutter_tolerance`` x the panel pitch of the even-split
   position; panels end at gutter edges. A gutter much wider than the pitch allows (flat content
   merged with it) is cut at the even-split position clamped into the band.
4. *No visible gutter.* When an axis shows no gutter at all, it is split evenly between the
   trimmed borders (touching panels). This fallback applies only when nothing contradicts it: the
   axes are analysed hierarchically (rows over the whole image, then columns inside each row strip,
   and also columns first, then rows inside each column strip); if some strips show gutters and
   others along the same axis show none, or show a different number, the grid is rejected with
   ``PanelCountMismatch`` (e.g. 3 visible panels for a 2x2 prompt).
5. Of the two orders, the one that found more gutters gives the boxes; if either order finds a
   contradiction the grid is rejected.

Known limit: a panel whose content holds a flat line across its whole extent (a plain background
split by nothing) looks like a gutter and the grid is rejected; this errs on the side of dropping
grids, never of emitting wrong crops.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from dsd.io import atomic_path, clean_stale_temporaries
from dsd.manifest import RecordLog, read_records

from .summary import StageSummary
from .vlm_view import ViewSpec, encode_view, view_path

logger = logging.getLogger(__name__)

MAX_GRID_SIDE = 8


@dataclass(frozen=True, slots=True)
class PanelsConfig:
    max_pairs_per_grid: int = 6
    min_panel_size: int = 64
    gutter_tolerance: float = 0.2  # max distance of a gutter from the even-split cut, in panel pitches
    seed: int = 0
    flat_threshold: int = 10  # grey-level step along a line that counts as structure
    flat_fraction: float = 0.04  # a line is flat when fewer of its pixels than this are active,
    flat_relative: float = 0.15  # ... or fewer than this x the median line (JPEG ringing near gutters)
    min_gutter_px: int = 2
    max_border_fraction: float = 0.2
    max_gutter_fraction: float = 0.35  # of the pitch; wider flat bands are gutter + flat content

    def __post_init__(self) -> None:
        if self.max_pairs_per_grid < 0 or self.min_panel_size < 1 or self.min_gutter_px < 1:
            raise ValueError("panels: max_pairs_per_grid >= 0, min_panel_size >= 1 and min_gutter_px >= 1 required")
        if not 0 < self.gutter_tolerance < 0.5:
            raise ValueError(f"panels.gutter_tolerance must be in (0, 0.5), got {self.gutter_tolerance}")
        if not 0 < self.flat_fraction < 1 or not 0 <= self.max_border_fraction < 0.5:
            raise ValueError("panels: flat_fraction in (0, 1) and max_border_fraction in [0, 0.5) required")


@dataclass(frozen=True, slots=True)
class Box:
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]

    def iou(self, other: Box) -> float:
        ix = max(0, min(self.x1, other.x1) - max(self.x0, other.x0))
        iy = max(0, min(self.y1, other.y1) - max(self.y0, other.y0))
        inter = ix * iy
        union = self.width * self.height + other.width * other.height - inter
        return inter / union if union else 0.0


class PanelDetectionError(ValueError):
    """The grid cannot be cut into the prompt's layout; the message says why."""


class PanelCountMismatch(PanelDetectionError):
    def __init__(self, expected: int, found: int, rows: int, cols: int, detail: str = "") -> None:
        self.expected, self.found, self.rows, self.cols = expected, found, rows, cols
        msg = f"panel count mismatch: the prompt asks for {rows}x{cols} = {expected} panels, the image shows {found}"
        super().__init__(msg + (f" ({detail})" if detail else ""))


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


class _Activity:
    """Prefix sums of 'active' pixels along rows and columns, so any strip's profile is O(length)."""

    def __init__(self, arr: np.ndarray, threshold: int) -> None:
        a = arr.astype(np.int16)
        act_h = (np.abs(a[:, 1:] - a[:, :-1]).max(axis=2) > threshold).astype(np.int32)  # (H, W-1)
        act_v = (np.abs(a[1:] - a[:-1]).max(axis=2) > threshold).astype(np.int32)  # (H-1, W)
        self.h, self.w = arr.shape[:2]
        self.cs_h = np.zeros((self.h, self.w), np.int32)
        np.cumsum(act_h, axis=1, out=self.cs_h[:, 1:])
        self.cs_v = np.zeros((self.h, self.w), np.int32)
        np.cumsum(act_v, axis=0, out=self.cs_v[1:])

    def row_profile(self, x0: int, x1: int) -> np.ndarray:
        """Active fraction of every row, measured between columns x0 and x1."""
        n = max(1, x1 - 1 - x0)
        return (self.cs_h[:, x1 - 1] - self.cs_h[:, x0]) / n

    def col_profile(self, y0: int, y1: int) -> np.ndarray:
        n = max(1, y1 - 1 - y0)
        return (self.cs_v[y1 - 1] - self.cs_v[y0]) / n


@dataclass(frozen=True, slots=True)
class _Axis:
    segments: tuple[tuple[int, int], ...] = ()
    gutters: int = 0  # gutters found and used (0: even split)
    found: int = 0  # panels the image shows along this axis (== n when ok)
    error: str = ""


def _runs(mask: np.ndarray, bridge: int = 2) -> list[tuple[int, int]]:
    """Runs of True; runs split by at most ``bridge`` False lines are one (JPEG block seams in a gutter)."""
    padded = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    runs: list[tuple[int, int]] = []
    for s, e in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
        if runs and s - runs[-1][1] <= bridge:
            runs[-1] = (runs[-1][0], e)
        else:
            runs.append((s, e))
    return runs


def _split_axis(profile: np.ndarray, n: int, cfg: PanelsConfig) -> _Axis:
    length = len(profile)
    limit = max(cfg.flat_fraction, cfg.flat_relative * float(np.median(profile)))
    runs = _runs(profile < limit)
    if runs and runs[0] == (0, length):
        return _Axis(found=0, error="blank image (no structure at all)")
    lo, hi = 0, length
    max_border = cfg.max_border_fraction * length
    if runs and runs[0][0] == 0 and runs[0][1] <= max_border:
        lo = runs[0][1]
    if runs and runs[-1][1] == length and length - runs[-1][0] <= max_border:
        hi = runs[-1][0]
    bands = [(s, e) for s, e in runs if s > 0 and e < length and s >= lo and e <= hi and e - s >= cfg.min_gutter_px]
    pitch = (hi - lo) / n
    if pitch < cfg.min_panel_size:
        return _Axis(found=0, error=f"content of {hi - lo} px is too small for {n} panels of >= {cfg.min_panel_size} px")
    if not bands:
        cuts = [round(lo + i * pitch) for i in range(n + 1)]
        return _Axis(segments=tuple(zip(cuts[:-1], cuts[1:], strict=True)), gutters=0, found=n)
    if len(bands) != n - 1:
        return _Axis(found=len(bands) + 1, error=f"{len(bands)} gutter(s) where {n - 1} expected")
    edges = [lo]
    for i, (s, e) in enumerate(bands, 1):
        expected = lo + i * pitch
        distance = max(0.0, s - expected, expected - e)
        if distance > cfg.gutter_tolerance * pitch:
            return _Axis(found=n, error=f"gutter at {s}-{e} px is {distance:.0f} px off the even split (uneven panels)")
        if e - s > cfg.max_gutter_fraction * pitch:  # gutter merged with flat content: trust the even split
            cut = int(round(min(max(expected, s), e)))
            edges += [cut, cut]
        else:
            edges += [s, e]
    edges.append(hi)
    segments = tuple((edges[2 * i], edges[2 * i + 1]) for i in range(n))
    small = [b - a for a, b in segments if b - a < cfg.min_panel_size]
    if small:
        return _Axis(found=n, error=f"panel of {small[0]} px is below min_panel_size={cfg.min_panel_size}")
    return _Axis(segments=segments, gutters=len(bands), found=n)


@dataclass(frozen=True, slots=True)
class _Result:
    boxes: tuple[Box, ...] = ()
    gutters: int = 0
    found: int = 0
    error: str = ""


def _hierarchical(act: _Activity, rows: int, cols: int, cfg: PanelsConfig, rows_first: bool) -> _Result:
    n_primary, n_secondary = (rows, cols) if rows_first else (cols, rows)
    primary = _split_axis(act.row_profile(0, act.w) if rows_first else act.col_profile(0, act.h), n_primary, cfg)
    if primary.error:
        if primary.found == 0:
            return _Result(error=primary.error)
        whole = _split_axis(act.col_profile(0, act.h) if rows_first else act.row_profile(0, act.w), n_secondary, cfg)
        return _Result(found=primary.found * max(1, whole.found), error=primary.error)
    strips: list[_Axis] = []
    for a, b in primary.segments:
        profile = act.col_profile(a, b) if rows_first else act.row_profile(a, b)
        strips.append(_split_axis(profile, n_secondary, cfg))
    failed = [s for s in strips if s.error]
    with_gutters = [s for s in strips if not s.error and s.gutters]
    if failed or (with_gutters and len(with_gutters) != len(strips)):
        # A strip without gutters next to strips with gutters is one merged panel, not an even split.
        counts = [s.found if s.error else (s.found if s.gutters or not with_gutters else 1) for s in strips]
        found = counts[0] if primary.gutters == 0 and len(set(counts)) == 1 else sum(counts)
        detail = next((s.error for s in failed), "some strips show gutters, others none")
        return _Result(found=found, error=detail)
    boxes = []
    if rows_first:
        for (y0, y1), strip in zip(primary.segments, strips, strict=True):
            boxes += [Box(x0, y0, x1, y1) for x0, x1 in strip.segments]
    else:
        for r in range(rows):
            for (x0, x1), strip in zip(primary.segments, strips, strict=True):
                y0, y1 = strip.segments[r]
                boxes.append(Box(x0, y0, x1, y1))
    return _Result(boxes=tuple(boxes), gutters=primary.gutters + sum(s.gutters for s in strips), found=rows * cols)


def detect_panels(
    image: Image.Image | np.ndarray, rows: int, cols: int, cfg: PanelsConfig = PanelsConfig()
) -> list[Box]:
    """Panel boxes of a ``rows`` x ``cols`` grid, row-major, borders and gutters excluded.

    Raises PanelCountMismatch when the visible panels do not match the layout and
    PanelDetectionError when the image cannot hold the layout at all (too small, blank).
    """
    if rows < 1 or cols < 1:
        raise LayoutError(f"rows and cols must be >= 1, got {rows}x{cols}")
    arr = _as_rgb_array(image)
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise PanelDetectionError(f"image of {arr.shape[1]}x{arr.shape[0]} px is too small")
    act = _Activity(arr, cfg.flat_threshold)
    by_rows = _hierarchical(act, rows, cols, cfg, rows_first=True)
    by_cols = _hierarchical(act, rows, cols, cfg, rows_first=False)
    expected = rows * cols
    for res in (by_rows, by_cols):
        if res.error and res.found in (0, expected):
            raise PanelDetectionError(f"cannot cut the grid into {rows}x{cols} panels: {res.error}")
        if res.error:
            raise PanelCountMismatch(expected, res.found, rows, cols, res.error)
    best = by_cols if by_cols.gutters > by_rows.gutters else by_rows
    return list(best.boxes)


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


def _reason_category(reason: str) -> str:
    # The summary groups rejects by kind; the full reason (with paths and counts) stays in the log.
    for kind in ("unreadable image", "panel count mismatch", "cannot cut the grid"):
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
        with Image.open(src) as im:
            im.load()
            image = im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        result["reason"] = f"unreadable image {src}: {type(exc).__name__}: {exc}"
        return result
    try:
        boxes = detect_panels(image, rows, cols, cfg)
    except PanelDetectionError as exc:
        result["reason"] = str(exc)
        return result
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
    result.update(status="ok", boxes=[b.as_list() for b in boxes], panel_paths=panel_paths)
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
            else:
                summary.reject(_reason_category(result["reason"]))
        summary.extra["pairs"] = len(pairs_log)
    summary.seconds = time.perf_counter() - start
    return summary
