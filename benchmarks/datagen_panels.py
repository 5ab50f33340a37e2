"""Panel detection on synthetic grids of every style: ours against the detector this project shipped
before (commit d293b4a, read from git), in one run on the same grids.

For each style (tests/datagen/synthetic_grids.py: flat, textured, photo, lineart, dark, coloured and
black gutters, no gutter, uneven gutters, thick borders, noise + JPEG) it reports the fraction of
grids cut with every box within 3 px of the truth, the fraction of deliberate layout mismatches
rejected, and the mis-cuts: grids cut into wrong boxes (or mismatches cut at all), with the pairs
those would send to curation (6 per grid, the default cap). Speed: grids per second of detection,
the two detectors interleaved grid by grid so machine load hits both alike.

Real pictures (``--real``): grids assembled at run time from the photographs shipped in the
scikit-image wheel and matplotlib's sample data (tests/datagen/real_grids.py: every kind of issue 16's
table, layouts 1x2 .. 3x3, ~768 and ~1024 px, hard panels on purpose), ours against the detector of
BASELINE (the one before issue 16, read from git), per kind: right (every box within 3 px) /
rejected / mis-cut, crashes (an exception other than a detection error), the pairs mis-cut grids
would send to curation, and detection speed. Same-subject grids are also split into those with
gutters and those of touching photos (40 %), which the touching goal judges. Layout mismatches come
twice: panels of different photos, and crops of one photo (their hidden seams as faint as the cut ones).

Run: `.venv/bin/python -m benchmarks.datagen_panels [--per-style 20] [--size 1024]`,
`nice .venv/bin/python -m benchmarks.datagen_panels --real [--per-kind 48] [--photos FOLDER]` (``--photos``:
the same kinds and seeds built from a folder of your own pictures, a held-out check).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from datagen.panels import PanelDetectionError, PanelsConfig, detect_panels
from tests.datagen.synthetic_grids import STYLES, cut_is_right, grid_set

REPO = Path(__file__).resolve().parents[1]

BEFORE = "d293b4a"  # the last commit with the previous detector
BASELINE = "3557b46"  # the detector before issue 16 (real pictures): datagen/panel_detect.py
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


def baseline_detector():
    """``analyse_grid`` of datagen/panel_detect.py as of BASELINE, as a module of the datagen package."""
    source = subprocess.run(["git", "show", f"{BASELINE}:datagen/panel_detect.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "panel_detect_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("datagen._panel_detect_baseline", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "datagen"
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return lambda image, rows, cols: module.analyse_grid(image, rows, cols, PanelsConfig()).boxes


def _outcome(detect, grid) -> str:
    try:
        boxes = detect(grid.image, grid.rows, grid.cols)
    except PanelDetectionError:
        return "rejected"
    except (ValueError, IndexError, ArithmeticError):  # a crash: in the stage before issue 16 it stopped the run
        return "crash"
    if grid.mismatch:
        return "mis-cut"
    return "right" if cut_is_right(list(boxes), grid) else "mis-cut"


# several photos of the same subject: 40 % of those grids are touching photos, judged by the touching goal
SPLIT = ("same_subject, with gutters", "same_subject, touching")


def _row_keys(grid) -> tuple[str, ...]:
    """The table rows a grid counts in: its kind, and for same-subject grids whether its photos touch."""
    if grid.style != "same_subject":
        return (grid.style,)
    touching = len(grid.boxes) > 1 and any(a.x1 == b.x0 or a.y1 == b.y0 for a, b in zip(grid.boxes, grid.boxes[1:], strict=False))
    return grid.style, SPLIT[1] if touching else SPLIT[0]


def run_real(per_kind: int, seed: int, sizes: tuple[int, ...], folder: Path | None = None) -> None:
    from tests.datagen.real_grids import KINDS, real_grid_set, use_photos

    use_photos(folder)
    detectors = {"ours": detect_panels, "before": baseline_detector()}
    grids = real_grid_set(per_kind, sizes=sizes, seed=seed)
    rows = (*KINDS, *SPLIT)
    counts = {name: {k: dict.fromkeys(("right", "rejected", "mis-cut", "crash", "pairs"), 0) for k in rows}
              for name in detectors}  # fmt: skip
    seconds = dict.fromkeys(detectors, 0.0)
    for grid in grids:
        for name, detect in detectors.items():
            t0 = time.perf_counter()
            outcome = _outcome(detect, grid)
            seconds[name] += time.perf_counter() - t0
            for key in _row_keys(grid):
                c = counts[name][key]
                c[outcome] += 1
                if outcome == "mis-cut":
                    n = grid.rows * grid.cols
                    c["pairs"] += min(PAIRS_PER_GRID, n * (n - 1))
    source = f"the pictures in {folder}" if folder else "the photos of scikit-image and matplotlib"
    print(f"panel detection on real pictures ({source}): {len(grids)} grids ({per_kind} per kind, "
          f"~{'/'.join(map(str, sizes))} px, seed {seed}), ours vs the detector of {BASELINE}, one run\n")  # fmt: skip
    print("| kind | ours: right / rejected / mis-cut | before: right / rejected / mis-cut (crashes) | "
          "pairs to curation: ours | before |")  # fmt: skip
    print("|---|---|---|---|---|")
    for kind in rows:
        o, b = counts["ours"][kind], counts["before"][kind]
        print(f"| {kind} | {o['right']} / {o['rejected'] + o['crash']} / {o['mis-cut']} | "
              f"{b['right']} / {b['rejected']} / {b['mis-cut']} ({b['crash']}) | {o['pairs']} | {b['pairs']} |")  # fmt: skip
    tot = {name: {key: sum(counts[name][k][key] for k in KINDS) for key in counts[name][KINDS[0]]} for name in detectors}
    o, b = tot["ours"], tot["before"]
    print(f"| all | {o['right']} / {o['rejected'] + o['crash']} / {o['mis-cut']} | {b['right']} / {b['rejected']} / "
          f"{b['mis-cut']} ({b['crash']}) | {o['pairs']} | {b['pairs']} |")  # fmt: skip
    if o["crash"]:
        print(f"\nours raised something other than a detection error on {o['crash']} grids (counted as rejected)")
    rate = {name: len(grids) / s for name, s in seconds.items()}
    print(f"\ndetection speed: ours {rate['ours']:.1f} grids/s, before {rate['before']:.1f} grids/s "
          f"(ours / before = {rate['ours'] / rate['before']:.2f})")  # fmt: skip


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
    parser.add_argument("--real", action="store_true", help="grids assembled from real photographs")
    parser.add_argument("--per-kind", type=int, default=48, help="--real: grids per kind")
    parser.add_argument("--sizes", default="768,1024", help="--real: grid sizes, comma-separated")
    parser.add_argument("--photos", type=Path, default=None,
                        help="--real: build the grids from the pictures in this folder (a held-out check)")  # fmt: skip
    args = parser.parse_args()
    if args.photos is not None and not args.photos.is_dir():
        parser.error(f"--photos {args.photos}: not a folder")
    if args.real:
        run_real(args.per_kind, args.seed, tuple(int(s) for s in args.sizes.split(",")), args.photos)
    else:
        run(args.per_style, args.size, args.seed)


if __name__ == "__main__":
    main()
