"""Embedding metrics (dsd.eval.embeddings, tiny random CLIP + DINOv2): images scored per second, and peak memory
against the number of images when they are streamed from disk versus all held in memory first.

Each measurement runs in a child process and reports its own peak RSS (``ru_maxrss`` inside the child, so
the parent and other children never count). Images are 256 px PNG files decoded by the run (as ``dsd eval``
reads outputs from a folder), one torch thread. Streaming (``iter_image_embeddings`` over a generator that opens one file at a
time) should be flat in N; loading every image first grows with N and is the baseline.

    .venv/bin/python -m benchmarks.eval_embeddings [--sizes 250,2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Run with cwd=REPO: `python -c` puts the cwd on sys.path, so the toolkit imports even when not installed.
CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
from PIL import Image
from dsd.eval.embeddings import EmbeddingModels
torch.set_num_threads(1)  # tiny models: thread-pool overhead dominates and the CPU is shared
folder, clip, dino, n, mode, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
paths = sorted(Path(folder).glob("*.png"))[:n]
def images():
    for p in paths:
        with Image.open(p) as im:
            yield im.convert("RGB")
models = EmbeddingModels.load(clip=clip, dino=dino, batch_size=batch)
models.image_embeddings([Image.new("RGB", (256, 256))])  # first-call setup is not throughput
base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if mode == "stream":
    parts = list(models.iter_image_embeddings(images()))
    count = sum(p["clip"].shape[0] for p in parts)
else:
    held = list(images())
    count = models.image_embeddings(held)["clip"].shape[0]
seconds = time.perf_counter() - t0
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": count, "seconds": seconds, "peak_mb": peak_kb / 1024, "base_mb": base_kb / 1024}))
"""


def write_images(folder: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256] / 256
    for i in range(n):
        a, b, c = rng.uniform(-1, 1, (3, 3))
        img = np.clip(0.5 + xx[..., None] * a + yy[..., None] * b + 0.2 * np.sin(9 * xx * yy)[..., None] * c, 0, 1)
        Image.fromarray((img * 255).astype(np.uint8), "RGB").save(folder / f"{i:06d}.png")


def child(folder: Path, clip: Path, dino: Path, n: int, mode: str, batch: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(clip), str(dino), str(n), mode, str(batch)],
                         cwd=REPO, capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="250,2000")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repetitions of the throughput pair")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    from tests.eval_fixtures import write_tiny_clip, write_tiny_dino

    with tempfile.TemporaryDirectory(prefix="dsd-eval-embed-") as tmp:
        root = Path(tmp)
        clip, dino = write_tiny_clip(root / "clip"), write_tiny_dino(root / "dino")
        write_images(root / "images", max(sizes))

        # Throughput: batch 16 vs one image per forward, interleaved so machine load hits both alike.
        n = min(sizes)
        rates: dict[int, list[float]] = {16: [], 1: []}
        for _ in range(args.repeats):
            for batch in (16, 1):
                r = child(root / "images", clip, dino, n, "stream", batch)
                rates[batch].append(r["n"] / r["seconds"])
        med = {b: statistics.median(v) for b, v in rates.items()}
        print(f"throughput, {n} PNG images 256 px decoded + CLIP + DINOv2 (tiny), median of {args.repeats}:")
        print(f"  batch 16: {med[16]:.0f} images/s | batch 1: {med[1]:.0f} images/s | ratio {med[16] / med[1]:.2f}x")

        print("peak RSS (MB) by number of images (streamed vs all held in memory first):")
        peaks = {}
        for size in sizes:
            s = child(root / "images", clip, dino, size, "stream", 16)
            m = child(root / "images", clip, dino, size, "hold", 16)
            peaks[size] = (s["peak_mb"], m["peak_mb"])
            print(f"  {size:>6} images | stream {s['peak_mb']:.0f} (after load {s['base_mb']:.0f}) | "
                  f"hold all {m['peak_mb']:.0f} | {size / s['seconds']:.0f} images/s streamed")
        lo, hi = min(sizes), max(sizes)
        print(f"  stream peak {hi} vs {lo} images: {peaks[hi][0] / peaks[lo][0]:.3f}x "
              f"(hold all: {peaks[hi][1] / peaks[lo][1]:.2f}x)")


if __name__ == "__main__":
    main()
