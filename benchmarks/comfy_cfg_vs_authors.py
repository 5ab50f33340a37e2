"""DSD true CFG (s_i > 1): our DSDGuider in ComfyUI vs the authors' structure, same weights, CPU.

Authors' structure: diffusers FLUX + DSD embedder with the PEFT LoRA left UNMERGED on the attention
projections (rank = hidden / 6 = 512) and three sequential transformer calls per step
(``dsd.sampler.sample_tokens(batch_branches=False)``). Ours: ComfyUI's FLUX with the LoRA applied as
ComfyUI weight patches (merged once at load) and the three branches batched into one call per step.
Full-width FLUX (hidden 3072, 1 double block), canvas 256x512, CFG on every step.

Identical work on both sides except what is compared: fp32, the same text length (32 tokens), the
same canvas and condition tokens, the same torch thread count (``--threads``), and the same attention
kernel (``--attention pytorch``: ComfyUI's --use-pytorch-cross-attention, i.e. SDPA as diffusers; the
CPU default of ComfyUI is sub-quadratic attention, ``--attention comfy-default``). Both models stay
loaded in one process and runs alternate A-B-B-A; one whole sampler step is timed on each side
(ours: a PREDICT_NOISE wrapper; authors: between step callbacks), each run's first step dropped.
The theoretical ratio (FLOP count of this shape) is printed beside the measurement.
Goal: ours at least 1.1x faster per step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from benchmarks.comfy_bench_host import (
    ATTN_TARGETS,
    FULL_UNET_CONFIG,
    REPO_ROOT,
    Host,
    StepTimer,
    add_host_args,
    build_flux,
    make_pairs,
    sample,
    spread,
    text,
    write_adapter,
)


@torch.no_grad()
def authors_model(pairs: dict, adapter_path, rank: int):
    from peft import LoraConfig

    from dsd.model import DSDTransformer
    from dsd.tiny import FULL_WIDTH_TRANSFORMER_CONFIG, make_tiny_transformer
    from dsd.weights.adapter import load_adapter

    tr = make_tiny_transformer(0, FULL_WIDTH_TRANSFORMER_CONFIG)
    tr.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=[f"transformer_blocks.0.{t}" for t in ATTN_TARGETS]))
    for name, pair in pairs.items():
        mod = tr.get_submodule(name)
        mod.lora_A["default"].weight.copy_(pair.down)
        mod.lora_B["default"].weight.copy_(pair.up)
    model = DSDTransformer(tr)
    model.load_c_embedder(load_adapter(adapter_path).c_embedder)
    return model.eval()


def flops_per_branch(n_img: int, n_txt: int, rank: int) -> tuple[float, float]:
    """(base FLOPs, extra FLOPs of the unmerged LoRA) of one transformer call for one branch."""
    h, ctx, vec = FULL_UNET_CONFIG["hidden_size"], FULL_UNET_CONFIG["context_in_dim"], FULL_UNET_CONFIG["vec_in_dim"]
    mlp = int(h * FULL_UNET_CONFIG["mlp_ratio"])
    per_token = 2 * (3 * h * h + h * h + 2 * h * mlp)  # qkv, out proj, MLP of one double-block stream
    n = n_img + n_txt
    base = per_token * n + 4 * n * n * h  # + attention QK^T and AV
    base += 2 * n_img * 64 * h + 2 * n_txt * ctx * h + 2 * n_img * h * 64  # img_in, txt_in, final linear
    base += 2 * (2 * h * 6 * h + h * 2 * h + 256 * h + h * h + vec * h + h * h + 256 * h + h * h)  # per-sample MLPs
    lora = 2 * rank * (h + h) * 4 * (n_img + n_txt)  # 4 projections per stream, each 2 r (in + out) per token
    return float(base), float(lora)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run (one more is run and dropped)")
    ap.add_argument("--rounds", type=int, default=3, help="A-B-B-A rounds")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=256)
    add_host_args(ap)
    args = ap.parse_args()
    rank = FULL_UNET_CONFIG["hidden_size"] // 6
    host = Host(args.threads, args.attention)
    pairs = make_pairs(rank=rank)
    adapter = write_adapter(host.tmp / "dsd" / "bench.safetensors", pairs)
    w, h = args.width, args.height
    pos, neg = text(0), text(1)
    patch = sys.modules[str(REPO_ROOT).replace(".", "_x_") + ".nodes.patch"]
    hl, wl = h // 8, w // 8
    n_img = (hl // 2) * (wl // 2)
    tokens = torch.randn(1, n_img, 64, generator=torch.Generator().manual_seed(3))

    # --- ours: ComfyUI + DSDGuider (condition tokens attached directly: the VAE is not what is measured)
    p, n = patch.with_condition_tokens(pos, tokens), patch.with_condition_tokens(neg, tokens)
    latent = {"samples": torch.zeros(1, 16, hl, wl)}
    (dsd_model,) = host.call("DSDAdapterLoader", model=build_flux(), adapter="bench.safetensors", strength=1.0)

    def ours() -> list[float]:
        timer = StepTimer()
        (m,) = host.call("ModelSamplingFlux", model=timer.attach(dsd_model), max_shift=1.15, base_shift=0.5, width=w, height=h)
        (g,) = host.call("DSDGuider", model=m, positive=p, negative=n, image_guidance=2.0, text_guidance=1.5, cfg_start_step=0)
        sample(host, m, g, latent, args.steps + 1, w, h)
        return timer.times[1:]

    # --- authors' structure
    from dsd.sampler import GuidanceConfig, TextConditioning, sample_tokens
    from dsd.tokens import image_ids, text_ids

    model = authors_model(pairs, adapter, rank)
    noise = torch.randn(1, n_img, 64, generator=torch.Generator().manual_seed(4))

    def authors() -> list[float]:
        stamps: list[float] = []
        t0 = [time.perf_counter()]

        def cb(i, n_steps, x):
            now = time.perf_counter()
            stamps.append(now - t0[0])
            t0[0] = now

        with torch.inference_mode():
            sample_tokens(
                model, noise, tokens, TextConditioning(pos[0][0], pos[0][1]["pooled_output"]),
                image_ids(hl, wl), text_ids(pos[0][0].shape[1]), steps=args.steps + 1,
                guidance=GuidanceConfig(image_guidance=2.0, text_guidance=1.5, cfg_start_step=0),
                negative_text=TextConditioning(neg[0][0], neg[0][1]["pooled_output"]), batch_branches=False, callback=cb,
            )  # fmt: skip
        return stamps[1:]

    runs = {"ours": ours, "authors": authors}
    ours(), authors()  # warm-up: first load and LoRA patching, first allocations
    times = {"ours": [], "authors": []}
    speedups = []
    for r in range(args.rounds):
        order = ("ours", "authors", "authors", "ours") if r % 2 == 0 else ("authors", "ours", "ours", "authors")
        this = {"ours": [], "authors": []}
        for name in order:
            this[name] += runs[name]()
        speedups.append(statistics.median(this["authors"]) / statistics.median(this["ours"]))
        for k in times:
            times[k] += this[k]

    base, lora = flops_per_branch(n_img, pos[0][0].shape[1], rank)
    print(f"\nDSD true CFG (3 branches/step), FLUX hidden 3072 x 1 double block, LoRA rank {rank} on attention, "
          f"canvas {h}x{w}, CPU {torch.get_num_threads()} threads, attention {args.attention}, "
          f"{args.rounds} A-B-B-A rounds x {args.steps} timed steps per run")  # fmt: skip
    print(f"{'structure':<50}{'s/step: median [min..max]':>30}")
    print(f"{'authors: unmerged PEFT LoRA, 3 sequential calls':<50}{spread(times['authors']):>30}")
    print(f"{'ours: ComfyUI patches + 1 batched call':<50}{spread(times['ours']):>30}")
    print(f"speed-up ours vs authors per round: {' '.join(f'{x:.3f}' for x in speedups)}")
    print(f"speed-up ours vs authors: median [min..max] over rounds {spread(speedups)} (goal >= 1.1x); "
          f"fastest steps {min(times['authors']) / min(times['ours']):.3f}x (load only ever adds time)")  # fmt: skip
    print(f"FLOPs per step: ours 3 x {base / 1e9:.1f} G, authors 3 x {(base + lora) / 1e9:.1f} G "
          f"(unmerged LoRA +{lora / 1e9:.1f} G per call) -> compute-only bound {1 + lora / base:.3f}x")


if __name__ == "__main__":
    main()
