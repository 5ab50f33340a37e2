"""Panel detection on synthetic grids of every style: ours against the detector this project shipped
before (commit d293b4a, read from git), in one run on the same grids.

For each style (tests/datagen/synthetic_grids.py: flat, textured, photo, lineart, dark, coloured and
black gutters, no gutter, uneven gutters, thick borders, noise + JPEG) it reports the fraction of
grids cut with every box within 3 px of the truth, the fraction of deliberate layout mismatches
rejected, and the mis-cuts: grids cut into wrong boxes (or mismatches cut at all), with the pairs
those would send to curation (6 per grid, the default cap). Speed: grids per second of detection,
the two detectors interleaved grid by grid so machine load hits both alike.

Run: `.venv/bin/python -m benchmarks.datagen_panels [--per-style 20] [--size 1024]`.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from datagen.panels import PanelDetectionError, detect_panels
from tests.datagen.synthetic_grids import STYLES, cut_is_right, grid_set

REPO = Path(__file__).resolve().parents[1]

BEFORE = "d293b4a"  # the last commit with the previous detector
PAIRS_PER_GRID = 6


def previous_detector():
    """``detect_panels`` of datagen/panels.py as of BEFORE, loaded as a module of the datagen package."""
    source = subprocess.run(["git", "show", f"{BEFORE}:datagen/panels.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "panels_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("datagen._panels_before", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "datagen"
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module.detect_panels, module.PanelDetectionError


def run(per_style: int, size: int, seed: int) -> None:
    old_detect, old_error = previous_detector()
    detectors = {"ours": (detect_panels, PanelDetectionError), "before": (old_detect, old_error)}
    grids = grid_set(per_style, size=size, seed=seed, mismatches_per_style=8)
    stats = {name: {s: [0, 0, 0, 0, 0] for s in STYLES} for name in detectors}  # ok, n, rejected, n_mis, miscut
    seconds = dict.fromkeys(detectors, 0.0)
    for grid in grids:
        for name, (detect, error) in detectors.items():
            t0 = time.perf_counter()
            try:
                boxes = detect(grid.image, grid.rows, grid.cols)
            except error:
                boxes = None
            seconds[name] += time.perf_counter() - t0
            st = stats[name][grid.style]
            if grid.mismatch:
                st[3] += 1
                st[2] += boxes is None
                st[4] += boxes is not None
            else:
                st[1] += 1
                right = boxes is not None and cut_is_right(list(boxes), grid)
                st[0] += right
                st[4] += boxes is not None and not right
    print(f"panel detection, {len(grids)} synthetic grids of ~{size} px ({per_style} per style + 8 layout mismatches "
          f"per style), ours vs the detector of {BEFORE}, one run\n")  # fmt: skip
    print("| style | cut within 3 px: ours | before | mismatches rejected: ours | before | mis-cuts: ours | before |")
    print("|---|---|---|---|---|---|---|")
    total = {name: [0, 0, 0, 0, 0] for name in detectors}
    for style in STYLES:
        row = [style]
        o, b = stats["ours"][style], stats["before"][style]
        for name in detectors:
            total[name] = [x + y for x, y in zip(total[name], stats[name][style], strict=True)]
        row += [f"{o[0]}/{o[1]}", f"{b[0]}/{b[1]}", f"{o[2]}/{o[3]}", f"{b[2]}/{b[3]}", str(o[4]), str(b[4])]
        print("| " + " | ".join(row) + " |")
    o, b = total["ours"], total["before"]
    print(f"| all | {o[0]}/{o[1]} ({o[0] / o[1]:.1%}) | {b[0]}/{b[1]} ({b[0] / b[1]:.1%}) | {o[2]}/{o[3]} | "
          f"{b[2]}/{b[3]} | {o[4]} | {b[4]} |")  # fmt: skip
    print(f"\nmis-cut grids reaching curation: ours {o[4]} ({o[4] * PAIRS_PER_GRID} pairs at {PAIRS_PER_GRID} per grid), "
          f"before {b[4]} ({b[4] * PAIRS_PER_GRID} pairs)")  # fmt: skip
    rate = {name: len(grids) / s for name, s in seconds.items()}
    print(f"detection speed: ours {rate['ours']:.1f} grids/s, before {rate['before']:.1f} grids/s "
          f"(ours / before = {rate['ours'] / rate['before']:.2f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-style", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run(args.per_style, args.size, args.seed)


if __name__ == "__main__":
    main()
