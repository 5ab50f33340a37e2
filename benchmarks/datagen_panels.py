"""How fast does the panels stage cut grids? Panels per second for 1024x1024 2x2 and 3x3 grids.

Measures detect_panels + cut_panels on synthetic textured grids (white gutters, thin border) and,
separately, the full per-grid work of the stage (PNG decode, detection, cut, PNG encode of the
panels). Run: `.venv/bin/python benchmarks/datagen_panels.py [--grids N]`.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datagen.panels import cut_panels, detect_panels  # noqa: E402


def synthetic_grid(rows: int, cols: int, size: int = 1024, gutter: int = 16, border: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 255, np.uint8)
    pw = (size - 2 * border - (cols - 1) * gutter) // cols
    ph = (size - 2 * border - (rows - 1) * gutter) // rows
    for r in range(rows):
        for c in range(cols):
            base = rng.integers(0, 256, size=(ph // 16, pw // 16, 3)).astype(np.uint8)
            tex = np.asarray(Image.fromarray(base).resize((pw, ph), Image.BILINEAR)).astype(np.int16)
            tex = np.clip(tex + rng.integers(-30, 31, size=tex.shape), 0, 255).astype(np.uint8)
            y, x = border + r * (ph + gutter), border + c * (pw + gutter)
            img[y : y + ph, x : x + pw] = tex
    return img


def bench(rows: int, cols: int, n: int) -> dict[str, float]:
    grids = [synthetic_grid(rows, cols, seed=i) for i in range(n)]
    pngs = []
    for g in grids:
        buf = io.BytesIO()
        Image.fromarray(g).save(buf, "PNG")
        pngs.append(buf.getvalue())
    t0 = time.perf_counter()
    for g in grids:
        boxes = detect_panels(g, rows, cols)
        assert len(boxes) == rows * cols
        cut_panels(g, boxes)
    detect_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for raw in pngs:
        with Image.open(io.BytesIO(raw)) as im:
            img = im.convert("RGB")
        for panel in cut_panels(img, detect_panels(img, rows, cols)):
            panel.save(io.BytesIO(), "PNG")
    full_s = time.perf_counter() - t0
    panels = n * rows * cols
    return {"detect+cut panels/s": panels / detect_s, "detect ms/grid": 1000 * detect_s / n,
            "with PNG io panels/s": panels / full_s, "with PNG io ms/grid": 1000 * full_s / n}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, default=20)
    args = parser.parse_args()
    print(f"panels stage throughput, 1024x1024 grids, {args.grids} grids per layout, 1 process")
    for rows, cols in ((2, 2), (3, 3)):
        res = bench(rows, cols, args.grids)
        print(f"  {rows}x{cols}: " + ", ".join(f"{k} {v:.1f}" for k, v in res.items()))


if __name__ == "__main__":
    main()
