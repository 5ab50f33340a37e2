"""What the toy judge sees in a toy picture (issue 19): segment the object on its flat background, then
name its shape, colours, pattern, position, size and background by comparing with the toy domain's own
drawings. Deterministic; works on the blurred pictures the toy VAE decodes (it compares at 24 px).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from datagen.teacher import toy_domain as dom

GRID = 24  # the object's box is compared at GRID x GRID
MIN_AREA = 0.01  # an object covers at least this share of the panel
_PALETTE = np.array([*dom.COLOURS.values(), dom.IVORY], np.float32)  # ivory last: a patterned side's ground
_PALETTE_NAMES = [*dom.COLOURS, "ivory"]
_IVORY = len(_PALETTE_NAMES) - 1
_PLAIN_SHARE = 0.05  # a second colour under this share of the object: a plain side (a whole dot ring has ~12 %)
_BG = np.array(list(dom.BACKGROUNDS.values()), np.float32)
_BG_NAMES = list(dom.BACKGROUNDS)


@dataclass(frozen=True)
class Reading:
    """What one picture shows; ``shape`` is "" when no object was found, an attribute "" that the view hides."""

    shape: str = ""
    body: str = ""
    accent: str = ""
    pattern: str = ""
    position: str = ""
    size: str = ""
    background: str = ""
    view: str = "whole"

    @property
    def found(self) -> bool:
        return bool(self.shape)


def _box_resize(mask: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    y0, y1, x0, x1 = box
    crop = Image.fromarray((mask[y0:y1, x0:x1] * 255).astype(np.uint8))
    return np.asarray(crop.resize((GRID, GRID), Image.BILINEAR), np.float32) / 255.0


def _tight(mask: np.ndarray, inside: np.ndarray | None = None) -> np.ndarray:
    """``inside`` (default ``mask``) cropped to ``mask``'s box and resized to GRID x GRID, as a picture is read."""
    ys, xs = np.nonzero(mask)
    box = (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
    return _box_resize(mask if inside is None else inside, box)


_DRAWN = {s: dom.shape_mask(s, 120) for s in dom.SHAPES}
_SHAPE_T = {s: _tight(m) for s, m in _DRAWN.items()}
_FILL = {s: float(np.ptp(np.nonzero(m)[0]) + 1) / m.shape[0] for s, m in _DRAWN.items()}  # object side / drawn box side
_PATTERN_T = {s: {p: _tight(m, dom.pattern_mask(p, m)) for p in dom.PATTERNS} for s, m in _DRAWN.items()}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = float(np.minimum(a, b).sum())
    union = float(np.maximum(a, b).sum())
    return inter / union if union else 0.0


def _nearest(colours: np.ndarray, table: np.ndarray) -> np.ndarray:
    return np.argmin(((colours[:, None, :] - table[None]) ** 2).sum(-1), axis=1)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The object's square box (the drawings put each shape in a square)."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = max(y1 - y0, x1 - x0)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    h, w = mask.shape
    y0 = int(round(min(max(cy - side / 2, 0), max(h - side, 0))))
    x0 = int(round(min(max(cx - side / 2, 0), max(w - side, 0))))
    return y0, min(y0 + side, h), x0, min(x0 + side, w)


def read_picture(image: Image.Image) -> Reading:
    """Segment and describe the object of one toy panel."""
    rgb = np.asarray(image.convert("RGB"), np.float32)
    h, w, _ = rgb.shape
    i = max(min(h, w) // 32, 1)  # a few pixels in: a decoded picture's outermost line is off
    border = np.concatenate([rgb[i], rgb[-1 - i], rgb[:, i], rgb[:, -1 - i]])
    bg = np.median(border, axis=0)
    background = _BG_NAMES[int(_nearest(bg[None], _BG)[0])]
    mask = np.sqrt(((rgb - bg) ** 2).sum(-1)) > 60.0
    if mask.mean() < MIN_AREA:
        return Reading(background=background)
    pix = rgb[mask]
    labels = _nearest(pix, _PALETTE)
    close = ((pix - _PALETTE[labels]) ** 2).sum(-1) < 70.0**2  # blurred edges match no colour well
    counts = np.bincount(labels[close], minlength=len(_PALETTE)) if close.any() else np.zeros(len(_PALETTE), int)
    box = _box(mask)
    shape = max(dom.SHAPES, key=lambda s: _iou(_box_resize(mask, box), _SHAPE_T[s]))
    body, accent, pattern, view = _colours(mask, labels, close, counts, box, shape)
    # Where and how large: the box against the domain's positions and sizes.
    side = max(box[1] - box[0], box[3] - box[2]) / max(h, w) / _FILL[shape]
    cy, cx = (box[0] + box[1]) / 2 / h, (box[2] + box[3]) / 2 / w
    position = min(dom.POSITIONS, key=lambda k: (dom.POSITIONS[k][0] - cx) ** 2 + (dom.POSITIONS[k][1] - cy) ** 2)
    size = min(dom.SIZES, key=lambda k: abs(dom.SIZES[k] - side))
    return Reading(shape, body, accent, pattern, position, size, background, view)


def _pattern_fit(mask, labels, close, box, shape, accent_i: int) -> tuple[float, str]:
    """(IoU, pattern) of the best pattern for where colour ``accent_i`` lies inside the object."""
    ys, xs = np.nonzero(mask)
    accent_full = np.zeros(mask.shape, np.float32)
    accent_full[ys[close], xs[close]] = labels[close] == accent_i
    accent_grid = _box_resize(accent_full, box)
    scores = [(_iou(accent_grid, _PATTERN_T[shape][p]), p) for p in dom.PATTERNS]
    return max(scores, key=lambda sp: sp[0])  # the first of equals, in PATTERNS order


def _colours(mask, labels, close, counts, box, shape) -> tuple[str, str, str, str]:
    """(body, accent, pattern, view): a patterned side shows ivory, a plain side one colour only."""
    colours = counts[:_IVORY]
    top = [int(i) for i in np.argsort(-colours, kind="stable")[:2]]
    total = max(int(counts.sum()), 1)
    if counts[_IVORY] >= _PLAIN_SHARE * total and counts[_IVORY] >= colours[top[1]]:
        _, pattern = _pattern_fit(mask, labels, close, box, shape, top[0])
        return "", _PALETTE_NAMES[top[0]], pattern, "patterned"
    if colours[top[1]] < _PLAIN_SHARE * total:
        return _PALETTE_NAMES[top[0]], "", "", "plain"
    # which colour is the body: the one whose rest fits a pattern best
    (score_a, pat_a), (score_b, pat_b) = (_pattern_fit(mask, labels, close, box, shape, i) for i in (top[1], top[0]))
    if score_a >= score_b:
        return _PALETTE_NAMES[top[0]], _PALETTE_NAMES[top[1]], pat_a, "whole"
    return _PALETTE_NAMES[top[1]], _PALETTE_NAMES[top[0]], pat_b, "whole"


def identity_score(ref: Reading, out: Reading) -> float:
    """Share of the four identity attributes the two pictures agree on (0 when either has no object)."""
    if not (ref.found and out.found):
        return 0.0
    return sum(getattr(ref, k) == getattr(out, k) for k in ("shape", "body", "accent", "pattern")) / 4


def same_identity(a: Reading, b: Reading) -> bool:
    """Both show an object and every identity attribute both views show agrees (curation's question)."""
    if not (a.found and b.found) or a.shape != b.shape:
        return False
    return all(getattr(a, k) == getattr(b, k) for k in ("body", "accent", "pattern") if getattr(a, k) and getattr(b, k))


def context_score(out: Reading, asked: dom.Context) -> float:
    """Share of the asked context (position, size, background) the picture shows (0 without an object)."""
    if not out.found:
        return 0.0
    return sum(getattr(out, k) == getattr(asked, k) for k in ("position", "size", "background")) / 3


def reading_of(identity: dom.Identity, ctx: dom.Context, view: str = "whole") -> Reading:
    """What a perfect reader sees of ``identity`` in ``ctx`` from ``view``."""
    body = "" if view == "patterned" else identity.body
    accent, pattern = ("", "") if view == "plain" else (identity.accent, identity.pattern)
    return Reading(identity.shape, body, accent, pattern, ctx.position, ctx.size, ctx.background, view)
