"""Gutters found by their colour: the second look of datagen/panel_detect.py at a grid whose gutters
the separator analysis lost (a white gutter beside a white studio wall makes white "background",
and every white band is then dropped; a black gutter beside a dark photo likewise).

For a candidate gutter colour (white, black, and the colours of uniform bands near where the
layout expects gutters), each axis is read as lines that are (nearly) all of that colour across
the grid. Runs of such lines are the borders (at the ends) and gutters (inside). A run's side is
*clean* when the colour stops there, sharply, across most of the span. A gutter or border with a
side that is not clean may have swallowed the side of a panel of its colour: its width is then
taken from the clean ones (all clean gutters of the grid must agree on one width, and all clean
borders on one) and placed at its clean side; with no clean gutter to go by, the run itself stands
(it cannot be narrower than the gutter) if the panels come out equal to 2 px. Anything else unsure
(no clean side, a run narrower than the width it should have, too many or too few runs) finds
nothing, and the grid goes on to colour edges.
"""

from __future__ import annotations

import numpy as np

from .panel_detect import _boxes, _Grid, _same_colour, _uniform_runs
from .panel_types import Detection
from .panel_verify import channel_max

_CLEAN_NEAR = 0.5  # the colour covers at most this share of the line beside a clean side
_AGREE_PX = 3
_EXACT_PX = 2  # panels beside a gutter placed by equal sizes alone differ by at most this (rounding)
_BORDER_SHARE = 0.6  # lines at the image's ends this much of the colour are border (a subject may cross it)  # clean gutters (borders) of one grid agree on their width within this


def _candidates(g: _Grid) -> list[np.ndarray]:
    colours = [np.array((255.0, 255.0, 255.0)), np.array((0.0, 0.0, 0.0))]
    for axis in (0, 1):
        n, length = g.n[axis], g.n_px(axis)
        lines = g.lines(axis)
        for s, e, colour in _uniform_runs(lines, g.cfg):
            near_slot = any(abs((s + e) / 2 - i * length / n) <= g.cfg.gutter_tolerance * length / n for i in range(1, n))
            if (near_slot or s == 0 or e == length) and not any(_same_colour(tuple(colour), tuple(c), g.cfg) for c in colours):
                colours.append(colour)
    return colours


def _near_share(lines: np.ndarray, colour: np.ndarray, tol: int) -> np.ndarray:
    return (channel_max(np.abs(lines - colour.astype(np.int16))) <= tol).mean(axis=1)


class _Axis:
    """One axis read for one colour: runs of lines of that colour, and which of their sides are clean."""

    def __init__(self, g: _Grid, axis: int, colour: np.ndarray) -> None:
        lines = g.lines(axis)
        self.share = _near_share(lines, colour, g.cfg.uniform_tolerance)
        self.f = g.profile(axis)
        self.length = len(lines)
        mask = self.share >= g.cfg.uniform_fraction
        # A border may be crossed by a subject running into it: at the ends, lines mostly of the colour
        outer = self.share >= _BORDER_SHARE
        lead = int(np.argmin(outer)) if not outer.all() else self.length
        trail = int(np.argmin(outer[::-1])) if not outer.all() else self.length
        mask[:lead], mask[self.length - trail :] = True, True
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
        self.runs = [(int(s), int(e)) for s, e in zip(edges[::2], edges[1::2], strict=True)]
        self.cfg = g.cfg

    def clean(self, x: int, outwards: int) -> bool:
        """Whether the colour stops cleanly at side ``x`` of a run (``outwards``: -1 before, +1 after)."""
        beside = x - 1 if outwards < 0 else x
        if not 0 <= beside < self.length:
            return False
        out2 = min(max(0, beside + outwards), self.length - 1)
        if max(self.share[beside], self.share[out2]) > _CLEAN_NEAR and self.share[out2] > _CLEAN_NEAR:
            return False
        return float(self.f[max(0, x - 2) : x + 3].max(initial=0)) >= self.cfg.min_edge_fraction

    def layout(self, n: int):
        """(borders, gutters) as lists of (start, end, clean_start, clean_end), or None."""
        pitch = self.length / n
        borders, gutters = [], []
        for s, e in self.runs:
            if s == 0 or e == self.length:
                if e - s > self.cfg.max_border_fraction * self.length:
                    return None
                borders.append((s, e, s == 0 or self.clean(s, -1), e == self.length or self.clean(e, 1)))
                continue
            slot = round((s + e) / 2 / pitch)
            off = abs((s + e) / 2 - slot * pitch)
            if not 1 <= slot < n or off > self.cfg.gutter_tolerance * pitch or e - s > self.cfg.max_gutter_fraction * pitch:
                if e - s >= self.cfg.min_gutter_px:
                    return None  # a band of the colour across the grid where no gutter belongs
                continue
            gutters.append((s, e, self.clean(s, -1), self.clean(e, 1)))
        for at, touches in ((0, any(b[0] == 0 for b in borders)), (self.length - 1, any(b[1] == self.length for b in borders))):
            if not touches and self.share[at] >= _CLEAN_NEAR:
                return None  # much of the colour at the image's edge, but no border of it: unsure where it ends
        if len(gutters) != n - 1 or len({round((s + e) / 2 / pitch) for s, e, _, _ in gutters}) != n - 1:
            return None
        return borders, gutters


def _unexplained_edge(g: _Grid, axis: int, borders) -> bool:
    """Whether the image's first or last line along ``axis`` is uniform (a border of another colour,
    or a flat edge) where this colour shows no border: the panel there would start unsure."""
    length = g.n_px(axis)
    for at, touches in ((0, any(b[0] == 0 for b in borders)), (length - 1, any(b[1] == length for b in borders))):
        line = g.a[at, ::2] if axis == 0 else g.a[::2, at]
        mean = line.mean(axis=0)
        uniform = float((channel_max(np.abs(line - mean)) <= g.cfg.uniform_tolerance).mean()) >= g.cfg.uniform_fraction
        if uniform and not touches:
            return True
    return False


def _agreed(widths: list[int]) -> int | None:
    if not widths or max(widths) - min(widths) > _AGREE_PX:
        return None
    return int(round(float(np.median(widths))))


def _place(run, width: int | None) -> tuple[int, int] | None:
    """The run itself when both sides are clean, else ``width`` at its clean side (None when unsure)."""
    s, e, cs, ce = run
    if cs and ce:
        return s, e
    if width is None or not (cs or ce) or e - s < width - 1:
        return None
    return (s, s + width) if cs else (e - width, e)


def _segments(ax: _Axis, n: int, borders, gutters, gw: int | None, bw: int | None):
    lo, hi, exact = 0, ax.length, False
    for b in borders:
        placed = _place(b, bw)
        if placed is None:
            return None
        if b[0] == 0:
            lo = placed[1]
        else:
            hi = placed[0]
    edges = [lo]
    for run in sorted(gutters):
        placed = _place(run, gw)
        if placed is None and gw is None and (run[2] or run[3]):
            # No clean gutter to go by: lines mostly of the colour, so the run is no narrower than
            # the gutter, and a panel it swallowed part of comes out smaller: it stands only if
            # the panels are equal to the pixel (the teacher draws equal panels).
            placed, exact = run[:2], True
        if placed is None:
            return None
        edges += list(placed)
    edges.append(hi)
    segs = tuple((edges[2 * i], edges[2 * i + 1]) for i in range(n))
    if exact and max(b - a for a, b in segs) - min(b - a for a, b in segs) > _EXACT_PX:
        return None
    return segs


def by_gutter_colour(g: _Grid) -> Detection | None:
    """Panels between gutters (and inside borders) of one colour, or None (see the module docstring)."""
    for colour in _candidates(g):
        axes = [_Axis(g, axis, colour) for axis in (0, 1)]
        layouts = [ax.layout(g.n[i]) for i, ax in enumerate(axes)]
        if any(lay is None for lay in layouts) or not any(lay[1] for lay in layouts):
            continue
        gutters = [run for lay in layouts for run in lay[1]]
        borders = [run for lay in layouts for run in lay[0]]
        if len(gutters) + len(borders) < 2 or any(_unexplained_edge(g, i, lay[0]) for i, lay in enumerate(layouts)):
            continue  # a lone band of a colour may be a photo's flat strip; an edge line left may be a border
        bw = _agreed([e - s for s, e, cs, ce in borders if cs and ce])
        # gutter widths are inferred per axis (a grid's rows and columns may have different gutters)
        segs = [_segments(ax, g.n[i], *layouts[i], _agreed([e - s for s, e, cs, ce in layouts[i][1] if cs and ce]), bw)
                for i, ax in enumerate(axes)]  # fmt: skip
        if any(s is None for s in segs):
            continue
        sizes = [[b - a for a, b in s] for s in segs]
        inferred = not all(cs and ce for _, _, cs, ce in gutters + borders)
        # a width inferred from the clean gutters must also give equal panels (the teacher draws them)
        spread = g.cfg.max_edge_spread if inferred else g.cfg.max_panel_spread
        if any(min(sz) < g.cfg.min_panel_size or (max(sz) - min(sz)) / max(sz) > spread for sz in sizes):
            continue
        name = "rgb(" + ",".join(str(round(float(c))) for c in colour) + ")"
        how = ", widths of unclean sides from clean ones" if inferred else ""
        return Detection(_boxes(segs[0], [segs[1]] * g.rows), "gutters", 0.9,
                         f"gutters found by colour {name}: {len(gutters)} gutter(s){how}")  # fmt: skip
    return None
