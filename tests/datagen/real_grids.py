"""Teacher-like grids assembled at run time from real photographs, with known panel boxes.

Test-only code: the detector tests and ``benchmarks.datagen_panels --real`` import it from here.

The photographs are the ones shipped inside the scikit-image wheel (``skimage/data``: astronaut,
coffee, chelsea, rocket, motorcycles, retina, hubble, ...) and matplotlib's sample data
(grace_hopper.jpg); nothing is downloaded and no image is kept in git. No installed package ships
diffusion-generated pictures, so the set has photographs only. ``use_photos(folder)`` swaps in the photos
of any folder (the same kinds and seeds from other pictures: a held-out check of the detector).

Kinds (``KINDS``) follow issue 16's table, plus same-subject grids drawn at a wrong layout (crops of one
photo hide their seams as well as they hide the right layout's; 4 in 600 were cut before the hidden-seam
checks). Each grid is seeded; some panels are made hard on purpose:
a white studio wall at the side next to a white gutter, a dark photo (or a side fading to black)
next to a black gutter, a flat strip inside a photo near its edge (a pilaster), and, for touching
photos, panels whose colours are pulled together at the seam.
"""

from __future__ import annotations

import io
from functools import cache
from importlib.resources import files
from pathlib import Path

import numpy as np
from PIL import Image

from datagen.panels import Box
from tests.datagen.synthetic_grids import SynthGrid

KINDS = ("white_gutter", "black_gutter", "coloured_gutter", "touching", "uneven_gutter", "thin_border",
         "jpeg_noise", "same_subject", "seam_matched", "mismatch", "same_subject_mismatch")  # fmt: skip
SAME_SUBJECT = ("same_subject", "same_subject_mismatch")  # every panel a crop of one photo
MISMATCH_KINDS = ("mismatch", "same_subject_mismatch")  # drawn at one layout, labelled another: must reject
LAYOUTS = ((1, 2), (2, 1), (2, 2), (1, 3), (3, 1), (3, 3))
# (drawn as, labelled as)
MISMATCHES = (((3, 3), (1, 3)), ((3, 3), (3, 1)), ((2, 2), (1, 2)), ((1, 3), (1, 2)), ((2, 1), (2, 2)),
              ((1, 2), (2, 2)), ((3, 1), (2, 1)), ((2, 2), (3, 3)), ((1, 3), (3, 1)), ((2, 2), (2, 1)))  # fmt: skip
_SKIMAGE = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
            "retina.jpg", "hubble_deep_field.jpg", "ihc.png", "camera.png", "coins.png", "moon.png", "brick.png",
            "grass.png", "gravel.png", "cell.png", "page.png", "horse.png", "clock_motion.png", "color.png")  # fmt: skip
DARK = ("rocket.jpg", "retina.jpg", "hubble_deep_field.jpg", "moon.png", "cell.png")
WHITE, BLACK = (255, 255, 255), (0, 0, 0)
_FOLDER: list[Path] = []  # use_photos' folder, when one is in use
_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def use_photos(folder: Path | None) -> None:
    """Build the grids from every picture in ``folder`` from now on (None: the packages' photos again)."""
    _FOLDER[:] = [Path(folder)] if folder is not None else []
    photos.cache_clear()
    dark_photos.cache_clear()


@cache
def dark_photos() -> tuple[str, ...]:
    """The photos put next to black gutters: DARK, or for a folder's pictures the darkest (mean below 60)."""
    if not _FOLDER:
        return DARK
    return tuple(name for name, img in photos().items() if float(img.mean()) < 60)


@cache
def photos() -> dict[str, np.ndarray]:
    """name -> RGB uint8 array of every photograph used (greyscale ones as grey RGB, alpha over white)."""
    import matplotlib.cbook

    if _FOLDER:
        sources = {p.name: p for p in sorted(_FOLDER[0].iterdir()) if p.suffix.lower() in _SUFFIXES}
        if not sources:
            raise FileNotFoundError(f"{_FOLDER[0]}: no {'/'.join(_SUFFIXES)} picture to build grids from")
    else:
        sources = {name: files("skimage") / "data" / name for name in _SKIMAGE}
        sources["grace_hopper.jpg"] = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    out = {}
    for name, path in sources.items():
        with Image.open(str(path)) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            out[name] = np.asarray(im.convert("RGB"))
    return out


def photo_panel(name: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of photo ``name`` with the panel's aspect, resized to ``h`` x ``w``."""
    src = photos()[name]
    sh, sw = src.shape[:2]
    scale = float(rng.uniform(0.6, 1.0))
    ch = min(sh, int(sw * h / w)) * scale
    cw = ch * w / h
    y0 = int(rng.uniform(0, sh - ch + 1e-6))
    x0 = int(rng.uniform(0, sw - cw + 1e-6))
    crop = Image.fromarray(src[y0 : y0 + max(2, int(ch)), x0 : x0 + max(2, int(cw))])
    return np.array(crop.resize((w, h), Image.LANCZOS))


def _ramp(n: int, width: int, fade: int) -> np.ndarray:
    """1 over ``width`` lines from the start, fading to 0 over ``fade`` lines."""
    x = np.arange(n, dtype=np.float32)
    return np.clip(1.0 - (x - width) / max(1, fade), 0.0, 1.0)


def _to_side(panel: np.ndarray, weight: np.ndarray, side: str) -> np.ndarray:
    """A per-pixel weight map from a 1-D ramp measured from ``side`` ("left", "right", "top", "bottom")."""
    h, w = panel.shape[:2]
    if side in ("left", "right"):
        wt = weight[:w] if side == "left" else weight[:w][::-1]
        return np.broadcast_to(wt[None, :, None], (h, w, 1))
    wt = weight[:h] if side == "top" else weight[:h][::-1]
    return np.broadcast_to(wt[:, None, None], (h, w, 1))


def wall(panel: np.ndarray, side: str, colour: tuple, rng: np.random.Generator, full: bool = True) -> np.ndarray:
    """A flat wall of ``colour`` (a white studio wall, a black night) covering the panel's ``side``:
    the whole side (``full``) or all but a stretch at one end (a floor, a subject touching the edge)."""
    h, w = panel.shape[:2]
    length = w if side in ("left", "right") else h
    width = int(length * rng.uniform(0.12, 0.35))
    weight = _to_side(panel, _ramp(length, width, int(length * 0.1)), side).copy()
    if not full:
        along = h if side in ("left", "right") else w
        keep = int(along * rng.uniform(0.1, 0.4))  # the end of the side where the photo shows
        if side in ("left", "right"):
            weight[along - keep :] = 0
        else:
            weight[:, along - keep :] = 0
    tone = np.array(colour, np.float32) + rng.normal(0, 1.2, panel.shape)
    out = panel.astype(np.float32) * (1 - weight) + tone * weight
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def strip(panel: np.ndarray, side: str, rng: np.random.Generator) -> np.ndarray:
    """A flat strip across the whole panel near ``side`` (a pilaster, a door frame), 4-15 px wide."""
    out = panel.copy()
    width, offset = int(rng.integers(4, 16)), int(rng.integers(4, 30))
    colour = np.array([int(v) for v in rng.integers(60, 240, 3)], np.int16)
    h, w = panel.shape[:2]
    length = w if side in ("left", "right") else h
    a = offset if side in ("left", "top") else length - offset - width
    noise = rng.integers(-2, 3, (h, w, 3))
    flat = np.clip(colour + noise, 0, 255).astype(np.uint8)
    if side in ("left", "right"):
        out[:, a : a + width] = flat[:, a : a + width]
    else:
        out[a : a + width] = flat[a : a + width]
    return out


def _sizes(total: int, n: int, rng: np.random.Generator, jitter: float) -> list[int]:
    weights = 1 + rng.uniform(-jitter, jitter, n)
    sizes = np.floor(total * weights / weights.sum()).astype(int)
    sizes[-1] = total - sizes[:-1].sum()
    return [int(s) for s in sizes]


def _style(kind: str, rng: np.random.Generator) -> dict:
    """Gutter colour, gutter widths rule, border, and the hard-case recipe of a kind."""
    gutter = int(rng.integers(8, 25))
    style = {"colour": WHITE, "gutter": gutter, "uneven": False, "border": 0, "border_colour": None, "jpeg": False}
    if kind == "black_gutter":
        style["colour"] = BLACK
    elif kind == "coloured_gutter":
        style["colour"] = tuple(int(v) for v in rng.integers(0, 256, 3))
    elif kind in ("touching", "seam_matched"):
        style["gutter"] = 0
    elif kind == "uneven_gutter":
        style.update(uneven=True, colour=[WHITE, BLACK, (128, 128, 128)][int(rng.integers(0, 3))])
    elif kind == "thin_border":
        style["border"] = int(rng.integers(2, 9))
        style["border_colour"] = WHITE if rng.random() < 0.5 else tuple(int(v) for v in rng.integers(0, 256, 3))
        style["colour"] = WHITE if rng.random() < 0.6 else BLACK
    elif kind == "jpeg_noise":
        style.update(jpeg=True, colour=[WHITE, BLACK, tuple(int(v) for v in rng.integers(0, 256, 3))][int(rng.integers(0, 3))])
    elif kind in (*SAME_SUBJECT, "mismatch"):
        style["gutter"] = 0 if rng.random() < 0.4 else gutter
    if kind in ("white_gutter", "black_gutter", "coloured_gutter", "uneven_gutter", "jpeg_noise") and rng.random() < 0.3:
        style["border"] = int(rng.integers(4, 21))
    if style["border"] and style["border_colour"] is None:
        style["border_colour"] = style["colour"]
    return style


def _hard(panel: np.ndarray, kind: str, style: dict, name: str, rng: np.random.Generator) -> np.ndarray:
    """Make some panels hard on purpose (see the module docstring)."""
    side = ("left", "right", "top", "bottom")[int(rng.integers(0, 4))]
    roll = rng.random()
    if style["gutter"] and style["colour"] == WHITE and roll < 0.35:
        return wall(panel, side, (int(rng.integers(246, 256)),) * 3, rng, full=rng.random() < 0.5)
    if style["gutter"] and style["colour"] == BLACK and roll < 0.35 and name not in dark_photos():
        return wall(panel, side, (int(rng.integers(0, 10)),) * 3, rng, full=rng.random() < 0.5)
    if roll > 0.8:
        return strip(panel, side, rng)
    return panel


def _match_seams(img: np.ndarray, boxes: list[Box]) -> np.ndarray:
    """Pull every panel's colours near its sides to the grid's common side colour (a smooth offset
    fading over 48 px), so touching panels meet in the same colour; their texture stays."""
    out = img.astype(np.float32)
    margins = [out[b.y0 : b.y1, b.x0 : b.x1] for b in boxes]
    common = np.mean([_margin_mean(m) for m in margins], axis=0)
    for b, panel in zip(boxes, margins, strict=True):
        h, w = panel.shape[:2]
        dy = np.minimum(np.arange(h), np.arange(h)[::-1])[:, None]
        dx = np.minimum(np.arange(w), np.arange(w)[::-1])[None, :]
        weight = np.clip(1 - np.minimum(dy, dx) / 48.0, 0, 1)[..., None]
        out[b.y0 : b.y1, b.x0 : b.x1] = panel + weight * (common - _margin_mean(panel))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _margin_mean(panel: np.ndarray) -> np.ndarray:
    m = 12
    parts = [panel[:m].reshape(-1, 3), panel[-m:].reshape(-1, 3), panel[:, :m].reshape(-1, 3), panel[:, -m:].reshape(-1, 3)]
    return np.concatenate(parts).mean(axis=0)


def make_real_grid(kind: str, layout: tuple[int, int], seed: int, size: int = 768,
                   drawn: tuple[int, int] | None = None) -> SynthGrid:  # fmt: skip
    """One grid of ``kind`` from real photographs, drawn as ``drawn`` (default ``layout``), labelled ``layout``."""
    rng = np.random.default_rng(seed)
    rows, cols = drawn or layout
    width, height = (int(size * rng.uniform(0.92, 1.1)) for _ in range(2))
    style = _style(kind, rng)
    names = sorted(photos())
    border = style["border"]
    gx = [int(rng.integers(4, 33)) if style["uneven"] else style["gutter"] for _ in range(cols - 1)]
    gy = [int(rng.integers(4, 33)) if style["uneven"] else style["gutter"] for _ in range(rows - 1)]
    jitter = 0.015 if style["uneven"] else 0.0
    col_w = _sizes(width - 2 * border - sum(gx), cols, rng, jitter)
    row_h = _sizes(height - 2 * border - sum(gy), rows, rng, jitter)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = style["border_colour"] or style["colour"]
    img[border : height - border, border : width - border] = style["colour"]
    chosen = rng.permutation(len(names))
    if style["colour"] == BLACK and rng.random() < 0.5:  # dark photos next to black gutters
        dark = [i for i, n in enumerate(names) if n in dark_photos()]
        chosen = np.concatenate([rng.permutation(dark), chosen])
    subject = names[int(rng.integers(0, len(names)))]
    boxes, y, k = [], border, 0
    for r, h in enumerate(row_h):
        x = border
        for c, w in enumerate(col_w):
            name = subject if kind in SAME_SUBJECT else names[int(chosen[k % len(chosen)])]
            panel = photo_panel(name, h, w, rng)
            if kind not in ("seam_matched",):
                panel = _hard(panel, kind, style, name, rng)
            img[y : y + h, x : x + w] = panel
            boxes.append(Box(x, y, x + w, y + h))
            x += w + (gx[c] if c < cols - 1 else 0)
            k += 1
        y += h + (gy[r] if r < rows - 1 else 0)
    if kind == "seam_matched":
        img = _match_seams(img, boxes)
    if style["jpeg"]:
        noisy = img.astype(np.int16) + np.round(rng.normal(0, 2.5, img.shape)).astype(np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=75)
        img = np.asarray(Image.open(buf).convert("RGB"))
    return SynthGrid(img, layout[0], layout[1], (rows, cols), boxes, [subject] * len(boxes), kind)


def bench_grid(kind: str, i: int, sizes: tuple[int, ...] = (768, 1024), seed: int = 0) -> SynthGrid:
    """The ``i``-th grid of ``kind`` in ``real_grid_set(..., sizes, seed)`` (a benchmark case for a test)."""
    size = sizes[i % len(sizes)]
    s = seed * 1_000_003 + KINDS.index(kind) * 10_007 + i
    if kind in MISMATCH_KINDS:
        drawn, label = MISMATCHES[(i // len(sizes)) % len(MISMATCHES)]
        return make_real_grid(kind, label, s, size, drawn=drawn)
    return make_real_grid(kind, LAYOUTS[(i // len(sizes)) % len(LAYOUTS)], s, size)


def real_grid_set(per_kind: int, sizes: tuple[int, ...] = (768, 1024), seed: int = 0) -> list[SynthGrid]:
    """``per_kind`` grids of every kind: layouts and sizes in turn (mismatches from ``MISMATCHES``)."""
    return [bench_grid(kind, i, sizes, seed) for kind in KINDS for i in range(per_kind)]
