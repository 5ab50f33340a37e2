"""EasyCache / LazyCache with DSD vs plain FLUX in the real ComfyUI (CPU): speed-up and result distance.

A small FLUX built in-process (hidden 512, 2 double + 2 single blocks, random weights: the cache's
decisions, not the model's size, are measured), canvas 512x256, euler, ``--steps`` steps.
For each cache and each side (DSD: adapter + reference conditioning + DSD Guider at image guidance 1;
plain: the same FLUX with BasicGuider), the uncached and the cached run alternate over ``--rounds``
rounds (A-B-B-A: load hits both alike). Reported per side: the speed-up (median uncached / median cached
wall time, and the steps the cache skipped, which load does not change) and the result's distance from the uncached run (relative L2 of the final latent); then
DSD's figures as ratios of plain FLUX's (DSD should keep the same trade-off: ratios near 1).
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import time

import torch

from benchmarks.comfy_bench_host import FULL_UNET_CONFIG, Host, add_host_args, make_pairs, text, write_adapter
from benchmarks.comfy_bench_host import build_flux as bench_build_flux

HIDDEN = 512
UNET_CONFIG = {**FULL_UNET_CONFIG, "hidden_size": HIDDEN, "num_heads": 8, "axes_dim": [16, 24, 24], "depth": 2,
               "depth_single_blocks": 2}  # fmt: skip


def build_flux(seed: int = 0):
    """ComfyUI's own Flux at UNET_CONFIG (the bench host's random weights), in a ModelPatcher."""
    return bench_build_flux(seed, unet_config=UNET_CONFIG)


def run(host: Host, model, guider, latent, steps: int) -> tuple[float, torch.Tensor]:
    (sigmas,) = host.call("BasicScheduler", model=model, scheduler="simple", steps=steps, denoise=1.0)
    (noise,) = host.call("RandomNoise", noise_seed=0)
    (sampler,) = host.call("KSamplerSelect", sampler_name="euler")
    t = time.perf_counter()
    out, _ = host.call("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas, latent_image=latent)
    return time.perf_counter() - t, out["samples"].float()


def sides(host: Host, w: int, h: int, rank: int) -> dict:
    """name -> (model, make_guider(model), latent) for DSD and plain FLUX."""
    import comfy.sd

    from dsd.tiny import FULL_VAE_CONFIG, make_tiny_vae

    write_adapter(host.tmp / "dsd" / "bench.safetensors", make_pairs(rank=rank, hidden=HIDDEN), hidden=HIDDEN)
    vae = comfy.sd.VAE(sd=make_tiny_vae(0, FULL_VAE_CONFIG).state_dict())
    pos, neg = text(0), text(1)
    image = torch.rand(1, 200, 180, 3, generator=torch.Generator().manual_seed(0))
    p, n, latent, _ = host.call("DSDReferenceConditioning", positive=pos, negative=neg, vae=vae, image=image,
                                width=w, height=h, fit="crop", batch_size=1)  # fmt: skip
    (dsd,) = host.call("DSDAdapterLoader", model=build_flux(), adapter="bench.safetensors", strength=1.0)
    (empty,) = host.call("EmptySD3LatentImage", width=w, height=h, batch_size=1)
    shift = {"max_shift": 1.15, "base_shift": 0.5, "width": w, "height": h}
    (dsd,) = host.call("ModelSamplingFlux", model=dsd, **shift)
    (plain,) = host.call("ModelSamplingFlux", model=build_flux(), **shift)

    def dsd_guider(m):
        return host.call("DSDGuider", model=m, positive=p, negative=n, image_guidance=1.0, text_guidance=1.0, cfg_start_step=2)[0]

    return {"dsd": (dsd, dsd_guider, latent), "plain": (plain, lambda m: host.call("BasicGuider", model=m, conditioning=pos)[0], empty)}


class SkipCounter(logging.Handler):
    """The caches log "<name> - skipped k/n steps" after each run: the load-independent part of the speed-up."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"skipped (\d+/\d+) steps", record.getMessage())
        if found:
            self.last = found.group(1)


SKIPS = SkipCounter()


def measure(host: Host, side, cache: str, threshold: float, steps: int, rounds: int) -> tuple[float, float, str]:
    model, guider, latent = side
    (cached,) = host.call(cache, model=model, reuse_threshold=threshold, start_percent=0.15, end_percent=0.95, verbose=False)
    times: dict[str, list[float]] = {"plain": [], "cached": []}
    outs: dict[str, torch.Tensor] = {}
    for r in range(rounds):
        order = ("plain", "cached") if r % 2 == 0 else ("cached", "plain")
        for which in order:
            m = model if which == "plain" else cached
            t, outs[which] = run(host, m, guider(m), latent, steps)
            times[which].append(t)
    dist = ((outs["cached"] - outs["plain"]).norm() / outs["plain"].norm()).item()
    return statistics.median(times["plain"]) / statistics.median(times["cached"]), dist, SKIPS.last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.2, help="reuse_threshold (ComfyUI's default 0.2)")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16)
    add_host_args(ap)
    args = ap.parse_args()
    host = Host(args.threads, args.attention)
    logging.getLogger().addHandler(SKIPS)
    logging.getLogger().setLevel(logging.INFO)
    models = sides(host, args.width, args.height, args.rank)
    print(f"{args.steps} steps, threshold {args.threshold}, canvas {args.width}x{args.height}, {args.rounds} rounds")
    for cache in ("EasyCache", "LazyCache"):
        got = {name: measure(host, side, cache, args.threshold, args.steps, args.rounds) for name, side in models.items()}
        for name, (speedup, dist, skipped) in got.items():
            print(f"{cache:9s} {name:5s}: skipped {skipped} steps, speed-up {speedup:.2f}x, distance from uncached {dist:.4f}")
        (s_d, d_d, _), (s_p, d_p, _) = got["dsd"], got["plain"]
        print(f"{cache:9s} DSD / plain: speed-up ratio {s_d / s_p:.2f}, distance ratio {d_d / max(d_p, 1e-12):.2f}")


if __name__ == "__main__":
    main()
