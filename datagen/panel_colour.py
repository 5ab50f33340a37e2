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
(it cannot be narrower than the gutter) if the panels come out equal to 2 px. A side is also clean
where a wall of the colour covers part of it, if the colour stops sharply wherever the panel shows
(the gutter is straight). Anything else unsure (no clean side, a run narrower than the width it
should have, too many or too few runs) finds nothing, and the grid goes on to colour edges.

A border wider than all the others, which agree, that stops cleanly but whose extra lines are not drawn
(exactly flat) takes the others' width, and equal panels must confirm the cut (a product shot's white
ground beside a white border, cut off by a flat strip of the photo, looks like a wider border).

The teacher frames a grid evenly on every side, so runs at the image's edges that frame nothing
(one edge only, or two that fade into the panels) are panels' own content, as is an edge line of
another colour on fewer than three sides; a frame of another colour on all four sides is the
border, and runs touching it are at the edge. Where such a reading could hide a border (a sharp
band on one side, the colour on most edge lines), and for a lone gutter that could be a photo's
flat strip (not neutral, or a seam of touching photos beside it), the panels must come out equal.
A thin run where no gutter belongs that stops cleanly nowhere is a photo's own line.

A run unclean on a side that holds one stretch of *exactly* flat lines (no grain; the lines beside
it all grainy) reaching its clean side is a drawn gutter merged with a grainy panel side of its
colour (a night photo beside a black gutter): the stretch is the gutter, both sides clean. A run
too wide for a gutter, clean on one side only where the layout puts a gutter, is one merged with a
panel: its width comes from the clean gutters. Two unclean runs or more of one width (to a pixel)
that stand on their own may leave the panels a pixel less equal (JPEG blurs a side).

Clean borders must agree on one width (the teacher frames evenly; photos on white ground that stop short of
the image's edges at four depths are no frame). When no reading with borders stands, the runs at the edges
may all be the panels' own ground (``_unframed``): only along three panels or more, where a hidden frame
would widen the outer panels and not the middle one.
"""

from __future__ import annotations

import numpy as np

from .panel_detect import (
    _AGREE_PX,
    _BAND_PX,
    _EQUAL_PX,
    _FLAT_SHARE,
    _boxes,
    _Grid,
    _same_colour,
    _seam_beside,
    _unequal_px,
    _uniform_runs,
    extra_drawn,
    flat_share,
    odd_border,
)
from .panel_types import Detection
from .panel_verify import channel_max

_CLEAN_NEAR = 0.5  # the colour covers at most this share of the line beside a clean side
_EXACT_PX = 2  # panels beside a gutter placed by equal sizes alone differ by at most this (rounding)
_SHOWN_MIN = 0.15  # share of the span where a panel beside a gutter must show (not the gutter's colour)
_STRAY_PX = 6  # a run narrower than this with no clean side near a gutter gives way to a clean one
# a panel's own colour at an image edge: sure, to be confirmed by equal panels where a frame of it
# may hide, or always (a flat edge line of another colour)
_SURE, _EQUAL, _STRICT = 1, 2, 3
# where a wall of the colour hides part of a gutter's side, the panel shows beside the gutter on at
# least this share of the stretch where it shows _RECEDE_PX lines out
_RECEDE_PX, _RECEDE_KEEP = 8, 0.7
_GRAIN_SHARE = 0.9  # every other line of the run has grain: at most this share so flat
_BORDER_SHARE = 0.6  # lines at the image's ends this much of the colour are border (a subject may cross it)


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


class _Axis:
    """One axis read for one colour: runs of lines of that colour, and which of their sides are clean."""

    def __init__(self, g: _Grid, axis: int, colour: np.ndarray) -> None:
        lines = self.lines = g.lines(axis)
        self.near = channel_max(np.abs(lines - colour.astype(np.int16))) <= g.cfg.uniform_tolerance
        self.share = self.near.mean(axis=1)
        self.f = g.profile(axis)
        self.length = len(lines)
        mask = self.share >= g.cfg.uniform_fraction
        # A border may be crossed by a subject running into it: at the ends, lines mostly of the colour
        # (no wider than a border: a dark photo at the edge is mostly black too, and must not take
        # the black gutter beside it into a "border")
        outer = self.share >= _BORDER_SHARE
        lead = int(np.argmin(outer)) if not outer.all() else self.length
        trail = int(np.argmin(outer[::-1])) if not outer.all() else self.length
        widest = int(g.cfg.max_border_fraction * self.length)
        mask[: lead if lead <= widest else 0] = True
        mask[self.length - (trail if trail <= widest else 0) :] = True
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
            return self._clean_where_shown(x, outwards)
        if float(self.f[max(0, x - 2) : x + 3].max(initial=0)) >= self.cfg.min_edge_fraction:
            return True
        return self._clean_where_shown(x, outwards)

    def _clean_where_shown(self, x: int, outwards: int) -> bool:
        """Whether the colour stops sharply at side ``x`` wherever the panel beside does not go on in
        it: a wall of the gutter's colour covering part of the panel's side hides the gutter's edge
        there, but the gutter is straight, so where the panel shows (``_SHOWN_MIN`` of the span at
        least) its edge is the gutter's. A wall covering (nearly) all of the side shows nothing,
        and a wall fading into the gutter shows no sharp edge."""
        beside = x - 1 if outwards < 0 else x
        far = beside + 2 * outwards
        if not (0 <= far < self.length and 2 <= x <= self.length - 4):
            return False
        shown = ~self.near[far]
        if not _SHOWN_MIN <= float(shown.mean()) <= 1 - _SHOWN_MIN:
            return False  # no wall (the whole-span test stands), or nothing shown
        # The panel shows up to a straight side: as much of it next to the gutter (the second line out:
        # the first may be blurred into the gutter) as a few lines out (a round subject on a ground
        # of the colour shows less and less towards the gutter).
        further = beside + _RECEDE_PX * outwards
        if 0 <= further < self.length and (1 - self.share[beside + outwards]) < _RECEDE_KEEP * (1 - self.share[further]):
            return False
        sharp = np.zeros_like(shown)
        a = self.lines
        for y in (x - 1, x, x + 1):  # boundary between lines y-1 and y, blurred by a line either way
            if 5 <= y <= self.length - 6:
                step = channel_max(np.abs(a[y + 1] - a[y - 2]))
                calm = np.maximum(channel_max(np.abs(a[y - 1] - a[y - 2])), channel_max(np.abs(a[y + 3] - a[y + 1])))
                # a fade (a wall's soft edge) goes on changing the same way beyond the step; a gutter's
                # edge stops there (texture beyond it changes any way)
                rise = (a[y + 1] - a[y - 2]).mean(axis=-1)
                beyond = (a[y + 4] - a[y + 1] if outwards > 0 else a[y - 2] - a[y - 5]).mean(axis=-1)
                fade = (rise * beyond > 0) & (2 * np.abs(beyond) > np.abs(rise))
                sharp |= (step > self.cfg.edge_step) & (step > 2 * calm + 8) & ~fade
        good = shown & sharp & ~self.near[beside + outwards if 0 <= beside + outwards < self.length else beside]
        return int(good.sum()) >= self.cfg.min_edge_fraction * int(shown.sum())

    def flat_core(self, s: int, e: int) -> tuple[int, int, bool]:
        """A drawn gutter inside a run that is unclean on a side: the one stretch of *exactly* flat lines
        (``_FLAT_SHARE`` of the line within 1 level of its median) at least ``min_gutter_px`` wide, ending
        at the run's clean side if it has one. A dark photo or a wall of the colour has grain; a gutter
        drawn by the grid's maker has none. (start, end, found): the run itself when there is no such stretch."""
        clean = (self.clean(s, -1), self.clean(e, 1))
        if all(clean):
            return s, e, False
        share = flat_share(self.lines[s:e])
        flat = share >= _FLAT_SHARE
        edges = np.flatnonzero(np.diff(np.concatenate([[0], flat.astype(np.int8), [0]])))
        cores = [(s + int(a), s + int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)
                 if b - a >= self.cfg.min_gutter_px]  # fmt: skip
        if len(cores) != 1 or float(share[~flat].max(initial=0)) > _GRAIN_SHARE:
            return s, e, False  # (lines nearly flat beside it: a gutter's JPEG blocks, no drawn edge)
        a, b = cores[0]
        if (clean[0] and a - s > 1) or (clean[1] and e - b > 1):
            return s, e, False  # the flat stretch does not reach the run's clean side: not its gutter
        return a, b, True

    def _merged(self, s: int, e: int, n: int) -> bool:
        """Whether a run too wide for a gutter is one merged with a panel's side of its colour (a dark
        photo beside a black gutter): clean on one side only, that side where a gutter belongs. Its
        width then comes from the clean gutters (``_place``), and equal panels must confirm it."""
        pitch = self.length / n
        clean = (self.clean(s, -1), self.clean(e, 1))
        if clean[0] == clean[1] or e - s <= self.cfg.max_gutter_fraction * pitch:
            return False
        at = s if clean[0] else e
        slot = round(at / pitch)
        return 1 <= slot < n and abs(at - slot * pitch) <= self.cfg.gutter_tolerance * pitch

    def layout(self, n: int, edge: tuple[int, int] | None = None):
        """(borders, gutters, content) or None: borders and gutters as lists of (start, end,
        clean_start, clean_end); ``content`` when the colour reaches an image edge as a panel's own
        (a run wider than a border, or lines much of the colour without a run): the panel there
        starts at the edge, which equal panels must then confirm. ``edge``: the extent inside a
        frame of another colour (runs touching the frame are at the edge)."""
        lo, hi = edge or (0, self.length)
        pitch = self.length / n
        borders, gutters, content, wide = [], [], 0, []
        for s, e in self.runs:
            sure = False
            if lo < s and e < hi:
                s, e, sure = self.flat_core(s, e)
            if s <= lo or e >= hi:
                if e - s > self.cfg.max_border_fraction * self.length:
                    content, wide = _SURE, [*wide, s <= lo]  # wider than a border: surely the panel's own
                    continue
                borders.append((s, e, s <= lo or self.clean(s, -1), e >= hi or self.clean(e, 1)))
                continue
            if self._merged(s, e, n):
                gutters.append((s, e, self.clean(s, -1), self.clean(e, 1)))
                continue
            slot = round((s + e) / 2 / pitch)
            off = abs((s + e) / 2 - slot * pitch)
            if not 1 <= slot < n or off > self.cfg.gutter_tolerance * pitch or e - s > self.cfg.max_gutter_fraction * pitch:
                if e - s >= self.cfg.min_gutter_px and (self.clean(s, -1) or self.clean(e, 1)):
                    return None  # a band of the colour across the grid where no gutter belongs
                continue  # a band of the colour that stops cleanly nowhere (a dark region of photos): theirs
            gutters.append((s, e, sure or self.clean(s, -1), sure or self.clean(e, 1)))
        gutters = _one_per_slot(gutters, pitch)
        for at, first in ((lo, True), (hi - 1, False)):
            touches = first in wide or any((b[0] <= lo) if first else (b[1] >= hi) for b in borders)
            if not touches and self.share[at] >= _CLEAN_NEAR:
                content = _EQUAL  # much of the colour at the image's edge, but no border of it
        if len(gutters) != n - 1 or len({round((s + e) / 2 / pitch) for s, e, _, _ in gutters}) != n - 1:
            return None
        return borders, gutters, content


def _one_per_slot(gutters: list, pitch: float) -> list:
    """Runs that claim the same gutter slot: a thin one with no clean side (a photo's white line
    near the gutter) gives way to a wider one that is clean on both sides."""
    out = []
    for run in gutters:
        rivals = [o for o in gutters if o is not run and round((o[0] + o[1]) / 2 / pitch) == round((run[0] + run[1]) / 2 / pitch)]
        thin = run[1] - run[0] < _STRAY_PX
        if not (run[2] or run[3]) and any((o[2] or o[3]) if thin else (o[2] and o[3]) for o in rivals if o[1] - o[0] > run[1] - run[0]):
            continue
        out.append(run)
    return out


def _unexplained_edge(g: _Grid, layouts, colour: np.ndarray) -> tuple[bool, list]:
    """(skip, layouts): whether an image edge line is uniform in another colour (a border of another
    colour, or a flat edge) where this colour shows no border, the same colour showing on three
    edges at least as bands of one width (a frame: the panel there would start unsure); fewer such lines are panels' flat
    edges, which equal panels must confirm (their axis gets content ``_STRICT``) when they end in a
    sharp edge past the tolerance of a cut (a border shown on one side). A line of this colour
    there is a panel's own (see ``_Axis.layout``'s content)."""
    lines = []
    for axis, lay in enumerate(layouts):
        length = g.n_px(axis)
        for at, touches in ((0, any(b[0] == 0 for b in lay[0])), (length - 1, any(b[1] == length for b in lay[0]))):
            line = g.a[at, ::2] if axis == 0 else g.a[::2, at]
            mean = line.mean(axis=0)
            uniform = float((channel_max(np.abs(line - mean)) <= g.cfg.uniform_tolerance).mean()) >= g.cfg.uniform_fraction
            odd = uniform and not _same_colour(tuple(mean), tuple(colour), g.cfg)
            lines.append((axis, tuple(mean), odd, touches, at, _edge_band(g, axis, mean, at == 0) if odd else 0))
    out = list(layouts)
    for axis, mean, odd, touches, at, _ in lines:
        if odd and not touches:
            widths = [o[5] for o in lines if o[2] and _same_colour(mean, o[1], g.cfg)]
            if sum(abs(w - float(np.median(widths))) <= _AGREE_PX for w in widths) >= 3:
                return True, out
            if _sharp_edge_band(g, axis, np.array(mean), at == 0):
                out[axis] = (out[axis][0], out[axis][1], _STRICT)
    return False, out


def _edge_run(g: _Grid, axis: int, colour: np.ndarray, first: bool) -> tuple[_Axis, tuple[int, int] | None]:
    """The axis read for ``colour``, and its run at the image's first (last) edge line, if any."""
    ax = _Axis(g, axis, colour)
    return ax, next((r for r in ax.runs if (r[0] == 0 if first else r[1] == ax.length)), None)


def _edge_band(g: _Grid, axis: int, colour: np.ndarray, first: bool) -> int:
    """Width of the run of ``colour`` at the image's edge (0: none). A frame's sides agree on theirs; a
    low-contrast photo (the moon's grey, uniform within ``uniform_tolerance``) goes on in it as far as it
    happens to, a different width at each edge."""
    _, run = _edge_run(g, axis, colour, first)
    return 0 if run is None else run[1] - run[0]


def _sharp_edge_band(g: _Grid, axis: int, colour: np.ndarray, first: bool) -> bool:
    """Whether a band of ``colour`` at the image's edge is wider than a cut may be off and stops
    sharply (a one-sided border would; a panel's flat edge mostly fades into the photo)."""
    ax, run = _edge_run(g, axis, colour, first)
    if run is None or run[1] - run[0] <= _AGREE_PX:
        return False
    return ax.clean(run[1], 1) if first else ax.clean(run[0], -1)


def _frame(g: _Grid, colour: np.ndarray):
    """The borders of a frame in another colour than the gutters' (a thin coloured frame around
    white gutters): per axis, the runs (start, end, clean_start, clean_end) of the image's edge
    colour at both of its ends; None unless all four sides show them (the teacher frames evenly)."""
    edge = [g.a[0, ::2], g.a[-1, ::2], g.a[::2, 0], g.a[::2, -1]]
    means = [line.mean(axis=0) for line in edge]
    frame = np.median(means, axis=0)
    if _same_colour(tuple(frame), tuple(colour), g.cfg) or not all(_same_colour(tuple(m), tuple(frame), g.cfg) for m in means):
        return None
    out = []
    for axis in (0, 1):
        ax = _Axis(g, axis, frame)
        runs = [r for r in ax.runs if r[0] == 0 or r[1] == ax.length]
        if len(runs) != 2 or runs[0][0] != 0 or runs[1][1] != ax.length:
            return None
        if any(e - s > g.cfg.max_border_fraction * ax.length for s, e in runs):
            return None
        (s0, e0), (s1, e1) = runs
        out.append([(s0, e0, True, ax.clean(e0, 1)), (s1, e1, ax.clean(s1, -1), True)])
    return out


def _lone_border(layouts) -> tuple[list, tuple | None]:
    """Layouts without borders that frame nothing: the teacher frames a grid on every side, so a lone
    run of the colour at one edge, or runs at two edges that both fade into the panels (a dark
    photo's top and bottom, a wall in a corner), are panels' own (their axis then has ``content``)."""
    borders = [run for lay in layouts for run in lay[0]]
    inner_clean = [b[2] and b[3] for b in borders]  # a run at an edge is clean on its outer side
    framed = len({(i, b[0] == 0) for i, lay in enumerate(layouts) for b in lay[0]}) >= 3  # three sides at least
    if len(borders) != 1 and (any(inner_clean) or framed):
        return list(layouts), None  # (runs at two edges that both fade into the panels are no frame either)
    # One that does not stop cleanly at the panel (a dark photo's bottom) is surely the panel's;
    # a clean lone one might be a border shown on one side only (returned: equal panels decide).
    lone = borders[0] if len(borders) == 1 and inner_clean[0] else None
    return [([], lay[1], _EQUAL if any(inner_clean) else _SURE) if lay[0] else lay for lay in layouts], lone


def _unframed(g: _Grid, axes: list[_Axis], layouts, colour: np.ndarray):
    """The reading in which the runs at the image's edges are all the panels' own (a white-ground product
    shot at every edge, its ground merging with the edge and ending at widths that frame nothing), tried
    when no border reading stands. Only along axes of three panels or more whose gutters are all clean on
    both sides: a frame hidden in the runs would leave the outer panels wider than the middle one by its
    width, so they must come out equal to the pixel. Along two panels a hidden frame widens both alike,
    and no reading can tell it from none."""
    if not any(lay[0] for lay in layouts):
        return None
    for i, lay in enumerate(layouts):
        if lay[0] and (g.n[i] < 3 or not all(cs and ce for _, _, cs, ce in lay[1])):
            return None
    found = _read(g, axes, [([], lay[1], _STRICT) for lay in layouts], colour, None)
    if found is None or any(_unequal_px(s) > _EXACT_PX for s, lay in zip(found[0], layouts, strict=True) if lay[0]):
        return None
    return found


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
    lo, hi, exact = 0, ax.length, []
    for b in borders:
        placed = _place(b, bw)
        if placed is None:
            return None
        if b[0] < ax.length / 2:  # (a frame of another colour, then a margin of the gutters')
            lo = max(lo, placed[1])
        else:
            hi = min(hi, placed[0])
    edges = [lo]
    for run in sorted(gutters):
        placed = _place(run, gw)
        if placed is None and gw is None and (run[2] or run[3]):
            # No clean gutter to go by: lines mostly of the colour, so the run is no narrower than
            # the gutter, and a panel it swallowed part of comes out smaller: it stands only if
            # the panels are equal to the pixel (the teacher draws equal panels).
            placed = run[:2]
            exact.append(run[1] - run[0])
        if placed is None:
            return None
        edges += list(placed)
    edges.append(hi)
    segs = tuple((edges[2 * i], edges[2 * i + 1]) for i in range(n))
    # Two such runs or more of one width (to a pixel: JPEG blurs a side) have not both swallowed
    # the same part of a panel: the panels may then differ by a pixel more.
    tolerance = _EXACT_PX + (len(exact) > 1 and max(exact) - min(exact) <= 1)
    if exact and max(b - a for a, b in segs) - min(b - a for a, b in segs) > tolerance:
        return None
    return segs


def _allowed_spreads(g: _Grid, axes: list[_Axis], layouts, colour: np.ndarray, inferred: bool, lone: bool) -> list[float]:
    """How unequal the panels along each axis may be. Equal panels (the teacher draws them) must
    confirm a width inferred from the clean gutters, a panel reaching the image edge in the gutters'
    colour where a frame of it might be hidden, and a lone gutter that could be a photo's flat strip."""
    borders = [run for lay in layouts for run in lay[0]]
    # no frame of the colour hides here: it shows on at most two of the image's edge lines
    framed = sum(float(ax.share[at]) >= _CLEAN_NEAR for ax in axes for at in (0, -1)) > 2 or bool(borders)
    strict = inferred
    if lone:  # a lone gutter: neutral (a gutter's colours), no seam of touching photos beside it
        (axis, (s, e, _, _)), = [(i, run) for i, lay in enumerate(layouts) for run in lay[1]]
        strict = strict or float(np.ptp(colour)) > g.cfg.colour_tolerance or _seam_beside(g, axis, s, e)
    tight = [strict or lay[2] == _STRICT or (lay[2] == _EQUAL and framed) for lay in layouts]
    return [g.cfg.max_edge_spread if t else g.cfg.max_panel_spread for t in tight]


def _read(g: _Grid, axes: list[_Axis], layouts, colour: np.ndarray, frame):
    """(segments per axis, inferred) of one reading of the runs of ``colour``, or None when unsure."""
    content = [lay[2] for lay in layouts]
    if any(content) and any(lay[0] for lay in layouts):
        return None  # a panel's own colour at one edge, a border at another: no frame
    own = sum(len(lay[0]) for lay in layouts)  # borders of the gutters' colour (a frame confirms no gutter)
    if frame:  # the frame, then any margin of the gutters' colour inside it
        layouts = [(frame[i] + lay[0], lay[1], lay[2]) for i, lay in enumerate(layouts)]
    layouts, evened = _odd_border(axes, layouts)
    gutters = [run for lay in layouts for run in lay[1]]
    borders = [run for lay in layouts for run in lay[0]]
    skip, layouts = _unexplained_edge(g, layouts, colour)
    if skip or (len(gutters) + own < 2 and not any(gutters[0][2:])):
        return None  # an edge line left may be a border; a lone band may be a photo's flat strip
    widths = _border_widths(g, axes, layouts)
    bw = _agreed(widths)
    if widths and bw is None and not frame:
        return None  # clean "borders" of different widths are no even frame: they are the panels' own grounds
    # gutter widths are inferred per axis (a grid's rows and columns may have different gutters)
    segs = [_segments(ax, g.n[i], *layouts[i][:2], _agreed([e - s for s, e, cs, ce in layouts[i][1] if cs and ce]), bw)
            for i, ax in enumerate(axes)]  # fmt: skip
    if any(s is None for s in segs):
        return None
    sizes = [[b - a for a, b in s] for s in segs]
    inferred = not all(cs and ce for _, _, cs, ce in gutters + borders)
    # a border's width from two clean borders or more is sure (the teacher frames evenly); a
    # gutter's from the clean ones must also give equal panels
    clean_borders = sum(cs and ce for _, _, cs, ce in borders)
    unsure = evened or not all(cs and ce for _, _, cs, ce in gutters) or (clean_borders < 2 and clean_borders < len(borders))
    spreads = _allowed_spreads(g, axes, layouts, colour, unsure, lone=len(gutters) + own < 2)
    if any(min(sz) < g.cfg.min_panel_size or (max(sz) - min(sz)) / max(sz) > spreads[i] for i, sz in enumerate(sizes)):
        return None
    return segs, inferred


def _odd_border(axes: list[_Axis], layouts) -> tuple[list, bool]:
    """(layouts, evened): a border wider than all the others (``panel_detect.odd_border``) that stops cleanly
    but whose extra lines are not drawn gets an unclean inner side, so it takes the others' width, and equal
    panels must confirm the cut (``evened``). (An unclean one already takes the clean ones' width.)"""
    sides = {}
    for i, lay in enumerate(layouts):
        for run in lay[0]:
            sides.setdefault((i, run[0] < axes[i].length / 2), []).append(run)
    odd = None if any(len(runs) > 1 for runs in sides.values()) else odd_border({k: r[0][1] - r[0][0] for k, r in sides.items()})
    if odd is None:
        return list(layouts), False
    (axis, first), agreed = odd
    run = sides[(axis, first)][0]
    if not run[3 if first else 2] or extra_drawn(axes[axis].lines, run[0], run[1], agreed, first):
        return list(layouts), False
    unclean = (*run[:3], False) if first else (run[0], run[1], False, run[3])
    out = list(layouts)
    out[axis] = ([unclean if r is run else r for r in out[axis][0]], *out[axis][1:])
    return out, True


def _border_widths(g: _Grid, axes: list[_Axis], layouts) -> list[int]:
    """Widths of the clean borders, which the unclean ones take. A lone clean one must be drawn (every
    line of the colour): lines mostly of it at an image end (a subject crossing a border) may as well be
    a photo's own light ground cut off by a flat strip, and would carve a frame out of every panel."""
    clean = [(i, s, e) for i, lay in enumerate(layouts) for s, e, cs, ce in lay[0] if cs and ce]
    drawn = all(bool((axes[i].share[s:e] >= g.cfg.uniform_fraction).all()) for i, s, e in clean)
    return [e - s for _, s, e in clean] if len(clean) > 1 or drawn else []


def _unequal_px_of(segs) -> int:
    return max(_unequal_px(s) for s in segs)


def by_gutter_colour(g: _Grid) -> Detection | None:
    """Panels between gutters (and inside borders) of one colour, or None (see the module docstring)."""
    for colour in _candidates(g):
        axes = [_Axis(g, axis, colour) for axis in (0, 1)]
        frame = _frame(g, colour)
        edges = [(f[0][1], f[1][0]) for f in frame] if frame else [None, None]
        layouts = [ax.layout(g.n[i], edges[i]) for i, ax in enumerate(axes)]
        if any(lay is None for lay in layouts) or not any(lay[1] for lay in layouts):
            continue
        own, lone = _lone_border(layouts)
        found = _read(g, axes, own, colour, frame)
        if lone is not None:
            # a lone clean band at one edge: a border shown on one side, or a panel's flat side; it
            # is the panel's only when that gives equal panels and the border reading does not. A
            # band whose lines are not all uniform (a dark photo's grain, cut off by a flat strip of
            # the photo above it) is no drawn border: the panel's own reading must stand alone.
            s, e = lone[:2]
            axis = next(i for i, lay in enumerate(layouts) if lay[0])
            drawn = bool((axes[axis].share[s:e] >= g.cfg.uniform_fraction).all())
            border = _read(g, axes, layouts, colour, frame) if drawn else None
            own_equal = found is not None and _unequal_px_of(found[0]) <= _EQUAL_PX
            if border is not None and not (e - s > _BAND_PX and own_equal and _unequal_px_of(border[0]) > _EQUAL_PX):
                found = border
        if found is None and frame is None:
            found = _unframed(g, axes, layouts, colour)
        if found is None:
            continue
        segs, inferred = found
        name = "rgb(" + ",".join(str(round(float(c))) for c in colour) + ")"
        how = ", widths of unclean sides from clean ones" if inferred else ""
        gutters = sum(len(lay[1]) for lay in layouts)
        return Detection(_boxes(segs[0], [segs[1]] * g.rows), "gutters", 0.9,
                         f"gutters found by colour {name}: {gutters} gutter(s){how}")  # fmt: skip
    return None
