"""What k references cost against one: tokens, attention and transformer FLOPs, row vs grid canvas.

Counted at FLUX.1-dev's shapes (19 double + 38 single blocks, hidden 3072, T5 512 tokens) from the same
layer list as ``training.estimate`` (``benchmarks.gpu_common.forward_flops``), for frames of 512 px:
ROW = k + 1 frames side by side (this project's layout; k = 1 is the authors' 512x1024 canvas), GRID = the
smallest near-square grid of frames that holds k + 1 (2x2 for k = 2 and 3; one frame of k = 2's grid is
padding). Then one DSD forward pass of a small random FLUX (hidden 256, 2 + 4 blocks) on the CPU at the
same token counts scaled down (frames of 256 px), timed as ratios to k = 1: a check that the measured
growth follows the counted one, not a GPU figure.
Run: .venv/bin/python -m benchmarks.multiref_cost [--no-timing]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import replace

import torch

from benchmarks.gpu_common import FULL, Shapes, forward_flops

FRAME = 512
TEXT = FULL.text_tokens
SMALL_FLUX = {"patch_size": 1, "in_channels": 64, "num_layers": 2, "num_single_layers": 4, "attention_head_dim": 64,
              "num_attention_heads": 4, "joint_attention_dim": 64, "pooled_projection_dim": 32, "guidance_embeds": True,
              "axes_dims_rope": [16, 24, 24]}  # fmt: skip


def grid(frames: int) -> tuple[int, int]:
    """(rows, cols) of the smallest near-square grid holding ``frames`` frames (1x2 for two)."""
    if frames <= 2:
        return 1, frames
    cols = math.ceil(math.sqrt(frames))
    return math.ceil(frames / cols), cols


def canvas(k: int, arrangement: str, frame: int = FRAME) -> tuple[int, int]:
    rows, cols = (1, k + 1) if arrangement == "row" else grid(k + 1)
    return rows * frame, cols * frame


def counted(k: int, arrangement: str) -> dict[str, float]:
    h, w = canvas(k, arrangement)
    shapes: Shapes = replace(FULL, height=h, width=w)
    s = shapes.image_tokens + TEXT
    return {"canvas": f"{h}x{w}", "image_tokens": shapes.image_tokens, "sequence": s,
            "attention": 4.0 * s * s * FULL.hidden * (FULL.double_blocks + FULL.single_blocks),
            "forward": forward_flops(shapes)[0]}  # fmt: skip


def _inputs(k: int) -> dict[str, torch.Tensor]:
    """One DSD forward pass's inputs on a row canvas of k + 1 frames of 256 px (T5 a quarter of 512)."""
    from dsd.tokens import image_ids, text_ids

    hl, wl = 256 // 8, (k + 1) * 256 // 8
    n, text = (hl // 2) * (wl // 2), TEXT // 4
    g = torch.Generator().manual_seed(k)
    return dict(hidden_states=torch.randn(1, n, 64, generator=g), condition_tokens=torch.randn(1, n, 64, generator=g),
                encoder_hidden_states=torch.randn(1, text, 64, generator=g), pooled_projections=torch.randn(1, 32, generator=g),
                timestep=torch.full((1,), 0.5), img_ids=image_ids(hl, wl), txt_ids=text_ids(text), guidance=torch.full((1,), 3.5))  # fmt: skip


@torch.no_grad()
def timed_ratios(rounds: int = 9) -> dict[int, float]:
    """Forward time of k = 2, 3 over k = 1 for the small FLUX: the median of per-round ratios (k = 1, 2, 3 each round),
    so that a busy machine's slow moments hit all three alike."""
    from dsd.tiny import make_tiny_dsd

    model = make_tiny_dsd(0, SMALL_FLUX)
    inputs = {k: _inputs(k) for k in (1, 2, 3)}
    for k in inputs:
        model(**inputs[k])  # warm-up
    ratios: dict[int, list[float]] = {2: [], 3: []}
    for _ in range(rounds):
        t = {}
        for k, args in inputs.items():
            start = time.perf_counter()
            model(**args)
            t[k] = time.perf_counter() - start
        for k in ratios:
            ratios[k].append(t[k] / t[1])
    return {k: statistics.median(v) for k, v in ratios.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-timing", action="store_true", help="only the counted figures")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    base = counted(1, "row")
    print(f"FLUX.1-dev, frames {FRAME}x{FRAME}, T5 {TEXT} tokens; ratios against k = 1 (the authors' canvas)")
    print("| k | arrangement | canvas | image tokens | sequence | attention FLOPs | forward FLOPs |")
    print("|---|---|---|---|---|---|---|")
    for k in (1, 2, 3):
        for arrangement in ("row", "grid") if k > 1 else ("row",):
            c = counted(k, arrangement)
            print(f"| {k} | {arrangement} | {c['canvas']} | {c['image_tokens']} ({c['image_tokens'] / base['image_tokens']:.2f}x) | "
                  f"{c['sequence']} | {c['attention'] / 1e12:.1f} T ({c['attention'] / base['attention']:.2f}x) | "
                  f"{c['forward'] / 1e12:.1f} T ({c['forward'] / base['forward']:.2f}x) |")  # fmt: skip
    if args.no_timing:
        return
    measured = timed_ratios()
    print(f"\nsmall random FLUX on the CPU (1 thread), row canvas of 256 px frames, T5 {TEXT // 4}: forward time vs k = 1")
    for k, ratio in measured.items():
        print(f"  k = {k}: measured {ratio:.2f}x, counted {small_flops(k) / small_flops(1):.2f}x")


def small_flops(k: int) -> float:
    shapes = replace(FULL, hidden=256, heads=4, double_blocks=2, single_blocks=4, context_dim=64, pooled_dim=32,
                     height=256, width=(k + 1) * 256, text_tokens=TEXT // 4)  # fmt: skip
    return forward_flops(shapes)[0]


if __name__ == "__main__":
    main()
