"""Parts 1, 2 and 4 of the GPU suite: sampling through ComfyUI's own FLUX with this pack's nodes.

1. seconds per step: plain FLUX, DSD, DSD with true CFG (our DSDGuider: 3 branches in one call, LoRA merged
   by ComfyUI) and the authors' structure (3 sequential calls, unmerged PEFT LoRA); A-B-B-A rounds.
2. peak memory of the diffusion model (+ adapter) in bf16 and with fp8 weights, each model alone.
4. ComfyUI's fp8 matmul ops (``torch._scaled_mm``) vs bf16 weights, plain and DSD.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import statistics
import sys
import tempfile
from collections.abc import Callable

import torch

from benchmarks.comfy_bench_host import REPO_ROOT, Host, StepTimer, sample
from benchmarks.gpu_common import SUSTAINED_BF16_PEAK, Device, PartClock, Shapes, forward_flops, tensor_bytes
from benchmarks.gpu_models import authors_model, comfy_flux, lora_pairs, write_adapter
from training.config import DEFAULT_LORA_TARGETS

ADAPTER = "gpu_suite.safetensors"
S_I, S_T = 2.0, 1.5  # any s_i > 1 turns true CFG on; the values do not change the cost


class SyncStepTimer(StepTimer):
    """StepTimer that waits for the GPU on both sides of the step (kernels are queued asynchronously)."""

    def __init__(self, device: Device) -> None:
        super().__init__()
        self.device = device

    def __call__(self, executor, *args, **kwargs):
        t = self.device.now()
        out = executor(*args, **kwargs)
        self.times.append(self.device.now() - t)
        return out


def text(shapes: Shapes, seed: int) -> list:
    gen = torch.Generator("cpu").manual_seed(seed)
    return [[torch.randn(1, shapes.text_tokens, shapes.context_dim, generator=gen),
             {"pooled_output": torch.randn(1, shapes.pooled_dim, generator=gen), "guidance": 3.5}]]  # fmt: skip


class Bench:
    """Everything the sampling parts share: the host, shapes, device, conditioning and the adapter file."""

    def __init__(self, host: Host, shapes: Shapes, device: Device) -> None:
        self.host, self.shapes, self.device = host, shapes, device
        self.w, self.h = shapes.width, shapes.height
        self.patch = sys.modules[str(REPO_ROOT).replace(".", "_x_") + ".nodes.patch"]
        self.pos, self.neg = text(shapes, 0), text(shapes, 1)
        self.tokens = torch.randn(1, shapes.image_tokens, 64, generator=torch.Generator().manual_seed(3))
        self.p = self.patch.with_condition_tokens(self.pos, self.tokens)
        self.n = self.patch.with_condition_tokens(self.neg, self.tokens)
        self.latent = {"samples": torch.zeros(1, 16, self.h // 8, self.w // 8)}
        self.lora_dtype = torch.bfloat16 if device.is_cuda else torch.float32
        self.pairs = lora_pairs(shapes, device.torch, self.lora_dtype)
        self.adapter = write_adapter(host.tmp / "dsd" / ADAPTER, shapes, self.pairs)
        self.weights = "bf16" if device.is_cuda else "float32"

    def dsd(self, base):
        (m,) = self.host.call("DSDAdapterLoader", model=base, adapter=ADAPTER, strength=1.0)
        return m

    def run_comfy(self, model, variant: str, steps: int) -> list[float]:
        """One sampler run; the per-step times (first step dropped)."""
        timer = SyncStepTimer(self.device)
        (m,) = self.host.call("ModelSamplingFlux", model=timer.attach(model), max_shift=1.15, base_shift=0.5, width=self.w, height=self.h)
        if variant == "plain":
            (g,) = self.host.call("BasicGuider", model=m, conditioning=self.pos)
        else:
            cfg = variant == "dsd_cfg"
            (g,) = self.host.call("DSDGuider", model=m, positive=self.p, negative=self.n, image_guidance=S_I if cfg else 1.0,
                                  text_guidance=S_T if cfg else 1.0, cfg_start_step=0)  # fmt: skip
        sample(self.host, m, g, self.latent, steps + 1, self.w, self.h)
        return timer.times[1:]

    def run_authors(self, model, steps: int) -> list[float]:
        from dsd.sampler import GuidanceConfig, TextConditioning, sample_tokens
        from dsd.tokens import image_ids, text_ids

        stamps: list[float] = []
        last = [self.device.now()]

        def tick(i, n, x):
            now = self.device.now()
            stamps.append(now - last[0])
            last[0] = now

        noise = torch.randn(1, self.shapes.image_tokens, 64, generator=torch.Generator().manual_seed(4))
        with torch.inference_mode():
            sample_tokens(model, noise, self.tokens, TextConditioning(self.pos[0][0], self.pos[0][1]["pooled_output"]),
                          image_ids(self.h // 8, self.w // 8), text_ids(self.shapes.text_tokens), steps=steps + 1,
                          guidance=GuidanceConfig(image_guidance=S_I, text_guidance=S_T, cfg_start_step=0),
                          negative_text=TextConditioning(self.neg[0][0], self.neg[0][1]["pooled_output"]),
                          batch_branches=False, callback=tick)  # fmt: skip
        return stamps[1:]


def interleaved(runs: dict[str, Callable[[], list[float]]], rounds: int, clock: PartClock) -> tuple[dict, list[dict]]:
    """All runs once (warm-up), then ``rounds`` A-B-B-A rounds; each run only starts if it fits the part's cap."""
    last: dict[str, float] = {}

    def timed(name: str) -> list[float]:
        clock.check(last.get(name, 0.0))
        t = clock.elapsed()
        out = runs[name]()
        last[name] = clock.elapsed() - t
        return out

    for name in runs:
        timed(name)
    names = list(runs)
    steps: dict[str, list[float]] = {k: [] for k in runs}
    per_round: list[dict[str, float]] = []
    for r in range(rounds):
        order = names + names[::-1] if r % 2 == 0 else names[::-1] + names
        this: dict[str, list[float]] = {k: [] for k in runs}
        for name in order:
            this[name] += timed(name)
        per_round.append({k: statistics.median(v) for k, v in this.items()})
        for k in runs:
            steps[k] += this[k]
    return steps, per_round


def part_sampling(bench: Bench, clock: PartClock) -> dict:
    sh, dev = bench.shapes, bench.device
    models = {"plain": comfy_flux(sh, dev.torch, bench.weights, seed=0)}
    models["dsd"] = bench.dsd(comfy_flux(sh, dev.torch, bench.weights, seed=0))  # own base: no re-patching between runs
    models["authors"] = authors_model(sh, dev.torch, torch.bfloat16 if dev.is_cuda else torch.float32, bench.pairs, bench.adapter)
    runs = {
        "plain": lambda m=models["plain"]: bench.run_comfy(m, "plain", sh.timed_steps),
        "dsd": lambda m=models["dsd"]: bench.run_comfy(m, "dsd", sh.timed_steps),
        "dsd_cfg": lambda m=models["dsd"]: bench.run_comfy(m, "dsd_cfg", sh.timed_steps),
        "authors_cfg": lambda m=models["authors"]: bench.run_authors(m, sh.timed_steps),
    }
    try:
        steps, per_round = interleaved(runs, sh.rounds, clock)
    finally:
        del runs, models
        bench.pairs = {}  # only the authors' model needed the LoRA on the device (4.2 GB at rank 512)
    dev.free()
    med = {k: statistics.median(v) for k, v in steps.items()}
    dsd_ratio = [r["dsd"] / r["plain"] for r in per_round]
    cfg_speedup = [r["authors_cfg"] / r["dsd_cfg"] for r in per_round]
    n, c = sh.steps_per_image, sh.cfg_start_step
    per_image = {
        "plain": n * med["plain"], "dsd": n * med["dsd"],
        "dsd_cfg": c * med["dsd"] + (n - c) * med["dsd_cfg"],
        # the authors' first steps are single passes: a third of their CFG step (one of three sequential calls)
        "authors_cfg": c * med["authors_cfg"] / 3 + (n - c) * med["authors_cfg"],
    }  # fmt: skip
    base, lora = forward_flops(sh, lora_rank=sh.rank, lora_targets=DEFAULT_LORA_TARGETS)
    flops = {"plain": n * base, "dsd": n * base, "dsd_cfg": c * base + (n - c) * 3 * base,
             "authors_cfg": c * (base + lora) + (n - c) * 3 * (base + lora)}  # fmt: skip
    return {
        "seconds_per_step": {k: {"median": med[k], "min": min(v), "max": max(v), "n": len(v)} for k, v in steps.items()},
        "ratio_dsd_over_plain": statistics.median(dsd_ratio), "ratio_dsd_over_plain_rounds": dsd_ratio,
        "speedup_ours_over_authors_cfg": statistics.median(cfg_speedup), "speedup_rounds": cfg_speedup,
        "seconds_per_image": per_image,
        "tflop_per_forward": base / 1e12, "tflop_per_forward_unmerged_lora_extra": lora / 1e12,
        "bound_seconds_per_image": {k: v / SUSTAINED_BF16_PEAK for k, v in flops.items()},
        "bound_peak_tflops": SUSTAINED_BF16_PEAK / 1e12,
        "goals": {"ratio_dsd_over_plain": "<= 1.02", "speedup_ours_over_authors_cfg": ">= 1.3"},
    }  # fmt: skip


def _model_bytes(model) -> int:
    """CPU stand-in for the model's memory: its weights (LoRA merged in place) + the DSD embedder."""
    post = model.model_options.get("transformer_options", {}).get("patches", {}).get("post_input", [])
    embedders = [p.embedder for p in post if isinstance(getattr(p, "embedder", None), torch.nn.Module)]
    return tensor_bytes(model.model.diffusion_model, *embedders)


def part_memory(bench: Bench, clock: PartClock) -> dict:
    sh, dev = bench.shapes, bench.device
    out: dict[str, dict] = {}
    last = 0.0
    for weights in (bench.weights, "fp8"):
        for variant in ("plain", "dsd"):
            clock.check(last)
            t = clock.elapsed()
            baseline = dev.reset_peak()
            model = comfy_flux(sh, dev.torch, weights, seed=0)
            if variant == "dsd":
                model = bench.dsd(model)
            bench.run_comfy(model, variant, 1)
            peak = dev.peak()
            out[f"{variant}_{weights}"] = {"bytes": (peak - baseline) if peak is not None else _model_bytes(model)}
            del model
            dev.free()
            last = clock.elapsed() - t
    size = bench.adapter.stat().st_size
    res: dict = {"adapter_file_bytes": size, "source": "cuda max_memory_allocated over build + patch + 2 steps, minus what "
                 "was allocated before" if dev.is_cuda else "CPU tensor bytes: diffusion model weights (LoRA merged) + DSD "
                 "embedder; no activations, ComfyUI's backups of patched weights live in system RAM", "models": out}  # fmt: skip
    for w in (bench.weights, "fp8"):
        res[f"adapter_cost_over_file_{w}"] = (out[f"dsd_{w}"]["bytes"] - out[f"plain_{w}"]["bytes"]) / size
    res["dsd_fp8_gib"] = out["dsd_fp8"]["bytes"] / 2**30
    res["goals"] = {"adapter_cost_over_file": "< 1.1", "dsd_fp8_gib": "<= 14 (GPU, 512x1024)"}
    return res


class _Capture(logging.Handler):
    def __init__(self, prefix: str) -> None:
        super().__init__(logging.DEBUG)
        self.prefix = prefix
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith(self.prefix):
            self.messages.append(msg)


@contextlib.contextmanager
def captured_logs(prefix: str, level: int = logging.INFO):
    """Within: the root logger's messages from ``level`` up that start with ``prefix`` (a list); the handlers
    that were there keep seeing only what they saw before."""
    capture, root = _Capture(prefix), logging.getLogger()
    before = root.level
    for h in root.handlers:
        h.setLevel(max(h.level, before))
    root.setLevel(min(before, level))
    root.addHandler(capture)
    try:
        yield capture.messages
    finally:
        root.removeHandler(capture)
        root.setLevel(before)


@contextlib.contextmanager
def fp8_census(model):
    """Within: the calls of the model's fp8-op linears, and ComfyUI's fallbacks of them to upcasting (it reports
    them only at INFO). Forward hooks: for one untimed run, never around a timed one."""
    import comfy.ops

    calls = [0]
    hooks = [m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
             for m in model.model.diffusion_model.modules() if isinstance(m, comfy.ops.fp8_ops.Linear)]  # fmt: skip
    try:
        with captured_logs("Exception during fp8 op") as fallbacks:
            yield calls, fallbacks
    finally:
        for h in hooks:
            h.remove()


def part_fp8_matmul(bench: Bench, clock: PartClock) -> dict:
    import comfy.model_management

    if not comfy.model_management.supports_fp8_compute(bench.device.torch if bench.device.is_cuda else None):
        return {"status": "skipped (no fp8 compute on this device: needs an NVIDIA GPU of compute capability >= 8.9)"}
    sh, dev = bench.shapes, bench.device
    fp8 = comfy_flux(sh, dev.torch, "fp8", fp8_matmul=True)
    models = {"plain_fp8mm": fp8, "plain_" + bench.weights: comfy_flux(sh, dev.torch, bench.weights),
              "dsd_fp8mm": bench.dsd(comfy_flux(sh, dev.torch, "fp8", fp8_matmul=True))}  # fmt: skip
    runs = {k: (lambda m=m, k=k: bench.run_comfy(m, k.split("_")[0], sh.timed_steps)) for k, m in models.items()}
    try:
        steps, per_round = interleaved(runs, sh.rounds, clock)
        clock.check()
        with fp8_census(fp8) as (calls, fallbacks):
            bench.run_comfy(fp8, "plain", 1)
    finally:
        del runs, models, fp8
        dev.free()
    speed = [r["plain_" + bench.weights] / r["plain_fp8mm"] for r in per_round]
    return {
        "seconds_per_step": {k: statistics.median(v) for k, v in steps.items()},
        "speedup_fp8mm_over_" + bench.weights: statistics.median(speed),
        "fp8_linear_calls": calls[0], "fp8_fallbacks": len(fallbacks),
        "fp8_fallback_example": fallbacks[0][:300] if fallbacks else "",
    }  # fmt: skip


def make_bench(shapes: Shapes, device: Device, threads: int) -> Bench:
    # On the CPU ComfyUI is told it may use fp8 compute, so part 4's code path (torch._scaled_mm on the CPU) runs too.
    flags = [] if device.is_cuda else ["--supports-fp8-compute"]
    if importlib.util.find_spec("comfyui_frontend_package") is None:  # the GPU bundle: no web page is served
        flags += ["--front-end-root", tempfile.mkdtemp(prefix="dsd_no_frontend_")]
    try:
        host = Host(threads, "pytorch", cpu=not device.is_cuda, extra_args=tuple(flags))
    except SystemExit as exc:  # Host's way of saying the host or the pack did not load: a failed part here
        raise RuntimeError(f"ComfyUI host: {exc}") from exc
    import comfy.utils

    comfy.utils.set_progress_bar_enabled(False)  # per-run bars would bury the table in a captured log tail
    return Bench(host, shapes, device)
