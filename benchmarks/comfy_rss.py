"""Peak RSS in the real ComfyUI (CPU): plain FLUX vs DSD (embedder only, and embedder + LoRA).

Each measurement is its own subprocess (ru_maxrss): start ComfyUI, build the full-width FLUX
(hidden 3072, 1 double block), optionally apply a DSD adapter through DSDAdapterLoader, run 2
sampling steps on a 256x512 canvas. Variants run interleaved, ``--reps`` times each; medians.
Goal: DSD adds no more than the adapter file's size.

``lora_loader`` applies the SAME LoRA to plain FLUX through ComfyUI's own LoraLoaderModelOnly:
the reference for what any LoRA costs in ComfyUI. On a CPU-only host ComfyUI merges LoRA weights
into new tensors and keeps the original of each patched weight as its backup
(``ModelPatcher.patch_weight_to_device``), so every LoRA adds the patched layers' size; on a GPU
the backup is the copy in system RAM that exists anyway. ComfyUI's only path without the merged copy
is its low-VRAM mode, which recomputes ``W + BA`` in every forward (slower sampling) and is chosen
by ComfyUI's memory manager, not by a node.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("plain", "dsd_embedder", "lora_loader", "dsd_lora")


def child(variant: str, rank: int, threads: int) -> None:
    from benchmarks.comfy_bench_host import Host, build_flux, make_pairs, sample, text, write_adapter

    host = Host(threads)
    base = build_flux()
    w, h = 512, 256
    pos = text(0)
    size = 0
    if variant in ("plain", "lora_loader"):
        if variant == "lora_loader":
            import safetensors.torch

            from dsd.weights.lora import lora_to_state_dict

            (host.tmp / "loras").mkdir()
            host.folder_paths.add_model_folder_path("loras", str(host.tmp / "loras"), is_default=True)
            path = host.tmp / "loras" / "l.safetensors"
            safetensors.torch.save_file({k: v.contiguous() for k, v in lora_to_state_dict(make_pairs(rank)).items()}, path)
            size = path.stat().st_size
            (base,) = host.call("LoraLoaderModelOnly", model=base, lora_name="l.safetensors", strength_model=1.0)
        (m,) = host.call("ModelSamplingFlux", model=base, max_shift=1.15, base_shift=0.5, width=w, height=h)
        (g,) = host.call("BasicGuider", model=m, conditioning=pos)
    else:
        pairs = make_pairs(rank) if variant == "dsd_lora" else {}
        path = write_adapter(host.tmp / "dsd" / "a.safetensors", pairs)
        size = path.stat().st_size
        patch = sys.modules[str(REPO).replace(".", "_x_") + ".nodes.patch"]
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
    ap.add_argument("--child", choices=VARIANTS)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.rank, args.threads)
        return
    peaks: dict[str, list[float]] = {v: [] for v in VARIANTS}
    sizes: dict[str, float] = {}
    for rep in range(args.reps):
        for variant in VARIANTS[rep % len(VARIANTS) :] + VARIANTS[: rep % len(VARIANTS)]:  # rotate the order
            # cwd: the repo root, from where `-m benchmarks.comfy_rss` imports its siblings
            out = subprocess.run([sys.executable, "-m", "benchmarks.comfy_rss", "--child", variant, "--rank", str(args.rank),
                                  "--threads", str(args.threads)], cwd=REPO, capture_output=True, text=True, check=True).stdout  # fmt: skip
            line = next(ln for ln in out.splitlines() if ln.startswith("RESULT"))
            _, name, peak, size = line.split()
            peaks[name].append(float(peak))
            sizes[name] = float(size)
    plain = statistics.median(peaks["plain"])
    print(f"\nPeak RSS, ComfyUI CPU, FLUX hidden 3072 x 1 double block, 2 steps at 256x512 (LoRA rank {args.rank} on "
          f"attention), median of {args.reps} subprocesses per variant")  # fmt: skip
    print(f"{'variant':<14}{'peak MiB':>10}{'min..max':>18}{'+ vs plain':>12}{'file MiB':>10}")
    for name in VARIANTS:
        med = statistics.median(peaks[name])
        rng = f"{min(peaks[name]):.1f}..{max(peaks[name]):.1f}"
        print(f"{name:<14}{med:>10.1f}{rng:>18}{med - plain:>12.1f}{sizes[name]:>10.2f}")
    lora = statistics.median(peaks["lora_loader"])
    print(f"dsd_lora - lora_loader (DSD's own cost over the same LoRA in ComfyUI): "
          f"{statistics.median(peaks['dsd_lora']) - lora:.1f} MiB")


if __name__ == "__main__":
    main()
