"""Peak RSS in the real ComfyUI (CPU): plain FLUX vs DSD (embedder only, and embedder + LoRA).

Each variant runs in its own subprocess (ru_maxrss): start ComfyUI, build the full-width FLUX
(hidden 3072, 1 double block), optionally apply a DSD adapter through DSDAdapterLoader, run 2
sampling steps on a 256x512 canvas. Goal: DSD adds no more than the adapter file's size.
Note: on a CPU-only host ComfyUI patches LoRA weights in place and keeps a backup of each patched
weight (any LoRA, LoraLoader included), so the LoRA variant adds the patched layers' size; on a GPU
the backup stays in system RAM where the weights already were.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def child(variant: str, rank: int) -> None:
    sys.path.insert(0, str(HERE))
    from comfy_bench_host import Host, build_flux, make_pairs, sample, text, write_adapter

    host = Host()
    base = build_flux()
    w, h = 512, 256
    pos = text(0)
    size = 0
    if variant == "plain":
        (m,) = host.call("ModelSamplingFlux", model=base, max_shift=1.15, base_shift=0.5, width=w, height=h)
        (g,) = host.call("BasicGuider", model=m, conditioning=pos)
    else:
        pairs = make_pairs(rank) if variant == "dsd_lora" else {}
        path = write_adapter(host.tmp / "dsd" / "a.safetensors", pairs)
        size = path.stat().st_size
        patch = sys.modules[str(HERE.parent).replace(".", "_x_") + ".nodes.patch"]
        tokens = torch.randn(1, (h // 16) * (w // 16), 64)
        pos = patch.with_condition_tokens(pos, tokens)
        (dm,) = host.call("DSDAdapterLoader", model=base, adapter="a.safetensors", strength=1.0)
        (m,) = host.call("ModelSamplingFlux", model=dm, max_shift=1.15, base_shift=0.5, width=w, height=h)
        (g,) = host.call("DSDGuider", model=m, positive=pos, negative=pos, image_guidance=1.0, text_guidance=1.0, cfg_start_step=2)
    sample(host, m, g, {"samples": torch.zeros(1, 16, h // 8, w // 8)}, 2, w, h)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"RESULT {variant} {peak_mb:.1f} {size / 2**20:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", choices=["plain", "dsd_embedder", "dsd_lora"])
    ap.add_argument("--rank", type=int, default=64)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.rank)
        return
    rows = {}
    for variant in ("plain", "dsd_embedder", "dsd_lora"):
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--rank", str(args.rank)],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        line = next(ln for ln in out.splitlines() if ln.startswith("RESULT"))
        _, name, peak, size = line.split()
        rows[name] = (float(peak), float(size))
    plain = rows["plain"][0]
    print(f"\nPeak RSS, ComfyUI CPU, FLUX hidden 3072 x 1 double block, 2 steps at 256x512 (LoRA rank {args.rank} on attention)")
    print(f"{'variant':<16}{'peak MiB':>10}{'+ vs plain':>12}{'adapter MiB':>13}")
    for name, (peak, size) in rows.items():
        print(f"{name:<16}{peak:>10.1f}{peak - plain:>12.1f}{size:>13.2f}")


if __name__ == "__main__":
    main()
