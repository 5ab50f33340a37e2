"""Touching panels cut at colour edges (step 5 of datagen/panel_detect.py's docstring).

Each cut is the strongest edge near its even-split position; its confidence is how much it stands
out from the next-best edge in that window, with evenness as a second cue when an object's edge
rivals it. Weak or ambiguous edges, and strong full-span edges inside a cut panel or along an axis
meant to hold one panel, reject the grid (a mis-cut is worse than a reject), as does a lone one-line
step across most of the span inside a panel (the faint seam of photos a wrong layout hides). Where no sharp edge
spans enough of the image (crops of one photo meeting in similar colours), a jump of the local
averages alone at the even split, with no rival near it, is the seam; failing that, a one-line step
(the pixels either side unrelated) standing out over the usual line-to-line step across much of
the span, with no rival near it (crops of a grainy photo: gravel, the moon's surface); failing that,
the line where neighbouring lines stop being correlated along most of the span (crops of grass, of a
cell culture: their steps are as large as the texture's own, but within a photo each line still
resembles the one before). A cut only a one-line step found must also part unrelated lines where the span
has content: lines alike either side of a step are one photo's straight edge (a mortar line), not a seam.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .panel_detect import _SAMPLES, _Band, _boxes, _Grid, _lines, _same_colour, _spread, _trim_borders
from .panel_types import Detection, PanelCountMismatch, PanelDetectionError, PanelsConfig
from .panel_verify import band_partner, channel_max, edge_profile, near_even_split, split_tolerance

# A line step: in _STEP_MIN_SHARE of the span's stretches at least (3 of 8: crops of a dark sky meet in
# noise), the step into the line is _STEP_RATIO times the usual one; it must beat rivals by that share too.
_STEP_CHUNKS, _STEP_RATIO, _STEP_MIN_SHARE = 8, 2.0, 0.375
_STEP_HIDDEN = 0.75  # ... in this share inside a panel, alone (no step within _BAND_REACH): a seam the layout lacks
# ... a cut it alone found parts unrelated lines in _STEP_UNRELATED of the stretches at least, where _STEP_CONTENT
# of them have content (a span flatter than that has no say)
_STEP_UNRELATED, _STEP_CONTENT = 0.15, 0.5
_STEP_EVERY = 0.25  # ... and out of a flat line, in this share of every panel across (a silhouette on white: most is white)
# Unrelated lines (_unrelated_profile): of a line's _DECOR_CHUNKS stretches, those with content (grey spread
# over _DECOR_MIN_SD levels on both lines, and at least _DECOR_MIN_CONTENT such stretches: a sliver between a
# silhouette's legs is no span) whose 1 - correlation with the line before is over _DECOR_DROP and
# _DECOR_RATIO times the usual one there (the median within 8 lines).
_DECOR_CHUNKS, _DECOR_MIN_SD, _DECOR_MIN_CONTENT, _DECOR_DROP, _DECOR_RATIO = 16, 1.0, 6, 0.4, 3.0
# A seam shows in _DECOR_MIN of them, any rival within a tenth of a pitch in at most _DECOR_RIVAL of that
# share or _DECOR_RIVAL_GAP below it (the moon's grain keeps every line of it near 0.6).
_DECOR_MIN, _DECOR_RIVAL, _DECOR_RIVAL_GAP = 0.5, 0.4, 0.35
# A seam the layout lacks, at an even split inside a cut panel: half as marked as the weakest cut and in
# _DECOR_HIDDEN at least, and either _HID_ALONE, or 1 / _HID_STANDOUT times every line within a tenth of the
# span, or on a one-line step in _HID_STEP of the span (two cues at one line).
_DECOR_HIDDEN, _HID_ALONE, _HID_STANDOUT, _HID_STEP = 0.3, 0.6, 0.4, 0.5


def _pick_edge(
    f: np.ndarray, expected: float, window: float, cfg: PanelsConfig, even_cue: bool = True
) -> tuple[int, float, float, str]:
    """(cut, strength, confidence, how) of the strongest edge within ``window`` of ``expected``.

    Confidence is how much the edge stands out from the next-best one (1 - second/best). When a
    rival comes close in strength (an object's edge near the boundary), the evenness of the split
    is the second cue: the teacher draws equal panels, so the strongest edge counts only when it
    is also clearly nearer the even split than every close rival; their distance gap (in windows)
    adds to the confidence as independent evidence (1 - (1 - edge)(1 - even))."""
    lo, hi = max(1, int(expected - window)), min(len(f) - 1, int(expected + window) + 1)
    if hi <= lo:
        return -1, 0.0, 0.0, ""
    seg = f[lo:hi]
    best = int(np.argmax(seg))
    strength = float(seg[best])
    rest = np.concatenate([seg[: max(0, best - 3)], seg[best + 4 :]])
    second = float(rest.max()) if rest.size else 0.0
    confidence = 0.0 if strength <= 0 else max(0.0, 1.0 - second / strength)
    if strength <= 0 or confidence >= cfg.min_edge_confidence or not even_cue:
        return lo + best, strength, confidence, ""
    at = np.arange(lo, hi)
    far = np.abs(at - (lo + best)) > 3
    # Rivals: every edge within min_edge_confidence of the best, and the runner-up itself (at a
    # confidence a hair under the bar, float rounding can leave the first set empty).
    rivals = at[far & (seg >= min(second, strength * (1.0 - cfg.min_edge_confidence)))]
    gap = float(np.abs(rivals - expected).min()) - abs(lo + best - expected)
    even = min(1.0, max(0.0, gap / window))
    combined = 1.0 - (1.0 - confidence) * (1.0 - even)
    return lo + best, strength, combined, ", the strongest edge nearest the even split" if even > 0 else ""


def _refine(lines: np.ndarray, cut: int) -> int:
    """The edge's exact line: the largest single-line step within two lines of ``cut``."""
    lo, hi = max(1, cut - 2), min(len(lines) - 1, cut + 3)
    steps = [float(np.abs(lines[y] - lines[y - 1]).mean()) for y in range(lo, hi)]
    return lo + int(np.argmax(steps)) if steps else cut


def _framed_span(g: _Grid, axis: int) -> tuple[int, int]:
    """The axis's extent inside its borders, where a border must frame the grid: a band at one edge
    whose colour shows at no other edge is a touching panel's own background."""
    edges = [b for ax in (0, 1) for b in g.seps[ax] if b.touches_start or b.touches_end]

    def framed(band: _Band) -> bool:
        return any(o is not band and _same_colour(o.colour, band.colour, g.cfg) for o in edges)

    length = g.h if axis == 0 else g.w
    lo, hi, _ = _trim_borders([b for b in g.seps[axis] if not (b.touches_start or b.touches_end) or framed(b)],
                              0, length, g.cfg)  # fmt: skip
    return lo, hi


def by_edges(g: _Grid, even_cue: bool = True) -> Detection:
    """Touching panels. A uniform band at one edge only may be a border or a panel's background
    reaching the edge: both readings are cut, and one must give clearly more equal panels.
    ``even_cue``: whether evenness may settle an edge rivalled by another (see ``_pick_edge``)."""
    framed = (*_framed_span(g, 0), *_framed_span(g, 1))
    trimmed = (g.trim[0][0], g.trim[0][1], g.trim[1][0], g.trim[1][1])
    if framed == trimmed:
        return _cut_at_edges(g, framed, even_cue)
    readings = []
    for span in (framed, trimmed):
        try:
            found = _cut_at_edges(g, span, even_cue)
        except PanelDetectionError:
            continue
        spread = max(_spread(tuple((b.y0, b.y1) for b in found.boxes)), _spread(tuple((b.x0, b.x1) for b in found.boxes)))
        readings.append((spread, found))
    readings.sort(key=lambda r: r[0])
    # A reading that cannot be cut with confidence is no reading: the other stands alone when its
    # panels are as equal as a clear winner's would be (the teacher draws equal panels).
    lone = len(readings) == 1 and readings[0][0] < 0.05
    if lone or (len(readings) == 2 and readings[1][0] - readings[0][0] >= 0.05):
        return readings[0][1]
    raise PanelDetectionError(
        f"cannot cut the grid into {g.rows}x{g.cols} panels: no gutter, and a uniform band at one edge only "
        "could be a border or a panel's own background; rejected rather than guessed"
    )


def _cut_at_edges(g: _Grid, span: tuple[int, int, int, int], even_cue: bool) -> Detection:
    cfg = g.cfg
    segs: list[tuple[tuple[int, int], ...]] = []
    confidences, notes = [], []
    fine: list[np.ndarray] = []  # per axis: the sampled lines every fine cue reads, and their step profile
    steps: list[np.ndarray] = []
    stepped: list[tuple[int, int]] = []  # (axis, cut from the span's start) of the cuts a one-line step alone found
    y0, y1, x0, x1 = span
    for axis, n in ((0, g.rows), (1, g.cols)):
        lo, hi = (y0, y1) if axis == 0 else (x0, x1)
        region = g.a[y0:y1, x0:x1]
        fine.append(_lines(region, axis, 2 * _SAMPLES))
        steps.append(_step_profile(fine[axis]))
        f = edge_profile(fine[axis], cfg)
        pitch = (hi - lo) / n
        name = "row" if axis == 0 else "column"
        if pitch < cfg.min_panel_size:
            raise PanelDetectionError(
                f"cannot cut the grid into {g.rows}x{g.cols} panels: content of {hi - lo} px is too small "
                f"for {n} panels of >= {cfg.min_panel_size} px"
            )
        if n == 1:
            _no_edge_where_none_expected(f, g, axis, lo)
            segs.append(((lo, hi),))
            continue
        cuts, strengths = [lo], []
        for i in range(1, n):
            # Touching panels must come out equal (max_edge_spread, checked after the cut): only edges
            # that near the even split can be the boundary, so farther ones are no rivals.
            window = min(cfg.gutter_tolerance, 1.5 * cfg.max_edge_spread) * pitch
            cut, strength, conf, how = _pick_edge(f, i * pitch, max(4.0, window), cfg, even_cue)
            cut = _refine(_lines(region, axis), cut)
            where = f"{name} boundary near {lo + round(i * pitch)} px"
            if cfg.no_edge == "even" and (strength < cfg.min_edge_fraction or conf < cfg.min_edge_confidence):
                cut = round(lo + i * pitch)
                cuts += [cut, cut]
                confidences.append(0.0)
                notes.append(f"{name} cut at {cut} px: no clear edge, even split (panels.no_edge = even)")
                continue
            texture = 0.0
            if strength < cfg.min_edge_fraction:
                cut, texture, conf, how, cue = _weak_seam(fine[axis], i * pitch, window, pitch)
                stepped += [(axis, cut)] if cue == "step" else []
            if strength < cfg.min_edge_fraction and not texture:
                raise PanelDetectionError(
                    f"cannot cut the grid into {g.rows}x{g.cols} panels: no gutter, and no colour edge across the "
                    f"image at the {where} (strongest covers {strength:.0%} of the span); rejected rather than guessed"
                )
            if conf < cfg.min_edge_confidence:
                raise PanelDetectionError(
                    f"cannot cut the grid into {g.rows}x{g.cols} panels: no gutter, and the colour edge at the "
                    f"{where} is ambiguous (confidence {conf:.2f} < {cfg.min_edge_confidence}); rejected rather than guessed"
                )
            cuts += [lo + cut, lo + cut]
            strengths += [] if texture else [strength]
            confidences.append(conf)
            notes.append(f"{name} cut at {lo + cut} px (edge across {strength:.0%}, "
                         f"confidence {conf:.2f}{how})")
        cuts.append(hi)
        segs.append(tuple((cuts[2 * i], cuts[2 * i + 1]) for i in range(n)))
        _no_edge_inside_panels(f, g, axis, lo, segs[-1], max(cfg_strong(cfg), min(strengths, default=0.0)))
    for axis, lo in ((0, y0), (1, x0)):
        _no_step_inside_panels(fine[axis], steps[axis], g, axis, lo, segs[axis], (segs[1 - axis], (x0, y0)[axis]))
    unrelated = [_unrelated_profile(v) for v in fine]  # per axis, read by both checks below
    _step_of_one_photo(g, fine, unrelated, (y0, x0), stepped)
    _no_unrelated_lines_inside_panels(g, span, segs, unrelated, steps)
    small = [b - a for s in segs for a, b in s if b - a < cfg.min_panel_size]
    if small:
        raise PanelDetectionError(f"cannot cut the grid into {g.rows}x{g.cols} panels: panel of {small[0]} px "
                                  f"is below min_panel_size={cfg.min_panel_size}")  # fmt: skip
    detail = "no gutters; split at colour edges: " + "; ".join(notes)
    return Detection(_boxes(segs[0], [segs[1]] * g.rows), "edges", min(confidences, default=1.0), detail)


def _texture_profile(lines: np.ndarray, k: int = 4) -> np.ndarray:
    """t[y]: share of the span where the mean of the ``k`` lines below y differs from the mean of
    the ``k`` above by more than the same step one block further out on either side: two crops of
    one photo placed edge to edge can meet without a sharp pixel step, yet their local averages jump."""
    a = lines.astype(np.float32)
    c = np.concatenate([np.zeros((1, *a.shape[1:]), np.float32), np.cumsum(a, axis=0)])
    t = np.zeros(len(a), np.float32)
    if len(a) < 4 * k + 1:
        return t
    y = np.arange(2 * k, len(a) - 2 * k + 1)
    up, dn = (c[y] - c[y - k]) / k, (c[y + k] - c[y]) / k
    up2, dn2 = (c[y - k] - c[y - 2 * k]) / k, (c[y + 2 * k] - c[y + k]) / k
    d = channel_max(np.abs(dn - up))
    beside = np.maximum(channel_max(np.abs(up - up2)), channel_max(np.abs(dn2 - dn)))
    t[y] = ((d > 10) & (d > 1.5 * beside + 4)).mean(axis=1)
    return t


def _peak_near(profile: np.ndarray, expected: float, window: float, pitch: float) -> tuple[int, float, float] | None:
    """(line, value, rival) of ``profile``'s highest line within ``window`` of ``expected``, and the highest
    other value within a tenth of a pitch of it (3 lines either side excluded); None where either range is
    empty. Both seam cues (texture, one-line step) judge their peak against this rival."""
    lo, hi = max(1, int(expected - window)), min(len(profile) - 1, int(expected + window) + 1)
    wlo, whi = max(1, int(expected - 0.1 * pitch)), min(len(profile) - 1, int(expected + 0.1 * pitch) + 1)
    if hi <= lo or whi <= wlo:
        return None
    best = lo + int(np.argmax(profile[lo:hi]))
    rest = np.concatenate([profile[wlo : max(wlo, best - 3)], profile[best + 4 : whi]])
    return best, float(profile[best]), float(rest.max()) if rest.size else 0.0


def _seam(profile: np.ndarray, expected: float, window: float, pitch: float, floor: float,
          allowed: Callable[[float], float]) -> tuple[int, float, float]:
    """(cut, strength, confidence) of ``profile``'s peak near the even split (``_peak_near``) when it reaches
    ``floor`` and its rival is at most ``allowed(strength)``; else strength 0 (no seam by this cue)."""
    peak = _peak_near(profile, expected, window, pitch)
    if peak is None:
        return -1, 0.0, 0.0
    best, strength, second = peak
    if strength < floor or second > allowed(strength):
        return best, 0.0, 0.0
    return best, strength, 1.0 - second / strength


def _texture_seam(lines: np.ndarray, expected: float, window: float, pitch: float) -> tuple[int, float, float]:
    """(cut, strength, confidence) of a texture seam at the even split: the strongest block-mean jump
    within ``window`` of it must reach over a quarter of the span and be 2.5x any other within a
    tenth of a pitch (where an object's edge would rival it); else its strength is 0 (no seam).
    Used only where no sharp edge reaches min_edge_fraction; the cut panels are still checked for
    hidden sharp edges as any edge cut is."""
    return _seam(_texture_profile(lines), expected, window, pitch, 0.25, lambda strength: 0.4 * strength)


def _weak_seam(lines: np.ndarray, expected: float, window: float, pitch: float) -> tuple[int, float, float, str, str]:
    """(cut, strength, confidence, how, cue) of a seam no sharp edge shows: a texture seam, else a line step,
    else unrelated lines (``cue``: "texture", "step" or "unrelated")."""
    cut, strength, conf = _texture_seam(lines, expected, window, pitch)
    if strength:
        return cut, strength, conf, f", a texture seam across {strength:.0%}", "texture"
    cut, strength, conf = _step_seam(lines, expected, window, pitch)
    if strength:
        return cut, strength, conf, f", a one-line step standing out in {strength:.0%} of the span", "step"
    cut, strength, conf = _unrelated_seam(lines, expected, window, pitch)
    return cut, strength, conf, f", unrelated lines in {strength:.0%} of the span", "unrelated"


def _step_of_one_photo(g: _Grid, fine: list[np.ndarray], unrelated: list[np.ndarray], starts: tuple[int, int],
                       stepped: list[tuple[int, int]]) -> None:  # fmt: skip
    """A cut that only a one-line step found must also part unrelated lines where the span has content: two
    photos placed edge to edge do not continue each other (``_unrelated_profile`` over _STEP_UNRELATED of the
    stretches, within a line of the cut). Lines alike either side of a step along most of the span are one
    photo's straight edge (a brick wall drawn 2x1 and labelled 2x2, cut down one row's mortar line: the other
    row's bricks run on across it). A span mostly flat there (white ground meeting white ground) has no say."""
    for axis, cut in stepped:
        lines = fine[axis]
        u = float(unrelated[axis][max(1, cut - 1) : cut + 2].max())
        grey = lines[max(0, cut - 1) : cut + 1].astype(np.float32).mean(axis=2)
        usable = grey.shape[1] // _DECOR_CHUNKS * _DECOR_CHUNKS
        spread = grey[:, :usable].reshape(len(grey), _DECOR_CHUNKS, -1).std(axis=2)
        content = float((spread > _DECOR_MIN_SD).all(axis=0).mean())  # stretches with content on both lines
        if content >= _STEP_CONTENT and u < _STEP_UNRELATED:
            where = f"{'y' if axis == 0 else 'x'}={starts[axis] + cut} px"
            raise PanelDetectionError(
                f"cannot cut the grid into {g.rows}x{g.cols} panels: no gutter, and the lines either side of the one-line "
                f"step at {where} are alike along the span ({u:.0%} unrelated): a straight edge within one photo, not "
                "a seam; rejected rather than guessed"
            )


def _running_median(x: np.ndarray, reach: int) -> np.ndarray:
    """The median of ``x`` over the ``reach`` lines either side of each line (axis 0, edges repeated): the
    middle of each window by ``np.partition``, which is ~8x faster than ``np.median`` on these windows."""
    windows = sliding_window_view(np.pad(x, ((reach, reach), (0, 0)), mode="edge"), 2 * reach + 1, axis=0)
    return np.partition(windows, reach, axis=2)[..., reach]


def _unrelated_profile(lines: np.ndarray, reach: int = 8) -> np.ndarray:
    """u[y]: share of the span's stretches with content where line y is unrelated to line y-1: their
    correlation along the stretch falls well below the usual one between neighbouring lines there.
    Within a photo, however grainy, each line resembles the one before (resampling alone sees to
    that); two photos placed edge to edge do not. Flat stretches (a night sky, a wall) have no say."""
    grey = lines.astype(np.float32).mean(axis=2)
    u = np.zeros(len(grey), np.float32)
    usable = grey.shape[1] // _DECOR_CHUNKS * _DECOR_CHUNKS
    if len(grey) < 2 * reach + 2 or usable == 0:
        return u
    c = grey[:, :usable].reshape(len(grey), _DECOR_CHUNKS, -1)
    c = c - c.mean(axis=2, keepdims=True)
    sd = np.sqrt((c**2).mean(axis=2))
    content = (sd[1:] > _DECOR_MIN_SD) & (sd[:-1] > _DECOR_MIN_SD)
    d = np.where(content, 1.0 - (c[1:] * c[:-1]).mean(axis=2) / np.maximum(sd[1:] * sd[:-1], 1e-6), 0.0)
    usual = _running_median(d, reach)
    hits = (content & (d > np.maximum(_DECOR_DROP, _DECOR_RATIO * usual))).sum(axis=1)
    counted = content.sum(axis=1)
    u[1:] = np.where(counted >= _DECOR_MIN_CONTENT, hits / np.maximum(counted, 1), 0.0)
    return u


def _unrelated_seam(lines: np.ndarray, expected: float, window: float, pitch: float) -> tuple[int, float, float]:
    """(cut, strength, confidence) of unrelated lines at the even split (``_unrelated_profile``): the
    strongest within ``window`` must show in _DECOR_MIN of the stretches with content, and any other within
    a tenth of a pitch in at most _DECOR_RIVAL of its share; else strength 0."""
    return _seam(_unrelated_profile(lines), expected, window, pitch, _DECOR_MIN,
                 lambda strength: max(_DECOR_RIVAL * strength, strength - _DECOR_RIVAL_GAP))


def _step_profile(lines: np.ndarray, chunks: int = _STEP_CHUNKS, reach: int = 8) -> np.ndarray:
    """s[y]: share of the span's ``chunks`` (equal stretches along the line) where the step from line
    y-1 to y is over _STEP_RATIO times the usual step between neighbouring lines there (the median
    within ``reach`` lines). Two photos placed edge to edge meet in a one-line jump wherever their
    pixels are unrelated, however alike their colours; within a photo, neighbouring lines are alike
    (resampling blurs an object's edge over two lines or more, and it stops where the object does)."""
    a = lines.astype(np.int16)
    s = np.zeros(len(a), np.float32)
    if len(a) < 2 * reach + 2 or a.shape[1] < chunks:
        return s
    d = channel_max(np.abs(a[1:] - a[:-1])).astype(np.float32)
    usable = d.shape[1] // chunks * chunks
    dc = d[:, :usable].reshape(len(d), chunks, -1).mean(axis=2)
    usual = _running_median(dc, reach)
    s[1:] = (dc > _STEP_RATIO * (usual + 2)).mean(axis=1)  # + 2 grey levels: flat stretches' noise
    return s


def _step_seam(lines: np.ndarray, expected: float, window: float, pitch: float) -> tuple[int, float, float]:
    """(cut, strength, confidence) of a one-line step at the even split (``_step_profile``): the
    strongest within ``window`` must stand out in _STEP_MIN_SHARE of the span, and above any other
    within a tenth of a pitch (a flat strip's edges, an object's) by that share and twice; else
    strength 0."""
    return _seam(_step_profile(lines), expected, window, pitch, _STEP_MIN_SHARE,
                 lambda strength: min(0.5 * strength, strength - _STEP_MIN_SHARE))


def _no_edge_where_none_expected(f: np.ndarray, g: _Grid, axis: int, lo: int) -> None:
    """A strong edge across the whole span in the middle of an axis meant to hold one panel is a
    second panel (the image shows more panels than the layout)."""
    length = len(f)
    mid = f[int(0.25 * length) : int(0.75 * length)]
    if mid.size and float(mid.max()) >= cfg_strong(g.cfg):
        at = lo + int(0.25 * length) + int(np.argmax(mid))
        shown = (2, g.cols) if axis == 0 else (g.rows, 2)
        raise PanelCountMismatch(
            g.rows * g.cols, shown[0] * shown[1], g.rows, g.cols,
            f"{shown[0]}x{shown[1]}: no gutters, but a colour edge crosses the whole image at "
            f"{'y' if axis == 0 else 'x'}={at} px", shown=shown,
        )  # fmt: skip


def _no_edge_inside_panels(f: np.ndarray, g: _Grid, axis: int, lo: int, segments, floor: float) -> None:
    """An edge across the whole span in the middle of a cut panel, stronger than the cuts (at least
    ``floor``), is a boundary the layout does not have (e.g. three touching panels labelled as
    two, cut at an object's edge); an object's edge inside a panel is no stronger than the cuts."""
    for a, b in segments:
        mid = f[a - lo + (b - a) // 4 : a - lo + 3 * (b - a) // 4]
        if mid.size and float(mid.max()) >= floor:
            at = a + (b - a) // 4 + int(np.argmax(mid))
            raise PanelDetectionError(
                f"cannot cut the grid into {g.rows}x{g.cols} panels: no gutter, and a colour edge crosses the whole "
                f"image inside the panel at {a}-{b} px ({'y' if axis == 0 else 'x'}={at} px): the image may show "
                "more panels than the layout; rejected rather than guessed"
            )


def _no_step_inside_panels(lines: np.ndarray, s: np.ndarray, g: _Grid, axis: int, lo: int, segments,
                           across: tuple[tuple[tuple[int, int], ...], int]) -> None:  # fmt: skip
    """A one-line step across most of the span (``_step_profile`` at least _STEP_HIDDEN) in the middle
    of a panel, with no other step within _BAND_REACH lines, is the seam of two photos placed edge to
    edge where the layout has none (a 2x2 of touching photos labelled 1x2, its row seam faint where
    two grey photos meet): within one photo, neighbouring lines are alike, and only a thin band's
    two edges step like that. ``lines``: the axis's sampled lines; ``s``: their ``_step_profile``;
    ``across``: the other axis's panels and where its span starts."""
    # a thin band's two edges are the photo's own line, and a step out of a flat line (a flat margin
    # meeting drawn content) is a drawing's edge, unless it steps in every panel across at once: one
    # drawing's edge does not continue through the next panel, a row of crops that end on one line does
    # (a 3x3 of a silhouette on white labelled 1x3, the silhouettes cut off on the hidden row seams)
    drawn = _flat_band_edges(lines) & ~_steps_in_every_panel(lines, *across)
    lone = np.where((band_partner(s) < 0.5 * s) & ~drawn, s, 0.0)
    for a, b in segments:
        i0 = a - lo + (b - a) // 4
        mid = lone[i0 : a - lo + 3 * (b - a) // 4]
        if mid.size and float(mid.max()) >= _STEP_HIDDEN:
            at = lo + i0 + int(np.argmax(mid))
            raise PanelDetectionError(
                f"cannot cut the grid into {g.rows}x{g.cols} panels: no gutter, and a one-line step crosses "
                f"{float(mid.max()):.0%} of the image inside the panel at {a}-{b} px ({'y' if axis == 0 else 'x'}={at} px): "
                "the seam of photos the layout does not have; rejected rather than guessed"
            )


def _steps_in_every_panel(lines: np.ndarray, panels: tuple[tuple[int, int], ...], lo: int) -> np.ndarray:
    """e[y]: whether the step into line y stands out in _STEP_EVERY of each of two or more ``panels`` along
    the lines (their (start, end) px; the span starts at ``lo``), each judged on its own stretch."""
    if len(panels) < 2:
        return np.zeros(len(lines), bool)
    every = np.ones(len(lines), bool)
    scale = lines.shape[1] / (panels[-1][1] - lo)  # the lines are sampled along their length
    for a, b in panels:
        every &= _step_profile(lines[:, round((a - lo) * scale) : round((b - lo) * scale)]) >= _STEP_EVERY
    return every


def _stands_out(u: np.ndarray, reach: int) -> np.ndarray:
    """Where ``u`` is _HID_ALONE or more, or 1 / _HID_STANDOUT times every other value 4 to ``reach`` lines away."""
    return (u >= _HID_ALONE) | (band_partner(u, first=4, reach=reach) <= _HID_STANDOUT * u)


def _peaks_at_both_thirds(u: np.ndarray, window: float, cuts: list[int]) -> np.ndarray:
    """The strongest line near each third of the axis, when both beat every line elsewhere (the cuts' own
    lines, within ``window``, aside): the two hidden seams of a 3x3 labelled 3x1, as faint as each other (a
    rival within a tenth of the span hides either alone), and two such lines at the thirds by chance are rare."""
    idx = np.arange(len(u))
    near = [np.abs(idx - len(u) * i / 3) <= window for i in (1, 2)]
    elsewhere = ~(near[0] | near[1])
    for c in cuts:
        elsewhere &= np.abs(idx - c) > window
    peaks = [int(np.argmax(np.where(w, u, -1.0))) for w in near]
    mark = np.zeros(len(u), bool)
    if min(u[p] for p in peaks) > (float(u[elsewhere].max()) if elsewhere.any() else 0.0):
        mark[peaks] = True
    return mark


def _no_unrelated_lines_inside_panels(g: _Grid, span: tuple[int, int, int, int], segs, profiles, steps) -> None:
    """Unrelated lines in the middle of a cut panel, at an even split of the grid into 2 or 3 panels (the
    largest layout drawn), marked as _DECOR_HIDDEN's comment says: the seam of two crops of one grainy photo
    where the layout has none (a 3x3 of grass labelled 1x3), which neither a sharp edge nor a step shows.
    The cuts' own seams set the bar: grain that hides one seam hides them all alike, and a wrong layout
    is worse than a lost grid. ``profiles``: ``_unrelated_profile`` of each axis's sampled lines."""
    y0, _, x0, _ = span
    at_cuts = [float(u[max(0, a - lo - 2) : a - lo + 3].max())
               for u, lo, axis_segs in zip(profiles, (y0, x0), segs, strict=True) for a, _ in axis_segs[1:]]  # fmt: skip
    bar = max(_DECOR_HIDDEN, 0.5 * min(at_cuts, default=1.0))
    for axis, (u, lo, axis_segs) in enumerate(zip(profiles, (y0, x0), segs, strict=True)):
        length = len(u)
        window = split_tolerance(length, g.cfg)
        at_split = near_even_split(np.arange(length), length, g.cfg, most=3)
        stepped = sliding_window_view(np.pad(steps[axis], 2), 5, axis=0).max(axis=1)
        cuts = [a - lo for a, _ in axis_segs[1:]]
        out = _stands_out(u, max(4, length // 10)) | (stepped >= _HID_STEP) | _peaks_at_both_thirds(u, window, cuts)
        marked = np.where(at_split & out, u, 0.0)
        for a, b in axis_segs:
            i0 = a - lo + (b - a) // 4
            hit = marked[i0 : a - lo + 3 * (b - a) // 4]
            if hit.size and float(hit.max()) >= bar:
                at = a + (b - a) // 4 + int(np.argmax(hit))
                raise PanelDetectionError(
                    f"cannot cut the grid into {g.rows}x{g.cols} panels: no gutter, and the lines either side of "
                    f"{'y' if axis == 0 else 'x'}={at} px are unrelated across {float(hit.max()):.0%} of the image inside "
                    f"the panel at {a}-{b} px: the seam of photos the layout does not have; rejected rather than guessed"
                )


def _flat_band_edges(lines: np.ndarray, tolerance: int = 20, share: float = 0.9) -> np.ndarray:
    """e[y]: whether line y or y-1 is flat (``share`` of it within ``tolerance`` of its mean), not both."""
    a = lines.astype(np.int16)
    mean = a.mean(axis=1, dtype=np.float32).round().astype(np.int16)
    flat = (channel_max(np.abs(a - mean[:, None, :])) <= tolerance).mean(axis=1) >= share
    e = np.zeros(len(a), bool)
    e[1:] = flat[1:] != flat[:-1]
    return e


def cfg_strong(cfg: PanelsConfig) -> float:
    return max(cfg.min_edge_fraction, 0.85)
