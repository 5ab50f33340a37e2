"""Synthetic teacher grids with known panel boxes and identities, in every style the panels stage
must handle, plus deliberate layout mismatches (a grid drawn as one layout, labelled as another).

Test-only code: the detector tests and ``benchmarks.datagen_panels`` import it from here.

Styles: flat (solid backgrounds and shapes: logos, icons, vector art), textured, photo (smooth
colour fields), lineart (dark strokes on paper, framed panels), dark (dark panels, black gutters),
coloured_gutter, black_gutter, no_gutter (touching panels), uneven (gutters of different widths,
panels a few percent unequal), border (thick outer frame, sometimes of another colour than the
gutters) and noisy_jpeg (light noise, then JPEG). Every panel of a grid shows the grid's identity
(a subject: shape kind, palette, proportions) in a different pose, so ``identities`` is the same
string for all panels of one grid; a mis-cut crop shows parts of two panels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from datagen.panels import Box

STYLES = ("flat", "textured", "photo", "lineart", "dark", "coloured_gutter", "black_gutter", "no_gutter",
          "uneven", "border", "noisy_jpeg")  # fmt: skip
LAYOUTS = ((2, 2), (1, 2), (2, 1), (1, 3), (3, 3))
# (drawn as, labelled as): the picture contradicts the prompt on at least one axis.
MISMATCHES = (((1, 2), (2, 2)), ((2, 1), (2, 2)), ((2, 1), (1, 3)), ((2, 2), (3, 3)), ((1, 3), (1, 2)),
              ((2, 2), (1, 2)), ((3, 3), (2, 2)), ((1, 2), (2, 1)))  # fmt: skip
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


@dataclass
class SynthGrid:
    image: np.ndarray
    rows: int  # the layout the prompt asked for
    cols: int
    drawn: tuple[int, int]  # the layout actually drawn
    boxes: list[Box]  # true panel boxes of the drawn layout, row-major
    identities: list[str]
    style: str

    @property
    def mismatch(self) -> bool:
        return self.drawn != (self.rows, self.cols)


def _contrast(a, b) -> int:
    return max(abs(int(x) - int(y)) for x, y in zip(a, b, strict=True))


def _colour(rng: np.random.Generator, avoid=(), lo: int = 0, hi: int = 256, min_contrast: int = 70) -> tuple:
    for _ in range(200):
        c = tuple(int(v) for v in rng.integers(lo, hi, 3))
        if all(_contrast(c, a) >= min_contrast for a in avoid):
            return c
    raise RuntimeError("no colour found")


def _sizes(total: int, n: int, rng: np.random.Generator, jitter: float) -> list[int]:
    weights = 1 + rng.uniform(-jitter, jitter, n)
    sizes = np.floor(total * weights / weights.sum()).astype(int)
    sizes[-1] = total - sizes[:-1].sum()
    return [int(s) for s in sizes]


def _subject(draw: ImageDraw.ImageDraw, w: int, h: int, ident: np.random.Generator, pose: np.random.Generator,
             outline_only: bool = False) -> None:
    """The identity's subject: a body shape, a second shape and an eye, placed by ``pose``."""
    kind = int(ident.integers(0, 3))
    body, accent = tuple(int(v) for v in ident.integers(0, 256, 3)), tuple(int(v) for v in ident.integers(0, 256, 3))
    aspect = float(ident.uniform(0.6, 1.4))
    scale = float(pose.uniform(0.35, 0.6))
    cx, cy = w * float(pose.uniform(0.35, 0.65)), h * float(pose.uniform(0.35, 0.65))
    bw, bh = scale * w * aspect / 2, scale * h / aspect / 2
    box = [cx - bw, cy - bh, cx + bw, cy + bh]
    fill = None if outline_only else body
    line = (20, 20, 20) if outline_only else None
    width = 3 if outline_only else 1
    if kind == 0:
        draw.ellipse(box, fill=fill, outline=line, width=width)
    elif kind == 1:
        draw.rectangle(box, fill=fill, outline=line, width=width)
    else:
        draw.polygon([(cx, cy - bh), (cx + bw, cy + bh), (cx - bw, cy + bh)], fill=fill, outline=line, width=width)
    r = min(bw, bh) * 0.3
    draw.ellipse([cx - r, cy - bh * 0.4 - r, cx + r, cy - bh * 0.4 + r], fill=None if outline_only else accent,
                 outline=line, width=width)  # fmt: skip


def _smooth_field(h: int, w: int, rng: np.random.Generator, lo: int = 0, hi: int = 256) -> np.ndarray:
    base = rng.integers(lo, hi, size=(4, 4, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC), dtype=np.uint8)


def _panel(style: str, h: int, w: int, ident: np.random.Generator, pose: np.random.Generator, bg: tuple
           ) -> np.ndarray:  # fmt: skip
    ident_state = ident.bit_generator.state
    if style == "photo" or (style == "no_gutter" and pose.random() < 0.5):
        img = Image.fromarray(_smooth_field(h, w, pose))
        _subject(ImageDraw.Draw(img), w, h, ident, pose)
        arr = np.asarray(img.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.int16)
        arr += pose.integers(-3, 4, arr.shape)
    elif style == "lineart":
        img = Image.new("RGB", (w, h), bg)
        draw = ImageDraw.Draw(img)
        _subject(draw, w, h, ident, pose, outline_only=True)
        for _ in range(3):  # a few loose strokes of the scene
            x, y = float(pose.uniform(0, w)), float(pose.uniform(0, h))
            draw.line([x, y, x + float(pose.uniform(-60, 60)), y + float(pose.uniform(-60, 60))], fill=(40, 40, 40), width=2)
        frame = int(pose.integers(2, 4))
        draw.rectangle([0, 0, w - 1, h - 1], outline=(25, 25, 25), width=frame)
        arr = np.asarray(img, dtype=np.int16)
    else:
        img = Image.new("RGB", (w, h), bg)
        _subject(ImageDraw.Draw(img), w, h, ident, pose)
        arr = np.asarray(img, dtype=np.int16)
        if style in ("textured", "black_gutter", "uneven", "border") and style != "flat":
            arr = arr + (_smooth_field(h, w, pose, 0, 50).astype(np.int16) - 25) + pose.integers(-12, 13, arr.shape)
        elif style == "dark":  # the subject dimmed halfway to the dark background
            arr = (arr + np.array(bg, np.int16)) // 2 + pose.integers(-6, 7, arr.shape)
    ident.bit_generator.state = ident_state  # every panel draws the same identity
    return np.clip(arr, 0, 255).astype(np.uint8)


def _palette(style: str, rng: np.random.Generator) -> tuple[tuple, tuple]:
    """(gutter colour, panel background colour) of a style."""
    if style == "dark":
        return BLACK, _colour(rng, [BLACK], 50, 90, 45)
    if style == "black_gutter":
        gutter = BLACK
    elif style == "coloured_gutter":
        gutter = _colour(rng, [])
    else:
        gutter = WHITE
    if style == "lineart":  # tinted paper; on white paper only the thin frames would separate panels
        return gutter, (244, 236, 214)
    return gutter, _colour(rng, [gutter])


def make_grid(style: str, layout: tuple[int, int], seed: int, size: int = 512,
              drawn: tuple[int, int] | None = None) -> SynthGrid:  # fmt: skip
    """One grid of ``style`` drawn as ``drawn`` (default: ``layout``) and labelled ``layout``."""
    rng = np.random.default_rng(seed)
    rows, cols = drawn or layout
    width, height = (int(size * rng.uniform(0.9, 1.15)) for _ in range(2))
    gutter_colour, bg = _palette(style, rng)
    gutter = 0 if style == "no_gutter" else int(rng.integers(6, 25))
    border = int(rng.integers(size // 50, size // 16)) if style == "border" else int(rng.choice([0, 0, int(rng.integers(4, 20))]))
    border_colour = gutter_colour
    if style == "border" and rng.random() < 0.5:
        border_colour = _colour(rng, [gutter_colour, bg])
    if style == "no_gutter":
        border_colour = _colour(rng, [])
    img = np.empty((height, width, 3), np.uint8)
    img[:] = border_colour
    gx = [int(rng.integers(4, 33)) if style == "uneven" else gutter for _ in range(cols - 1)]
    gy = [int(rng.integers(4, 33)) if style == "uneven" else gutter for _ in range(rows - 1)]
    jitter = 0.05 if style == "uneven" else 0.0
    col_w = _sizes(width - 2 * border - sum(gx), cols, rng, jitter)
    row_h = _sizes(height - 2 * border - sum(gy), rows, rng, jitter)
    img[border : height - border, border : width - border] = gutter_colour
    ident = np.random.default_rng(seed + 10_000)
    boxes, y = [], border
    for r, h in enumerate(row_h):
        x = border
        for c, w in enumerate(col_w):
            panel_bg = bg
            if style == "no_gutter":  # touching flat panels are only separable when their backgrounds differ
                near = [tuple(int(v) for v in img[y - 1, x]) if r else None, tuple(int(v) for v in img[y, x - 1]) if c else None]
                panel_bg = _colour(rng, [n for n in near if n is not None])
            img[y : y + h, x : x + w] = _panel(style, h, w, ident, rng, panel_bg)
            boxes.append(Box(x, y, x + w, y + h))
            x += w + (gx[c] if c < cols - 1 else 0)
        y += h + (gy[r] if r < rows - 1 else 0)
    if style == "noisy_jpeg":
        noisy = img.astype(np.int16) + np.round(rng.normal(0, 3, img.shape)).astype(np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=int(rng.integers(70, 90)))
        img = np.asarray(Image.open(buf).convert("RGB"))
    ident_name = f"subject-{seed}"
    return SynthGrid(img, layout[0], layout[1], (rows, cols), boxes, [ident_name] * len(boxes), style)


def grid_set(per_style: int, size: int = 512, seed: int = 0, mismatches_per_style: int = 0) -> list[SynthGrid]:
    """``per_style`` correct grids of every style (layouts in turn) and ``mismatches_per_style`` mismatches."""
    grids = []
    for s, style in enumerate(STYLES):
        for i in range(per_style):
            grids.append(make_grid(style, LAYOUTS[i % len(LAYOUTS)], seed * 1_000_003 + s * 10_007 + i, size))
        for i in range(mismatches_per_style):
            drawn, label = MISMATCHES[i % len(MISMATCHES)]
            grids.append(make_grid(style, label, seed * 1_000_003 + s * 10_007 + 5000 + i, size, drawn=drawn))
    return grids


def cut_is_right(got: list[Box], grid: SynthGrid, max_px: int = 3) -> bool:
    """Every box within ``max_px`` of the true box, in the same order (a mismatch is never right)."""
    if grid.mismatch or len(got) != len(grid.boxes):
        return False
    return all(
        max(abs(a - b) for a, b in zip(g.as_list(), t.as_list(), strict=True)) <= max_px
        for g, t in zip(got, grid.boxes, strict=True)
    )
