"""Per-step time of DSD vs plain FLUX in the real ComfyUI (CPU), same canvas and settings.

Full-width FLUX (hidden 3072, 1 double block) so the condition embedder's cost is realistic relative
to a transformer block; canvas 256x512 (512 image tokens). Median (and min, robust to other
load on the machine) transformer-call time over the steps of alternating runs (first call of each run, which loads/patches the model, excluded).
Goal: DSD / plain <= 1.02.
"""

from __future__ import annotations

import argparse

import torch
from comfy_bench_host import Host, StepTimer, build_flux, make_pairs, median, sample, text, write_adapter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    host = Host()
    import comfy.sd

    from dsd.tiny import FULL_VAE_CONFIG, make_tiny_vae

    base = build_flux()
    write_adapter(host.tmp / "dsd" / "bench.safetensors", make_pairs(rank=16))
    vae = comfy.sd.VAE(sd=make_tiny_vae(0, FULL_VAE_CONFIG).state_dict())
    pos, neg = text(0), text(1)
    w, h = args.width, args.height
    (dsd_model,) = host.call("DSDAdapterLoader", model=base, adapter="bench.safetensors", strength=1.0)
    image = torch.rand(1, 200, 180, 3, generator=torch.Generator().manual_seed(0))
    p, n, latent, _ = host.call("DSDReferenceConditioning", positive=pos, negative=neg, vae=vae, image=image,
                                width=w, height=h, fit="crop", batch_size=1)  # fmt: skip
    (empty,) = host.call("EmptySD3LatentImage", width=w, height=h, batch_size=1)
    timers = {"plain FLUX": StepTimer(), "DSD": StepTimer()}
    for _ in range(args.rounds):
        t = timers["plain FLUX"]
        before = len(t.times)
        (m,) = host.call("ModelSamplingFlux", model=t.attach(base), max_shift=1.15, base_shift=0.5, width=w, height=h)
        (g,) = host.call("BasicGuider", model=m, conditioning=pos)
        sample(host, m, g, empty, args.steps, w, h)
        del t.times[before]
        t = timers["DSD"]
        before = len(t.times)
        (m,) = host.call("ModelSamplingFlux", model=t.attach(dsd_model), max_shift=1.15, base_shift=0.5, width=w, height=h)
        (g,) = host.call("DSDGuider", model=m, positive=p, negative=n, image_guidance=1.0, text_guidance=1.0, cfg_start_step=2)
        sample(host, m, g, latent, args.steps, w, h)
        del t.times[before]
    plain, dsd = median(timers["plain FLUX"].times), median(timers["DSD"].times)
    pmin, dmin = min(timers["plain FLUX"].times), min(timers["DSD"].times)
    print(f"\nComfyUI per-step time, FLUX hidden 3072 x 1 double block, canvas {h}x{w} ({h * w // 256} tokens), CPU "
          f"{torch.get_num_threads()} threads, median of {len(timers['DSD'].times)} steps")  # fmt: skip
    print(f"{'model':<12}{'median s/step':>15}{'min s/step':>12}")
    print(f"{'plain FLUX':<12}{plain:>15.4f}{pmin:>12.4f}")
    print(f"{'DSD':<12}{dsd:>15.4f}{dmin:>12.4f}")
    print(f"ratio DSD/plain: median {dsd / plain:.3f}, min {dmin / pmin:.3f} (goal <= 1.02; min is robust to other load)")


if __name__ == "__main__":
    main()
