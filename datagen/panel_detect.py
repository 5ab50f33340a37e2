"""Where are the panels of a grid? Gutters and borders found by what separates panels.

A gutter is not "a line without variation" (a flat illustration's background has none either):
it is a run of *uniform* lines (every pixel within ``uniform_tolerance`` of the line's colour)
whose colour does *not* continue into the lines beside it. A flat panel's margin is uniform too,
but its colour continues into the panel's next line (the background around the subject); a
gutter's neighbours are panel content or other panels' margins.

1. *Bands.* For each axis, over the whole span: runs of uniform lines of one colour (a run breaks
   where the colour jumps), tiny JPEG seams bridged. A run is a *separator* when its colour covers
   less than ``continuation_max`` of the first line on each side of it.
2. *Borders.* Separators touching the image edge (and separators right inside them: a frame, then
   a margin) are trimmed when they are at most ``max_border_fraction`` of the side.
3. *Gutters.* Interior separators grouped by colour (gutters of one grid share a colour). A colour
   explains the layout when it shows exactly ``rows - 1`` gutters across the full width and
   ``cols - 1`` across the full height, each within ``gutter_tolerance`` pitches of the even split.
   When one axis fits and the other shows no full-span gutter, each strip of the first axis is
   searched on its own (staggered gutters); every strip must agree with the layout.
   Bands wider than ``max_gutter_fraction`` of a panel are no gutter candidates (flat margins),
   nor is a fitted gutter whose colour fills much of a panel beside it (that panel's margin).
4. *Contradictions.* If the image shows gutters that form a grid of their own (evenly spaced) but
   not the asked one, the grid is rejected with the counts the image shows on each axis
   (``PanelCountMismatch``); an axis is never split evenly because the other axis had gutters.
   Stray bands in no grid pattern are not structure: the grid goes on to step 5.
5. *No gutter at all* (datagen/panel_edges.py). Panels that touch are split at *colour edges*: lines where most of the span
   steps sharply compared with the steps just before and after. Each cut is the strongest edge
   near its even-split position; its confidence is how much it stands out from the next-best edge
   in that window. When an object's edge rivals it, evenness is the second cue: the strongest edge
   must also be clearly nearer the even split than every close rival (the confidence then adds
   that distance gap, in windows, as independent evidence). A weak or ambiguous edge (below
   ``min_edge_fraction`` or ``min_edge_confidence``), or a strong full-span edge where the layout
   has none (inside a cut panel, stronger than the cuts), rejects the grid: it is never split by guesswork (unless ``no_edge = "even"`` says the
   input is known to be such grids, e.g. the toy's noise; the cut is then recorded with confidence
   0). A uniform band at one edge only may be a border or a panel's background reaching the edge:
   both readings are cut and one must give clearly more equal panels (or be the only one that cuts
   with confidence, into equal panels), else the grid is rejected. Bands that fit no gutter layout
   (step 3 fails without a count contradiction) may be touching flat panels' margins: colour edges
   are tried, on edge confidence alone.
6. Panels along an axis must be near-equal (``max_panel_spread``): the teacher draws equal panels,
   so bands that would cut very unequal ones are in the wrong places.

7. *Doubts about gutters* (issue 16, real photographs): a gutter whose colour fades into a panel
   (a white studio wall) may hold part of it, so its width must match the clean gutters'; a
   border likewise must match a clean border, and a border wider than all the others (which agree)
   must be drawn (exactly flat lines), else it may hold the flat side of the panel beside it (a
   product shot's white ground cut off by a shelf); a lone coloured band cutting unequal panels is a
   photo's flat strip. When the separator analysis lost the gutters (their colour taken for
   background), they are looked for by colour (datagen/panel_colour.py) before colour edges.
8. Every cut, however found, is verified (datagen/panel_verify.py): no straight edge hidden across
   the middle of the panels of a row or column (a wrong layout), and touching panels equal with no
   gutter or border strip left along a side. Any doubt rejects: a mis-cut is worse than a reject.

Known limits (they reject, never mis-cut): gutters of the same colour as the panels' background
are invisible (horse silhouettes on white between white gutters); gutters that are neither aligned
across the grid nor within strips; touching panels whose seam crosses mostly flat or noisy content (crops
of a starfield on black, of the moon's faint grain: no cue stands out over its rivals). Where no edge
stands out, datagen/panel_edges.py's weaker cues (a jump of local averages, a one-line step, lines that
stop being alike) cut only at the even split with no rival near, and the same cues, fainter still, at an
even split inside a cut panel reject it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .panel_types import Box, Detection, PanelCountMismatch, PanelDetectionError, PanelsConfig
from .panel_verify import _AGREE_PX, channel_max, edge_profile, verify

_SAMPLES = 256  # pixels sampled along each line to judge it
# a band at one edge only is a panel's own side when it is wider than _BAND_PX (a cut that far off is
# wrong) and leaves panels equal to _EQUAL_PX with that panel, not without it
_BAND_PX, _EQUAL_PX = 3, 2
_FRAME_PX = 2  # a frame's four sides agree on their width within this (resampling)
_BRIDGE = 2  # non-uniform lines inside a gutter that are still one gutter (JPEG block seams)
_FLAT_SHARE = 0.99  # a drawn line (gutter, border): this share within 1 level of its median (no grain)


@dataclass(frozen=True, slots=True)
class _Band:
    start: int
    end: int
    colour: tuple[float, float, float]
    touches_start: bool
    touches_end: bool

    @property
    def width(self) -> int:
        return self.end - self.start


def _lines(a: np.ndarray, axis: int, samples: int = 0) -> np.ndarray:
    """The image as a stack of lines along ``axis`` (0: rows, 1: columns). With ``samples``, each
    line keeps about that many pixels along it (every k-th), contiguous: a share of a line's pixels
    needs no more, and it keeps a 1024 px grid's analysis to milliseconds."""
    if samples:
        step = max(1, a.shape[1 - axis] // samples)
        a = a[:, ::step] if axis == 0 else a[::step]
    lines = a if axis == 0 else a.transpose(1, 0, 2)
    return np.ascontiguousarray(lines) if samples else lines


def _uniform_runs(lines: np.ndarray, cfg: PanelsConfig) -> list[tuple[int, int, np.ndarray]]:
    """(start, end, colour) of runs of uniform lines of one colour."""
    mean = lines.mean(axis=1, dtype=np.float32)
    dev = channel_max(np.abs(lines - mean.round().astype(np.int16)[:, None, :]))
    uniform = (dev <= cfg.uniform_tolerance).mean(axis=1) >= cfg.uniform_fraction
    jump = np.zeros(len(lines), bool)
    jump[1:] = np.abs(np.diff(mean, axis=0)).max(axis=1) > cfg.colour_tolerance / 2
    runs: list[tuple[int, int, np.ndarray]] = []
    start = None
    for i in range(len(lines) + 1):
        ends = i == len(lines) or not uniform[i] or jump[i]
        if ends and start is not None:
            colour = mean[start:i].mean(axis=0)
            prev = runs[-1] if runs else None
            if prev and start - prev[1] <= _BRIDGE and np.abs(prev[2] - colour).max() <= cfg.colour_tolerance:
                runs[-1] = (prev[0], i, (prev[2] + colour) / 2)
            else:
                runs.append((start, i, colour))
            start = None
        if i < len(lines) and uniform[i] and start is None:
            start = i
    return _absorb_blurred_edges(runs, cfg)


def _absorb_blurred_edges(runs: list[tuple[int, int, np.ndarray]], cfg: PanelsConfig) -> list[tuple[int, int, np.ndarray]]:
    """A line or two of in-between colour right at a wider run (JPEG or resampling blur at a
    gutter's edge) belongs to that run."""
    out = list(runs)
    changed = True
    while changed:
        changed = False
        for k in range(len(out)):
            s, e, c = out[k]
            if e - s > 2:
                continue
            for j in (k - 1, k + 1):
                if 0 <= j < len(out):
                    s2, e2, c2 = out[j]
                    touching = s - e2 <= 1 if j < k else s2 - e <= 1
                    if touching and e2 - s2 > e - s and np.abs(c2 - c).max() <= 2 * cfg.colour_tolerance:
                        out[j] = (min(s, s2), max(e, e2), c2)
                        del out[k]
                        changed = True
                        break
            if changed:
                break
    return out


def _near(line: np.ndarray, colour: np.ndarray, cfg: PanelsConfig) -> float:
    return float((channel_max(np.abs(line - colour.astype(np.int16))) <= cfg.uniform_tolerance).mean())


def _continues(lines: np.ndarray, edge: int, step: int, colour: np.ndarray, cfg: PanelsConfig) -> bool:
    """Whether ``colour`` covers much of the first line beside a run (the run is background).

    Lines right at the run that are still mostly its colour are its JPEG-blurred edge: skipped."""
    index = edge
    for _ in range(2):
        if 0 <= index < len(lines) and _near(lines[index], colour, cfg) >= cfg.uniform_fraction * 0.6:
            index += step
    index += step  # one line further: the first line beside a gutter may be blended with it
    if not 0 <= index < len(lines):
        return False
    return _near(lines[index], colour, cfg) >= cfg.continuation_max


def _separators(lines: np.ndarray, runs, cfg: PanelsConfig) -> tuple[list[_Band], list[np.ndarray]]:
    """(separators, background colours) among ``runs`` (of ``lines``): runs whose colour stops at
    both sides, and the colours of those whose colour continues into the content beside them."""
    length = len(lines)
    if runs and runs[0][0] == 0 and runs[0][1] == length:
        raise PanelDetectionError("blank image (no structure at all)")
    out, background = [], []
    for s, e, colour in runs:
        if _continues(lines, s - 1, -1, colour, cfg) or _continues(lines, e, 1, colour, cfg):
            background.append(colour)
            continue
        out.append(_Band(s, e, tuple(float(c) for c in colour), s == 0, e == length))
    return out, background


def _trim_borders(
    bands: list[_Band], lo: int, hi: int, cfg: PanelsConfig, sides: tuple[bool, bool] = (True, True)
) -> tuple[int, int, list[_Band]]:
    """(lo, hi, interior bands): separators at the edges (and directly inside them) are borders."""
    limit = cfg.max_border_fraction * (hi - lo)
    inner = list(bands)
    start, end = lo, hi

    def framing(band: _Band, first: bool) -> bool:
        # The outermost band is a border; one right inside it (a frame, then a margin) only when the
        # opposite edge shows that colour too: else it is a panel's own background.
        if band.start == start if first else band.end == end:
            return True
        opposite = [o for o in bands if (o.start >= end - limit if first else o.end <= start + limit)]
        return any(_same_colour(band.colour, o.colour, cfg) for o in opposite)

    while sides[0] and inner and inner[0].start <= lo + 1 and inner[0].end - start <= limit and framing(inner[0], True):
        lo = inner.pop(0).end
    while sides[1] and inner and inner[-1].end >= hi - 1 and end - inner[-1].start <= limit and framing(inner[-1], False):
        hi = inner.pop().start
    # A band left at an edge (no border) stays: it is no gutter, and no fit may ignore it.
    return lo, hi, [b for b in inner if b.width >= cfg.min_gutter_px and lo <= b.start and b.end <= hi]


def _same_colour(a: tuple[float, ...], b: tuple[float, ...], cfg: PanelsConfig) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) <= cfg.colour_tolerance


@dataclass(frozen=True, slots=True)
class _Fit:
    segments: tuple[tuple[int, int], ...] = ()
    error: str = ""


def _fit_gutters(gutters: list[_Band], lo: int, hi: int, n: int, cfg: PanelsConfig) -> _Fit:
    """Segments between ``gutters`` when they are the ``n - 1`` gutters of an even-ish split."""
    pitch = (hi - lo) / n
    if pitch < cfg.min_panel_size:
        return _Fit(error=f"content of {hi - lo} px is too small for {n} panels of >= {cfg.min_panel_size} px")
    if len(gutters) != n - 1:
        return _Fit(error=f"{len(gutters)} gutter(s) where {n - 1} expected")
    edges = [lo]
    for i, band in enumerate(gutters, 1):
        expected = lo + i * pitch
        off = max(0.0, band.start - expected, expected - band.end)
        if off > cfg.gutter_tolerance * pitch:
            return _Fit(error=f"gutter at {band.start}-{band.end} px is {off:.0f} px off the even split (uneven panels)")
        if band.width > cfg.max_gutter_fraction * pitch:
            return _Fit(error=f"gutter at {band.start}-{band.end} px is wider than {cfg.max_gutter_fraction} panel")
        edges += [band.start, band.end]
    edges.append(hi)
    segments = tuple((edges[2 * i], edges[2 * i + 1]) for i in range(n))
    small = [b - a for a, b in segments if b - a < cfg.min_panel_size]
    if small:
        return _Fit(error=f"panel of {small[0]} px is below min_panel_size={cfg.min_panel_size}")
    if _spread(segments) > cfg.max_panel_spread:  # the teacher draws equal panels: bands in the wrong places
        sizes = ", ".join(str(b - a) for a, b in segments)
        return _Fit(error=f"panels of {sizes} px differ by more than panels.max_panel_spread={cfg.max_panel_spread}")
    return _Fit(segments=segments)


def _boxes(row_segs, col_segs_per_row) -> tuple[Box, ...]:
    return tuple(
        Box(x0, y0, x1, y1) for (y0, y1), cols in zip(row_segs, col_segs_per_row, strict=True) for x0, x1 in cols
    )


def _colour_name(colour: tuple[float, ...]) -> str:
    return "rgb(" + ",".join(str(round(c)) for c in colour) + ")"


class _Grid:
    """One image's line statistics, shared by the gutter and edge analyses."""

    def __init__(self, arr: np.ndarray, rows: int, cols: int, cfg: PanelsConfig) -> None:
        self.a = arr.astype(np.int16)
        self.rows, self.cols, self.cfg = rows, cols, cfg
        self.h, self.w = arr.shape[:2]
        self.n = (rows, cols)
        self.span = ((0, self.h), (0, self.w))
        crop = (0, self.h, 0, self.w)
        for _ in range(3):  # again with lines judged across the content only (inside the borders found)
            self.seps, self.trim = self._analyse(*crop)
            (y0, y1, _), (x0, x1, _) = self.trim
            if (y0, y1, x0, x1) == crop or y1 - y0 < 3 or x1 - x0 < 3:
                break
            crop = (y0, y1, x0, x1)
        # A uniform band wider than a gutter can be (a panel's flat margin, e.g. between touching
        # flat panels) is no gutter candidate: it neither separates panels nor contradicts a layout.
        self.seps = tuple(self._gutter_sized(self.seps[i], i) for i in (0, 1))
        self.trim = tuple((t[0], t[1], self._gutter_sized(t[2], i)) for i, t in enumerate(self.trim))

    def lines(self, axis: int) -> np.ndarray:
        """The whole image's sampled lines along ``axis`` (``_lines(a, axis, _SAMPLES)``), built once."""
        cache = self.__dict__.setdefault("_lines", {})
        if axis not in cache:
            cache[axis] = _lines(self.a, axis, _SAMPLES)
        return cache[axis]

    def profile(self, axis: int) -> np.ndarray:
        """The edge profile of the whole image along ``axis`` (panel_verify.edge_profile), computed once."""
        cache = self.__dict__.setdefault("_profiles", {})
        if axis not in cache:
            cache[axis] = edge_profile(self.lines(axis), self.cfg)
        return cache[axis]

    def n_px(self, axis: int) -> int:
        return self.h if axis == 0 else self.w

    def _gutter_sized(self, bands: list[_Band], axis: int) -> list[_Band]:
        (lo, hi, _), n = self.trim[axis], self.n[axis]
        limit = self.cfg.max_gutter_fraction * (hi - lo) / n
        return [b for b in bands if b.touches_start or b.touches_end or b.width <= limit]

    def _not_background(self, bands: list[_Band], background: list[np.ndarray], frame: list[_Band]) -> list[_Band]:
        """A colour that is some panel's background (it continues into content somewhere) cannot be
        told from a margin of that background anywhere else: only other colours separate, and a
        ``frame`` (the same band on all four sides: a panel's own colour does not frame the grid evenly)."""
        return [b for b in bands if b in frame or not any(_same_colour(b.colour, tuple(c), self.cfg) for c in background)]

    def _frame(self, rows: list[_Band], cols: list[_Band]) -> list[_Band]:
        """The bands at the four image edges when they are one colour and one width (within _FRAME_PX)."""
        sides = [next((b for b in bands if (b.touches_start if first else b.touches_end)), None)
                 for bands in (rows, cols) for first in (True, False)]  # fmt: skip
        if any(b is None for b in sides):
            return []
        widths = [b.width for b in sides]
        if max(widths) - min(widths) > _FRAME_PX or not all(_same_colour(b.colour, sides[0].colour, self.cfg) for b in sides):
            return []
        return sides

    def _analyse(self, y0: int, y1: int, x0: int, x1: int):
        """Separators of rows measured between columns x0:x1, of columns between rows y0:y1."""
        full_x, full_y = (x0, x1) == (0, self.w), (y0, y1) == (0, self.h)
        rows = self.lines(0) if full_x else _lines(self.a[:, x0:x1], 0, _SAMPLES)
        cols = self.lines(1) if full_y else _lines(self.a[y0:y1], 1, _SAMPLES)
        row_runs, col_runs = _uniform_runs(rows, self.cfg), _uniform_runs(cols, self.cfg)
        found = (_separators(rows, row_runs, self.cfg), _separators(cols, col_runs, self.cfg))
        background, frame = found[0][1] + found[1][1], self._frame(found[0][0], found[1][0])
        seps = tuple(self._not_background(found[i][0], background, frame) for i in (0, 1))
        return seps, (_trim_borders(seps[0], 0, self.h, self.cfg), _trim_borders(seps[1], 0, self.w, self.cfg))


@dataclass(frozen=True, slots=True)
class _AxisGutters:
    fit: _Fit  # segments when some colour's gutters fit the layout, else the error
    shown: int  # panels the image shows along the axis (gutters of the best colour + 1)
    colour: tuple[float, ...] | None = None


def _spread(segments: tuple[tuple[int, int], ...]) -> float:
    sizes = [b - a for a, b in segments]
    return (max(sizes) - min(sizes)) / max(1, max(sizes))


def _colour_groups(bands: list[_Band], cfg: PanelsConfig) -> list[list[_Band]]:
    groups: list[list[_Band]] = []
    for band in bands:
        group = next((g for g in groups if _same_colour(g[0].colour, band.colour, cfg)), None)
        if group is None:
            groups.append([band])
        else:
            group.append(band)
    return groups


def _axis_gutters(bands: list[_Band], lo: int, hi: int, n: int, cfg: PanelsConfig) -> _AxisGutters:
    """The gutters of one axis. Separators are grouped by colour (a grid's gutters share one); a
    band at an edge may be a border or a panel's background reaching the edge, so each reading is
    tried and the one that fits with the most equal panels wins. Without a fit, the largest group
    (borders trimmed) says what the image shows."""
    best: tuple[float, _Fit, list[_Band]] | None = None
    full_lo, full_hi, _ = _trim_borders(bands, lo, hi, cfg)
    edge_bands = ([x for x in bands if x.end <= full_lo], [x for x in bands if x.start >= full_hi])
    for sides in ((True, True), (False, False), (True, False), (False, True)):
        a, b, inner = _trim_borders(bands, lo, hi, cfg, sides)
        for group in _colour_groups(inner, cfg) or [[]]:
            kept = [x for side in (0, 1) if not sides[side] for x in edge_bands[side]]
            if group and any(_same_colour(x.colour, group[0].colour, cfg) for x in kept):
                continue  # a band of the gutters' colour at the edge is a border
            fit = _fit_gutters(group, a, b, n, cfg)
            # Borders trimmed is the first reading; another wins only with clearly more equal panels.
            if not fit.error and (best is None or _spread(fit.segments) < best[0] - 0.05):
                best = (_spread(fit.segments), fit, group)
    if best is not None:
        return _AxisGutters(best[1], n, best[2][0].colour if best[2] else None)
    a, b, inner = _trim_borders(bands, lo, hi, cfg)
    groups = _colour_groups(inner, cfg)
    if not groups:
        return _AxisGutters(_fit_gutters([], a, b, n, cfg), 1)
    group = max(groups, key=len)
    return _AxisGutters(_fit_gutters(group, a, b, n, cfg), len(group) + 1, group[0].colour)


def _strip_fit(g: _Grid, axis: int, strips, n: int) -> tuple[list[_Fit], list[int]]:
    """Fit the other axis inside each strip of ``axis`` (staggered gutters); per-strip panel counts."""
    other = 1 - axis
    fits, counts = [], []
    for a0, a1 in strips:
        region = g.a[a0:a1] if axis == 0 else g.a[:, a0:a1]
        span = (g.trim[other][0], g.trim[other][1])
        region = region[span[0] : span[1]] if other == 0 else region[:, span[0] : span[1]]
        lines = _lines(region, other, _SAMPLES)
        seps = [_Band(b.start + span[0], b.end + span[0], b.colour, b.touches_start, b.touches_end)
                for b in _separators(lines, _uniform_runs(lines, g.cfg), g.cfg)[0]]  # fmt: skip
        found = _axis_gutters(seps, span[0], span[1], n, g.cfg)
        counts.append(found.shown if found.fit.error else n)
        fits.append(found.fit)
    return fits, counts


def _describe(ax: tuple[_AxisGutters, _AxisGutters]) -> str:
    parts = []
    for name, a in zip(("rows", "columns"), ax, strict=True):
        colour = f" ({_colour_name(a.colour)})" if a.colour else ""
        parts.append(f"{a.shown - 1} gutter(s) between {name}{colour}")
    return ", ".join(parts)


def _by_gutters(g: _Grid) -> Detection | None:
    """Detection from gutters; None when the image shows no gutter at all; raises on a contradiction."""
    ax = tuple(_axis_gutters(g.seps[i], *g.span[i], g.n[i], g.cfg) for i in (0, 1))
    if not g.trim[0][2] and not g.trim[1][2]:
        return None
    if not ax[0].fit.error and not ax[1].fit.error:
        segs = (ax[0].fit.segments, ax[1].fit.segments)
        margin = _margin_as_gutter(g, 0, ax[0]) or _margin_as_gutter(g, 1, ax[1]) or _gutter_doubt(g, segs)
        if margin:
            raise PanelDetectionError(f"cannot cut the grid into {g.rows}x{g.cols} panels: {margin}")
        return Detection(_boxes(segs[0], [segs[1]] * g.rows), "gutters", 1.0, "gutters: " + _describe(ax))
    for axis in (0, 1):
        other = 1 - axis
        if ax[axis].fit.error or ax[other].shown > 1 or g.n[other] == 1:
            continue
        staggered = _staggered(g, axis, ax[axis].fit.segments)
        if staggered is not None:
            return staggered
    shown = (ax[0].shown, ax[1].shown)
    if shown != g.n and not _plausible(g, shown):
        return None  # bands that form no grid at all (flat margins of touching panels): try edges
    if shown != g.n:
        raise PanelCountMismatch(g.rows * g.cols, shown[0] * shown[1], g.rows, g.cols,
                                 f"{shown[0]}x{shown[1]}: " + _describe(ax), shown=shown)  # fmt: skip
    error = next(a.fit.error for a in ax if a.fit.error)
    raise PanelDetectionError(f"cannot cut the grid into {g.rows}x{g.cols} panels: {error}")


def _margin_as_gutter(g: _Grid, axis: int, found: _AxisGutters) -> str:
    """Why a fitted gutter is a touching flat panel's margin ("" when none is): its colour fills much
    of a panel beside it (that panel's background; a gutter's colour stands apart from the panels)."""
    if found.colour is None:
        return ""
    colour = np.round(found.colour).astype(np.int16)
    across = slice(g.trim[1 - axis][0], g.trim[1 - axis][1], 4)
    segs = found.fit.segments
    for (a0, a1), (b0, b1) in zip(segs, segs[1:], strict=False):
        for p0, p1 in ((a0, a1), (b0, b1)):
            panel = g.a[p0:p1:4, across] if axis == 0 else g.a[across, p0:p1:4]
            share = float((channel_max(np.abs(panel - colour)) <= g.cfg.uniform_tolerance).mean())
            if share >= 0.3:
                return (f"the band at {a1}-{b0} px has the colour of the panel beside it ({share:.0%} of it): "
                        "a flat panel's margin, not a gutter")  # fmt: skip
    return ""


def _gutter_doubt(g: _Grid, segs) -> str:
    """Why the fitted gutters may be misplaced ("" when they are sure). A gutter whose colour goes on
    into a panel beside it (a white wall next to a white gutter) may have swallowed that panel's
    side: its width must then match the clean gutters' (colour stopping sharply on both sides). A
    lone gutter whose colour shows nowhere else (no other gutter or border) may be a flat strip of
    a photo: unless it cuts equal panels (the teacher draws equal panels), it must be neutral (white,
    grey, black) with no seam of touching photos running beside it; coloured gutters cutting unequal
    panels must have no such seam beside them either (``_strips_beside_seams``)."""
    cfg, gaps = g.cfg, []
    f = [g.profile(0), g.profile(1)]
    for axis in (0, 1):
        across = slice(g.trim[1 - axis][0], g.trim[1 - axis][1], 2)
        for (_, a1), (b0, _) in zip(segs[axis], segs[axis][1:], strict=False):
            band = g.a[a1:b0, across] if axis == 0 else g.a[across, a1:b0].transpose(1, 0, 2)
            colour = band.reshape(-1, 3).mean(axis=0)
            clean = all(_clean_side(g, axis, across, colour, x, f[axis], step) for x, step in ((a1, -1), (b0, 1)))
            gaps.append((axis, a1, b0, colour, clean))
    why = _border_doubt(g, f) or _lone_border_doubt(g, segs)
    if why:
        return why
    ref = [b0 - a1 for _, a1, b0, _, clean in gaps if clean]
    for _axis, a1, b0, _, clean in gaps:
        if not clean and (not ref or abs(b0 - a1 - float(np.median(ref))) > 3):
            return (f"the gutter at {a1}-{b0} px has the colour of a panel's side beside it, and no clean gutter "
                    "confirms its width: it may hold part of that panel")  # fmt: skip
    borders = [b.colour for ax_ in g.seps for b in ax_ if b.touches_start or b.touches_end]
    if len(gaps) == 1 and not any(_same_colour(tuple(gaps[0][3]), c, cfg) for c in borders):
        axis = gaps[0][0]
        neutral = float(np.ptp(gaps[0][3])) <= cfg.colour_tolerance  # white, grey, black: a gutter's colours
        if _spread(segs[axis]) > cfg.max_edge_spread and (not neutral or _seam_beside(g, axis, gaps[0][1], gaps[0][2])):
            sizes = ", ".join(str(b - a) for a, b in segs[axis])
            return (f"a lone band at {gaps[0][1]}-{gaps[0][2]} px, its colour nowhere else in the grid, cuts unequal "
                    f"panels ({sizes} px): a flat strip of a photo, not a gutter")  # fmt: skip
    return _strips_beside_seams(g, _boxes(segs[0], [segs[1]] * g.rows))


def _strips_beside_seams(g: _Grid, boxes: tuple[Box, ...]) -> str:
    """Why coloured gutters that cut unequal panels may be photos' flat strips ("" when they may not): the
    seam of touching photos runs beside one of them (two strips of one colour near two seams look like
    the gutters of a 3x1). A gutter's colours are white, grey and black; a drawn coloured one cuts equal panels."""
    for axis in (0, 1):
        segs = sorted({(b.y0, b.y1) if axis == 0 else (b.x0, b.x1) for b in boxes})
        if _spread(tuple(segs)) <= g.cfg.max_edge_spread:
            continue
        across = slice(g.trim[1 - axis][0], g.trim[1 - axis][1], 2)
        for (_, a1), (b0, _) in zip(segs, segs[1:], strict=False):
            band = g.a[a1:b0, across] if axis == 0 else g.a[across, a1:b0]
            neutral = b0 <= a1 or float(np.ptp(band.reshape(-1, 3).mean(axis=0))) <= g.cfg.colour_tolerance
            if not neutral and _seam_beside(g, axis, a1, b0):
                sizes = ", ".join(str(b - a) for a, b in segs)
                return (f"the coloured band at {a1}-{b0} px, with the seam of touching photos beside it, cuts unequal "
                        f"panels ({sizes} px): a flat strip of a photo, not a gutter")  # fmt: skip
    return ""


def flat_share(lines: np.ndarray) -> np.ndarray:
    """Per line, the share of its pixels within 1 level of its median: 1 for a drawn line, less with grain."""
    median = np.median(lines, axis=1, keepdims=True)
    return (channel_max(np.abs(lines - median)) <= 1).mean(axis=1)


def odd_border(widths: dict[tuple[int, bool], int]) -> tuple[tuple[int, bool], int] | None:
    """(side, the others' width) of the one border wider than all the others, which agree (three sides at
    least; sides are (axis, at the start)), or None. The teacher frames a grid evenly: the extra lines may
    be the flat side of the panel beside it (a product shot's white ground beside a white border, cut off
    by a flat strip of the photo), unless they are drawn (see ``extra_drawn``)."""
    for side, width in widths.items():
        others = [w for o, w in widths.items() if o != side]
        if len(others) >= 2 and max(others) - min(others) <= _AGREE_PX and width - max(others) > _AGREE_PX:
            return side, min(others)
    return None


def extra_drawn(lines: np.ndarray, s: int, e: int, agreed: int, first: bool) -> bool:
    """Whether the lines of border run ``s:e`` beyond the others' width ``agreed`` are drawn (exactly flat)."""
    extra = lines[s + agreed : e] if first else lines[s : e - agreed]
    return bool((flat_share(extra) >= _FLAT_SHARE).all())


def _border_doubt(g: _Grid, f: list[np.ndarray]) -> str:
    """Why a trimmed border may hold part of a panel ("" when none may): a border whose colour does
    not stop cleanly at the panel (a white wall beside a white border) must be as wide as a clean
    border on another side (within _AGREE_PX), and a border wider than all the others (``odd_border``)
    must be drawn; the teacher frames a grid evenly."""
    (y0, y1, _), (x0, x1, _) = g.trim
    sides = {}  # (axis, at the start) -> (width, clean, run)
    for axis, lo, hi in ((0, y0, y1), (1, x0, x1)):
        across = slice(g.trim[1 - axis][0], g.trim[1 - axis][1], 2)
        for edge, step, width in ((lo, 1, lo), (hi, -1, g.n_px(axis) - hi)):
            if width >= g.cfg.min_gutter_px:
                band = slice(0, lo) if step > 0 else slice(hi, None)
                strip = g.a[band, across] if axis == 0 else g.a[across, band]
                colour = strip.reshape(-1, 3).mean(axis=0)
                # _clean_side looks outwards from a gutter: here from the border into the panel
                run = (0, lo) if step > 0 else (hi, g.n_px(axis))
                sides[(axis, step > 0)] = (width, _clean_side(g, axis, across, colour, edge, f[axis], step), run)
    clean = [w for w, ok, _ in sides.values() if ok]
    for width, ok, _ in sides.values():
        if not ok and not any(abs(width - w) <= _AGREE_PX for w in clean):
            return (f"a border {width} px wide has the colour of the panel beside it and no clean border of its "
                    "width confirms it: it may hold part of that panel")  # fmt: skip
    odd = odd_border({side: v[0] for side, v in sides.items()})
    if odd and not extra_drawn(g.lines(odd[0][0]), *sides[odd[0]][2], odd[1], odd[0][1]):
        return (f"a border {sides[odd[0]][0]} px wide where the others are {odd[1]} px, its extra lines not drawn: "
                "it may hold the flat side of the panel beside it")  # fmt: skip
    return ""


def _lone_border_doubt(g: _Grid, segs) -> str:
    """Why a border trimmed at one side only may be a panel's own flat side ("" when it may not): the
    teacher frames a grid on every side and draws equal panels, so a band at one edge that leaves
    unequal panels as a border, but equal ones as part of the panel beside it, is that panel's."""
    trimmed = [(axis, first) for axis, (lo, hi, _) in enumerate(g.trim)
               for first, width in ((True, lo), (False, g.n_px(axis) - hi)) if width > 0]  # fmt: skip
    if len(trimmed) != 1:
        return ""
    axis, first = trimmed[0]
    own = list(segs[axis])
    own[0 if first else -1] = (0, own[0][1]) if first else (own[-1][0], g.n_px(axis))
    width = g.trim[axis][0] if first else g.n_px(axis) - g.trim[axis][1]
    if not (width > _BAND_PX and _unequal_px(own) <= _EQUAL_PX < _unequal_px(segs[axis])):
        return ""
    sizes = ", ".join(str(b - a) for a, b in segs[axis])
    return (f"a band at one edge only, trimmed as a border, leaves unequal panels ({sizes} px): "
            "it may be a panel's own flat side")  # fmt: skip


def _unequal_px(segments) -> int:
    sizes = [b - a for a, b in segments]
    return max(sizes) - min(sizes)


def _clean_side(g: _Grid, axis: int, across: slice, colour: np.ndarray, x: int, f: np.ndarray, step: int) -> bool:
    """Whether the gutter's colour stops at its side ``x`` (``step``: outwards) across the span: a few
    lines out it is gone (blur of resampling or JPEG allowed), and it stops sharply, not like a wall
    fading into the gutter's colour: a sharp edge in the profile ``f``, or a jump of more than twice
    the uniform tolerance within three lines."""
    def line(i: int) -> np.ndarray:
        i = min(max(0, i), g.n_px(axis) - 1)
        return g.a[i, across] if axis == 0 else g.a[across, i]

    outside = x - 1 if step < 0 else x  # the first line beside the gutter
    if _near(line(outside + 3 * step), colour, g.cfg) > 0.2:
        return False
    if float(f[max(0, x - 2) : x + 3].max(initial=0)) >= g.cfg.min_edge_fraction:
        return True
    inside = x if step < 0 else x - 1  # the gutter's line at that side
    far = channel_max(np.abs(line(outside + 2 * step) - line(inside))) > 2 * g.cfg.uniform_tolerance
    return float(far.mean()) >= 0.5


def _seam_beside(g: _Grid, axis: int, a1: int, b0: int, reach: int = 40) -> bool:
    """Whether a straight colour edge across the span runs parallel to the band [a1, b0) within
    ``reach`` px of it (the real seam of touching photos next to a flat strip of one of them)."""
    lo, hi = max(0, a1 - reach), min(g.n_px(axis), b0 + reach)
    region = g.a[lo:hi, g.trim[1][0] : g.trim[1][1]] if axis == 0 else g.a[g.trim[0][0] : g.trim[0][1], lo:hi]
    f = edge_profile(_lines(region, axis, 2 * _SAMPLES), g.cfg)
    keep = np.ones(len(f), bool)
    keep[max(0, a1 - lo - 3) : b0 - lo + 4] = False  # the band's own two edges
    return bool((f[keep] >= g.cfg.min_edge_fraction).any())


def _plausible(g: _Grid, shown: tuple[int, int]) -> bool:
    """Whether the gutters seen form a grid of ``shown`` panels themselves (evenly spaced): only
    then do they contradict the layout; stray bands in no grid pattern are no visible structure."""
    return all(not _axis_gutters(g.seps[i], *g.span[i], shown[i], g.cfg).fit.error for i in (0, 1))


def _staggered(g: _Grid, axis: int, strips: tuple[tuple[int, int], ...]) -> Detection | None:
    """One axis has full-span gutters, the other none: its gutters may be staggered, strip by strip.
    None when the strips do not all fit (the full-span structure then says what the image shows)."""
    strip_fits, counts = _strip_fit(g, axis, strips, g.n[1 - axis])
    name = "rows" if axis == 0 else "columns"
    if any(f.error for f in strip_fits):
        if len(set(counts)) > 1 and sum(counts) != g.rows * g.cols:  # e.g. two panels above, one below
            raise PanelCountMismatch(g.rows * g.cols, sum(counts), g.rows, g.cols,
                                     f"the {len(strips)} strips between {name} show {counts} panels")  # fmt: skip
        return None
    segs = [f.segments for f in strip_fits]
    if axis == 0:
        boxes = _boxes(strips, segs)
    else:  # column strips, each cut into rows: regroup row-major
        boxes = tuple(Box(x0, s[r][0], x1, s[r][1]) for r in range(g.rows)
                      for (x0, x1), s in zip(strips, segs, strict=True))  # fmt: skip
    return Detection(boxes, "gutters", 0.9, f"gutters staggered: each strip between {name} cut on its own")


def _by_colour(g: _Grid) -> Detection | None:
    """Gutters found by their colour (datagen/panel_colour.py), verified; None when none are sure."""
    from .panel_colour import by_gutter_colour  # it builds on this module's line statistics

    found = by_gutter_colour(g)
    if found is None or _strips_beside_seams(g, found.boxes):
        return None
    try:
        verify(g.a, found, g.rows, g.cols, g.cfg)
    except PanelDetectionError:
        return None
    return found


def analyse_grid(arr: np.ndarray, rows: int, cols: int, cfg: PanelsConfig) -> Detection:
    """Panel boxes of an RGB uint8 array (see the module docstring); raises PanelDetectionError."""
    from .panel_edges import by_edges  # it builds on this module's line statistics

    grid = _Grid(arr, rows, cols, cfg)
    try:
        found = _by_gutters(grid)
    except PanelCountMismatch:
        raise
    except PanelDetectionError as gutter_error:
        # Gutters the separator analysis lost may show by their colour; bands that fit no gutter
        # layout may be touching panels' flat margins (a flat panel's background beside a busy
        # one): colour edges may still cut, on their own confidence only (a real gutter's two
        # sides are equally strong edges; evenness must not pick one).
        by_colour = _by_colour(grid)
        if by_colour is not None:
            return by_colour
        try:
            found = by_edges(grid, even_cue=False)
            verify(grid.a, found, rows, cols, cfg)
            return found
        except PanelDetectionError:
            raise gutter_error from None
    if found is None:
        found = _by_colour(grid)
        if found is not None:
            return found
        found = by_edges(grid)
    verify(grid.a, found, rows, cols, cfg)
    return found
