"""Checks every cut of datagen/panel_detect.py must pass before its panels may reach curation.

A mis-cut sends wrong pairs to curation; a reject only costs one grid. So a detection, however it
was found, is checked afterwards on both axes, and any doubt rejects the grid:

1. *No hidden boundary.* A straight colour edge across the middle of the panels that share a row
   (or a column) of the layout, at the same line in each of them, is a panel boundary the layout
   does not have (a 3x3 labelled 1x3: each "panel" holds three photos). A lone panel (touching
   panels only) needs a stronger, near-complete edge (a photo's own straight lines rarely cross all of it).
   Between touching panels such an edge counts only at an even split of the grid, where an evenly drawn
   wrong layout puts its seams (same-subject panels share their horizon at one line too); there a sharp
   unpaired edge across one panel is enough (one photo meets another in a clean line, beside a faint one).
2. *Touching panels (cut at colour edges) only:* the panels are equal (the teacher draws equal
   panels; a cut at an object's edge, or at one side of a gutter swallowed by a panel of its
   colour, makes unequal ones), no panel's side is a uniform line (a gutter or border strip
   left inside the panel), and no flat band crosses a panel's middle near an even split of the grid
   (a photo's edge strip beside a seam no cue sees: two crops of a star field, drawn 2x2, labelled 1x2).
3. *Panels cut at gutters:* a gutter wider than another of its row (column), beside a panel smaller than
   the others by that difference whose side merges into the gutter's colour, has swallowed that panel's
   side (a wall fading into a black gutter: its last step reads as a clean edge; a product shot's white
   ground beside a white gutter). And the panels along two image edges or more do not all start with a
   band of one colour (a frame whose colour a panel's background shares is not found as a border).
   Nor does a band of the gutters' colour, as wide as they are, cross every panel of a row (column) at one
   even split of them: a gutter the layout does not have, hidden where the panels' background has its
   colour (horse silhouettes on white between white gutters, a 2x2 labelled 1x2).
"""

from __future__ import annotations

import itertools

import numpy as np

from .panel_types import Box, Detection, PanelDetectionError, PanelsConfig

_INNER = (0.2, 0.8)  # the middle of a panel, where a hidden boundary of a wrong layout falls
_HIDDEN_GROUP = 0.35  # mean share of the span of an edge shared by the panels of a row (column)
_HIDDEN_EACH = 0.3  # ... and its share in at least two thirds of them (touching panels)
_HIDDEN_GAPPED = 0.6  # ... panels cut at gutters: mean share, the edge in every one of them
_HIDDEN_SINGLE = 0.85  # a lone panel's edge (touching panels only)
# A hidden seam of touching panels lies at an even split of the grid into up to _MAX_HIDDEN panels per
# axis (one more than the largest layout drawn), as near as touching panels must be equal
# (panels.max_edge_spread of the span), or within these pixels.
_MAX_HIDDEN, _SPLIT_TOLERANCE_PX = 4, 6
_BACKGROUND_SHARE = 0.4  # a colour covering this share of a panel is its background
_BAND_REACH = 15  # an edge this near another parallel one is a thin band's (px)
# a gutter over _SWALLOW_PX wider than the narrowest, beside a panel short by that much (a pixel less, or up
# to _SWALLOW_PX or _SWALLOW_FIT of it more) that merges into it (_MERGE_SHARE of its side line of the gutter's colour, or that
# line _MERGE_NEARER times the usual distance from it), has swallowed that panel's side
_SWALLOW_PX, _SWALLOW_FIT, _MERGE_SHARE, _MERGE_NEARER = 3, 0.25, 0.4, 0.75
_MIN_SIDE_BAND = 3  # a uniform band along a panel's side this wide (px) is a gutter or border strip
# a flat band across a touching panel's middle, _MIN_SIDE_BAND to _MAX_FLAT_BAND px wide and within
# _FLAT_BAND_REACH px (beyond split_tolerance) of an even split into 2 or 3 panels (the largest layout drawn),
# is a photo's edge strip left inside the panel (the drawn strips sit 13-22 px from their hidden seam)
_MAX_FLAT_BAND, _FLAT_BAND_REACH = 24, 24
# ... a strip drawn flat: its lines within _EXACT_FLAT grey levels of their mean (a photo's smooth ground
# between two objects, within the gutter tolerance, crosses short panels too: the held-out flower and china
# grids), on lines that are not (_FLAT_BESIDE of them so at most)
_EXACT_FLAT, _FLAT_BESIDE = 6, 0.75
_AGREE_PX = 3  # clean gutters (borders) of one grid agree on their width within this (resampling, JPEG)


def channel_max(x: np.ndarray) -> np.ndarray:
    """``x.max(axis=-1)`` over the 3 colour channels, as two elementwise maxima: numpy's reduction
    along a length-3 last axis is about ten times slower, and it is the detector's hottest loop."""
    return np.maximum(np.maximum(x[..., 0], x[..., 1]), x[..., 2])


def edge_profile(lines: np.ndarray, cfg: PanelsConfig) -> np.ndarray:
    """f[y]: share of the span where the image steps sharply between lines y-1 and y.

    The step is measured across three lines (a boundary blurred by resampling or JPEG still counts)
    and must exceed twice the steps two lines before and after it (smooth content, not texture)."""
    length = len(lines)
    f = np.zeros(length, np.float32)
    if length < 8:
        return f
    a = lines
    step = channel_max(np.abs(a[3:-2] - a[:-5]))  # boundary y = i + 2: lines y+1 vs y-2
    before = channel_max(np.abs(a[1:-4] - a[:-5]))
    after = channel_max(np.abs(a[5:] - a[3:-2]))
    strong = (step > cfg.edge_step) & (step > 2 * np.maximum(before, after) + 8)
    f[2 : length - 3] = strong.mean(axis=1)
    return f


def _panel_lines(a: np.ndarray, box: Box, axis: int, i0: int, i1: int) -> np.ndarray:
    """Lines ``i0 - 2`` .. ``i1 + 3`` of the panel along ``axis`` (0: rows, 1: columns), every 6th
    pixel along each line (a share of the span needs no more)."""
    panel = a[box.y0 : box.y1, box.x0 : box.x1]
    lines = panel[:, ::6] if axis == 0 else panel[::6].transpose(1, 0, 2)
    return np.ascontiguousarray(lines[i0 - 2 : i1 + 3])


def _at_even_split(lines: np.ndarray, boxes: tuple[Box, ...], axis: int, cfg: PanelsConfig) -> np.ndarray:
    """Which ``lines`` (grid coordinates along ``axis``) lie where a seam of an evenly drawn grid of 2 to
    _MAX_HIDDEN panels falls. The teacher draws equal panels (the touching cut must be equal too), so a hidden
    seam of a wrong layout sits at such a split; a same-subject grid's horizon or pole, straight and at
    the same line in every panel of a row, mostly does not, and must not cost the grid."""
    lo = min(b.y0 if axis == 0 else b.x0 for b in boxes)
    hi = max(b.y1 if axis == 0 else b.x1 for b in boxes)
    return near_even_split(lines - lo, hi - lo, cfg)


def even_splits(length: float, most: int = _MAX_HIDDEN) -> np.ndarray:
    """Where the seams of an evenly drawn grid of 2 to ``most`` panels fall along a span of ``length``."""
    return np.array([length * i / n for n in range(2, most + 1) for i in range(1, n)])


def split_tolerance(length: float, cfg: PanelsConfig) -> float:
    """How far from an even split (px) a seam of a span of ``length`` may lie: equal panels within max_edge_spread."""
    return max(_SPLIT_TOLERANCE_PX, cfg.max_edge_spread * length)


def near_even_split(lines: np.ndarray, length: float, cfg: PanelsConfig, most: int = _MAX_HIDDEN) -> np.ndarray:
    """Which ``lines`` (from the span's start) lie within ``split_tolerance`` of one of ``even_splits``."""
    return np.abs(lines[:, None] - even_splits(length, most)[None, :]).min(axis=1) <= split_tolerance(length, cfg)


def band_partner(profile: np.ndarray, first: int = 3, reach: int = _BAND_REACH) -> np.ndarray:
    """The strongest value ``first`` to ``reach`` lines either side of each line of ``profile`` (lines along
    the last axis; the ends wrap): a thin band's other edge. A seam stands alone; a band's two edges (a flat
    strip, a brick wall's mortar) are the photo's own line."""
    beside = np.zeros_like(profile)
    for k in range(first, reach + 1):
        beside = np.maximum(beside, np.maximum(np.roll(profile, k, axis=-1), np.roll(profile, -k, axis=-1)))
    return beside


def _lone_strong(profiles: np.ndarray) -> np.ndarray:
    """Lines where some panel's edge crosses _HIDDEN_SINGLE of it with no band partner half as strong: a seam."""
    return ((profiles >= _HIDDEN_SINGLE) & (band_partner(profiles) < 0.5 * profiles)).any(axis=0)


def _sharing(boxes: tuple[Box, ...], axis: int) -> dict[tuple[int, int], list[Box]]:
    """The panels that share a row (axis 0: same y0, y1) or a column (axis 1), by that extent."""
    groups: dict[tuple[int, int], list[Box]] = {}
    for b in boxes:
        groups.setdefault((b.y0, b.y1) if axis == 0 else (b.x0, b.x1), []).append(b)
    return groups


def _hidden_boundary(a: np.ndarray, boxes: tuple[Box, ...], axis: int, cfg: PanelsConfig, single: bool) -> str:
    """Why the panels sharing a row (axis 0) or column (axis 1) hide a boundary ("" when none do);
    ``single``: judge lone panels too (touching panels; between gutters a hidden boundary of a
    wrong layout shows as gutters, and a subject's long straight side must not reject the grid)."""
    for (lo, hi), members in _sharing(boxes, axis).items():
        length = hi - lo
        i0, i1 = int(_INNER[0] * length), int(_INNER[1] * length)
        if i1 - i0 < 4 or (len(members) == 1 and not single):
            continue
        profiles = np.stack([edge_profile(_panel_lines(a, b, axis, i0, i1), cfg)[2:-3] for b in members])
        if len(members) == 1:
            mean = profiles[0]
            hit = mean >= _HIDDEN_SINGLE
        else:  # resampled seams may sit a line or two apart from panel to panel
            pooled = np.max([np.roll(profiles, k, axis=1) for k in range(-2, 3)], axis=0)
            mean = pooled.mean(axis=0)
            if single:  # touching panels: a hidden seam may fade where photos meet in like colours
                shared = (mean >= _HIDDEN_GROUP) & ((pooled >= _HIDDEN_EACH).sum(axis=0) >= max(2, -(-2 * len(members) // 3)))
                # ... or where one photo meets another in a sharp line, the seam beside it faint (a lone
                # panel's rule, kept to the even splits)
                hit = (shared | _lone_strong(profiles)) & _at_even_split(lo + i0 + np.arange(mean.size), boxes, axis, cfg)
            else:  # between gutters a wrong layout shows as gutters: only a strong shared edge counts
                mean = profiles.mean(axis=0)
                hit = (mean >= _HIDDEN_GAPPED) & (profiles.min(axis=0) >= _HIDDEN_EACH)
        if hit.any():
            at = lo + i0 + int(np.argmax(np.where(hit, mean, -1)))
            where = f"{'y' if axis == 0 else 'x'}={at} px"
            return (f"a straight colour edge crosses the middle of the panel(s) at {lo}-{hi} px ({where}, "
                    f"{float(mean.max()):.0%} of the span): the image may show more panels than the layout")  # fmt: skip
    return ""


def _spread(sizes: list[int]) -> float:
    return (max(sizes) - min(sizes)) / max(1, max(sizes))


def _unequal(boxes: tuple[Box, ...], cfg: PanelsConfig) -> str:
    for name, sizes in (("heights", [b.height for b in boxes]), ("widths", [b.width for b in boxes])):
        if _spread(sizes) > cfg.max_edge_spread:
            return (f"touching panels of unequal {name} ({min(sizes)}-{max(sizes)} px, more than "
                    f"panels.max_edge_spread={cfg.max_edge_spread}): a cut at an object's edge or beside a gutter")  # fmt: skip
    return ""


def _merges_into(a: np.ndarray, axis: int, across: tuple[int, int], gutter: tuple[int, int], side: int, depth: int,
                 tolerance: int) -> bool:  # fmt: skip
    """Whether the panel on ``side`` (-1: before the gutter, +1: after) merges into the gutter's colour: its
    line next to the gutter is much of that colour (_MERGE_SHARE within ``tolerance``: a product shot's white
    ground beside a white gutter), or clearly nearer it than the panel's lines up to ``depth`` px further out
    (a wall's soft edge, an anti-aliased ground: their last step reads as a clean edge). A drawn gutter meets
    the panel's own content."""

    def line(i: int) -> np.ndarray:
        return (a[i, across[0] : across[1]] if axis == 0 else a[across[0] : across[1], i]).astype(np.float32)

    colour = np.mean([line(i).mean(axis=0) for i in range(*gutter)], axis=0)
    edge = gutter[0] if side < 0 else gutter[1] - 1
    out = [edge + side * d for d in range(1, depth + 3)]
    if not all(0 <= i < a.shape[axis] for i in out):
        return False
    if float((channel_max(np.abs(line(out[0]) - colour)) <= tolerance).mean()) >= _MERGE_SHARE:
        return True
    distance = [float(np.abs(line(i) - colour).mean()) for i in out]
    return distance[0] < _MERGE_NEARER * float(np.median(distance[1:]))


def _swallowed_side(a: np.ndarray, boxes: tuple[Box, ...], cfg: PanelsConfig) -> str:
    """Why a gutter may hold part of a panel ("" when none may): see the module docstring (3)."""
    for axis in (0, 1):
        for across, members in _sharing(boxes, 1 - axis).items():  # gutters along axis 0 lie in a column
            segs = sorted((b.y0, b.y1) if axis == 0 else (b.x0, b.x1) for b in members)
            gaps = [b0 - a1 for (_, a1), (b0, _) in zip(segs, segs[1:], strict=False)]
            if len(gaps) < 2:  # (one gutter: no other to compare its width with)
                continue
            sizes = [b - a for a, b in segs]
            usual = float(np.median(sizes))
            for k, gap in enumerate(gaps):
                excess, side = gap - min(gaps), -1 if sizes[k] < sizes[k + 1] else 1
                short = usual - min(sizes[k], sizes[k + 1])
                fits = excess - 1 <= short <= excess + max(_SWALLOW_PX, _SWALLOW_FIT * excess)
                if not (excess > _SWALLOW_PX and fits):
                    continue
                if _merges_into(a, axis, across, (segs[k][1], segs[k + 1][0]), side, excess, cfg.uniform_tolerance):
                    return (f"the gutter at {segs[k][1]}-{segs[k + 1][0]} px is {excess} px wider than another, and the "
                            f"panel beside it, {short:.0f} px smaller than the others, merges into its colour: it may "
                            "hold part of that panel")  # fmt: skip
    return ""


def _uniform(line: np.ndarray, cfg: PanelsConfig) -> bool:
    mean = line.mean(axis=0)
    return float((channel_max(np.abs(line - mean)) <= cfg.uniform_tolerance).mean()) >= cfg.uniform_fraction


def _side_lines(panel: np.ndarray, side: str, offset: int) -> np.ndarray:
    if side in ("top", "bottom"):
        return panel[offset if side == "top" else -1 - offset]
    return panel[:, offset if side == "left" else -1 - offset]


def _side_band(panel: np.ndarray, side: str, cfg: PanelsConfig) -> int:
    """Width of a band along the panel's ``side`` that looks like a gutter or border (0 if none):
    uniform lines of one colour from the side inwards, gutter-wide at most, whose colour then stops
    (covers less than continuation_max of the next line). A flat panel's background goes on."""
    length = panel.shape[0] if side in ("top", "bottom") else panel.shape[1]
    first = _side_lines(panel, side, 1)
    if not _uniform(first, cfg):
        return 0
    colour = first.mean(axis=0)
    limit = int(cfg.max_gutter_fraction * length)
    for i in range(2, limit):
        line = _side_lines(panel, side, i)
        near = float((channel_max(np.abs(line - colour)) <= cfg.uniform_tolerance).mean())
        if near < cfg.uniform_fraction:
            if near >= cfg.continuation_max:
                return 0
            inside = panel[::4, ::4]  # the panel's background has this colour: its margin, not a strip
            share = float((channel_max(np.abs(inside - colour)) <= cfg.uniform_tolerance).mean())
            return 0 if share >= _BACKGROUND_SHARE else i
    return 0


def _uniform_side(a: np.ndarray, boxes: tuple[Box, ...], cfg: PanelsConfig) -> str:
    for k, b in enumerate(boxes):
        panel = a[b.y0 : b.y1, b.x0 : b.x1]
        for side in ("top", "bottom", "left", "right"):
            width = _side_band(panel, side, cfg)
            if width >= _MIN_SIDE_BAND:
                return (f"panel {k} ({b.as_list()}) has a uniform band {width} px wide along its {side} side: "
                        "a gutter or border strip would be left inside it")  # fmt: skip
    return ""


def _flat_runs(flat: np.ndarray, mean: np.ndarray, tolerance: int) -> list[tuple[int, int]]:
    """(start, end) of every run of ``flat`` lines of one colour (their ``mean`` within ``tolerance`` of the
    line before): a strip beside a flat ground of another colour is a run of its own."""
    same = np.ones(len(flat), bool)
    same[1:] = channel_max(np.abs(mean[1:] - mean[:-1])) <= tolerance
    starts = np.flatnonzero(flat & ~np.concatenate([[False], flat[:-1] & same[1:]]))
    runs = []
    for s in starts.tolist():
        e = s + 1
        while e < len(flat) and flat[e] and same[e]:
            e += 1
        runs.append((s, e))
    return runs


def _band_on_content(lines: np.ndarray, s: int, e: int, cfg: PanelsConfig) -> bool:
    """Whether the flat lines ``s:e`` are a band laid on a photo's content: the 2 lines either side hold
    little of its colour (under continuation_max; else they are a stretch of the panel's own flat ground, a
    dark sky) and are not flat themselves (under _FLAT_BESIDE of each within _EXACT_FLAT: a flat
    illustration's bands of colour sit side by side; a starfield's lines are 6-57 % so)."""
    beside = np.concatenate([lines[max(0, s - 2) : s], lines[e : e + 2]]).astype(np.float32)
    if len(beside) < 4:
        return False
    colour = lines[s:e].reshape(-1, 3).mean(axis=0)
    share = (channel_max(np.abs(beside - colour)) <= cfg.uniform_tolerance).mean(axis=1)
    own = channel_max(np.abs(beside - beside.mean(axis=1, keepdims=True))) <= _EXACT_FLAT
    return bool(float(share.max()) < cfg.continuation_max and float(own.mean(axis=1).max()) < _FLAT_BESIDE)


def _flat_band_inside(a: np.ndarray, boxes: tuple[Box, ...], cfg: PanelsConfig) -> str:
    """Why a touching panel may hold a hidden boundary ("" when none does): a flat band (lines flat within
    _EXACT_FLAT, 3 px to _MAX_FLAT_BAND wide, laid on content: ``_band_on_content``) crosses the whole panel
    in its middle, near an even split of the grid. It is the strip a photo shows near its own edge (a
    pilaster, a door frame), left in the middle of a "panel" that holds two photos, where the seam beside it
    is invisible (two crops of a star field drawn 2x2 and labelled 1x2). The strip of a correctly cut panel
    lies near that panel's side."""
    h, w = a.shape[:2]
    for b in boxes:
        panel = a[b.y0 : b.y1, b.x0 : b.x1].astype(np.int16)
        for axis, start, total in ((0, b.y0, h), (1, b.x0, w)):
            lines = panel[:, ::2] if axis == 0 else panel[::2].transpose(1, 0, 2)
            mean = lines.mean(axis=1, dtype=np.float32).round().astype(np.int16)
            near = channel_max(np.abs(lines - mean[:, None, :])) <= _EXACT_FLAT
            flat = near.mean(axis=1) >= cfg.uniform_fraction
            length = len(lines)
            for s, e in _flat_runs(flat, mean, cfg.uniform_tolerance):
                inner = _INNER[0] * length <= s and e <= _INNER[1] * length
                if not (_MIN_SIDE_BAND <= e - s <= _MAX_FLAT_BAND and inner) or not _band_on_content(lines, s, e, cfg):
                    continue
                edges = np.array([start + s, start + e], np.float32)
                reach = split_tolerance(total, cfg) + _FLAT_BAND_REACH
                if float(np.abs(edges[:, None] - even_splits(total, most=3)[None, :]).min()) <= reach:
                    where = f"{'y' if axis == 0 else 'x'}={start + s}-{start + e} px"
                    return (f"a flat band crosses the whole panel {b.as_list()} in its middle ({where}), near an even "
                            "split of the grid: the edge strip of a photo the layout does not have")  # fmt: skip
    return ""


def _border_inside(a: np.ndarray, boxes: tuple[Box, ...], cfg: PanelsConfig) -> str:
    """Why the panels may hold an untrimmed frame ("" when they do not): along two image edges or more, every
    panel there starts with a uniform line of one colour (the same at every such edge), and at least one
    shows it as a band that stops (``_side_band``; the others may go on in that colour: a product shot's
    white ground). A frame whose colour a panel's background shares is not found as a border; a band at one
    edge only is a panel's own (the teacher frames a grid on every side)."""
    h, w = a.shape[:2]
    at_edge = {"top": [b for b in boxes if b.y0 == 0], "bottom": [b for b in boxes if b.y1 == h],
               "left": [b for b in boxes if b.x0 == 0], "right": [b for b in boxes if b.x1 == w]}  # fmt: skip
    framed = []  # (side, colour, band width) of the edges that show the band
    for side, panels in at_edge.items():
        crops = [a[b.y0 : b.y1, b.x0 : b.x1] for b in panels]
        outer = [_side_lines(c, side, 0) for c in crops]
        if not outer or not all(_uniform(line, cfg) for line in outer):
            continue
        colour = outer[0].mean(axis=0)
        width = max(_side_band(c, side, cfg) for c in crops)
        if width >= _MIN_SIDE_BAND and all(float(np.abs(line.mean(axis=0) - colour).max()) <= cfg.colour_tolerance for line in outer):
            framed.append((side, colour, width))
    same = [f for f in framed if float(np.abs(f[1] - framed[0][1]).max()) <= cfg.colour_tolerance] if framed else []
    if len(same) >= 2:
        sides = ", ".join(f"{side} ({width} px)" for side, _, width in same)
        return f"the panels along the image's {sides} edges start with a band of one colour: a frame left inside them"
    return ""


def _gutter_colour(a: np.ndarray, boxes: tuple[Box, ...]) -> tuple[np.ndarray, int] | None:
    """(colour, width) of the narrowest gap between two panels of a row or column; None when they touch."""
    gaps = []
    for axis in (0, 1):
        for members in _sharing(boxes, axis).values():
            ordered = sorted(members, key=lambda b: b.x0 if axis == 0 else b.y0)
            for p, q in itertools.pairwise(ordered):
                if axis == 0 and q.x0 > p.x1:
                    gaps.append((q.x0 - p.x1, a[p.y0 : p.y1, p.x1 : q.x0]))
                elif axis == 1 and q.y0 > p.y1:
                    gaps.append((q.y0 - p.y1, a[p.y1 : q.y0, p.x0 : p.x1]))
    if not gaps:
        return None
    width, gap = min(gaps, key=lambda g: g[0])
    return np.median(gap.reshape(-1, 3), axis=0), width


def _hidden_gutter(a: np.ndarray, boxes: tuple[Box, ...], cfg: PanelsConfig) -> str:
    """Why the panels sharing a row (column) hide a gutter ("" when they do not): lines uniform in the found
    gutters' colour across every one of them, a run at least as wide as the narrowest gutter (less
    _AGREE_PX) and at most twice as wide (with the panels' margins of its colour), at an even split of their
    extent into 2 or 3: a wrong layout's gutter, where every panel's background has the gutter's colour and
    no separator showed it. A lone panel is not judged (a white wall across a photo)."""
    found = _gutter_colour(a, boxes)
    if found is None:
        return ""
    colour, width = found
    for axis in (0, 1):
        for (lo, hi), members in _sharing(boxes, axis).items():
            if len(members) < 2:  # a lone panel's flat wall is no gutter: one across several panels at one line is
                continue
            length = hi - lo
            i0, i1 = int(_INNER[0] * length), int(_INNER[1] * length)
            flat = np.ones(i1 - i0, bool)
            for b in members:
                panel = a[lo + i0 : lo + i1, b.x0 : b.x1] if axis == 0 else a[b.y0 : b.y1, lo + i0 : lo + i1].transpose(1, 0, 2)
                near = channel_max(np.abs(panel[:, ::2].astype(np.int16) - colour.astype(np.int16))) <= cfg.uniform_tolerance
                flat &= near.mean(axis=1) >= cfg.uniform_fraction
            edges = np.flatnonzero(np.diff(np.concatenate([[0], flat.astype(np.int8), [0]])))
            for s, e in zip(edges[::2], edges[1::2], strict=True):
                centre = i0 + (s + e) / 2
                at_split = float(np.abs(even_splits(length, 3) - centre).min())
                wide = max(3, width - _AGREE_PX) <= e - s <= 2 * (width + _AGREE_PX)  # a gutter's width, or with a margin
                if wide and at_split <= max(_SPLIT_TOLERANCE_PX, (e - s) / 2):
                    where = f"{'y' if axis == 0 else 'x'}={lo + i0 + s}-{lo + i0 + e} px"
                    return (f"a band of the gutters' colour crosses every panel at {lo}-{hi} px ({where}, {e - s} px "
                            f"wide, the gutters {width} px): a gutter the layout does not have")  # fmt: skip
    return ""


def verify(a: np.ndarray, found: Detection, rows: int, cols: int, cfg: PanelsConfig) -> None:
    """Raise PanelDetectionError when ``found`` fails a check of the module docstring."""
    single = found.method == "edges"
    why = _hidden_boundary(a, found.boxes, 0, cfg, single) or _hidden_boundary(a, found.boxes, 1, cfg, single)
    if not why and found.method == "edges":
        why = _unequal(found.boxes, cfg) or _uniform_side(a, found.boxes, cfg) or _flat_band_inside(a, found.boxes, cfg)
    elif not why:
        why = _swallowed_side(a, found.boxes, cfg) or _border_inside(a, found.boxes, cfg) or _hidden_gutter(a, found.boxes, cfg)
    if why:
        raise PanelDetectionError(f"cannot cut the grid into {rows}x{cols} panels: {why}; rejected rather than guessed")
