"""The GPU suite (python -m benchmarks.gpu_suite) as the CPU can check it: the real script with --tiny in a
subprocess (real ComfyUI host, real trainer code, toy shapes), the JSON's shape and sanity, the time caps,
and the FLOP count it puts next to the physical bound."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.gpu_common import FULL, TINY, Deadline, OutOfTime, forward_flops
from benchmarks.gpu_suite import PARTS, render_markdown
from tests.needs import require_comfyui

REPO = Path(__file__).resolve().parents[2]
SUITE = [sys.executable, "-m", "benchmarks.gpu_suite"]  # run from the repo root (cwd=REPO)


def run_suite(out: Path, *args: str, timeout: float = 240) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([*SUITE, "--tiny", "--out", str(out), *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "gpu_figures.json").read_text())
    assert (out / "gpu_figures.md").read_text() == r.stdout  # the printed table is the written one
    return report, r.stdout


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.comfyui
@pytest.mark.slow
def test_tiny_suite_yields_every_figure(tmp_path):
    require_comfyui()
    report, table = run_suite(tmp_path)
    assert report["mode"] == "tiny" and report["device"] == "CPU" and report["shapes"]["name"] == TINY.name
    parts = report["parts"]
    assert set(parts) == set(PARTS)
    assert all(p["status"] == "measured" for p in parts.values()), {k: p["status"] for k, p in parts.items()}

    s = parts["sampling"]
    for variant in ("plain", "dsd", "dsd_cfg", "authors_cfg"):
        t = s["seconds_per_step"][variant]
        assert positive(t["median"]) and t["min"] <= t["median"] <= t["max"] and t["n"] == TINY.timed_steps * 2 * TINY.rounds
        assert positive(s["seconds_per_image"][variant]) and positive(s["bound_seconds_per_image"][variant])
    assert positive(s["ratio_dsd_over_plain"]) and positive(s["speedup_ours_over_authors_cfg"])
    assert len(s["ratio_dsd_over_plain_rounds"]) == TINY.rounds
    # true CFG is three branches; the authors' unmerged LoRA adds to each of them
    bound = s["bound_seconds_per_image"]
    assert bound["dsd_cfg"] > 2.5 * bound["plain"] and bound["authors_cfg"] > bound["dsd_cfg"]

    m = parts["memory"]
    assert set(m["models"]) == {"plain_float32", "dsd_float32", "plain_fp8", "dsd_fp8"}
    assert all(positive(v["bytes"]) for v in m["models"].values()) and positive(m["adapter_file_bytes"])
    assert m["models"]["plain_fp8"]["bytes"] < m["models"]["plain_float32"]["bytes"]  # fp8 weights really are smaller
    assert 0 < m["adapter_cost_over_file_float32"] < 1.1  # the LoRA is merged: only the embedder stays
    assert "CPU tensor bytes" in m["source"]

    t = parts["training"]
    adamw = t["adamw"]
    assert adamw["status"] == "measured" and adamw["loss_finite"]
    for key in ("seconds_per_step", "predicted_seconds_per_step", "memory_bytes", "predicted_memory_bytes", "mfu",
                "flops_per_step_counted", "flops_per_step_predicted"):  # fmt: skip
        assert positive(adamw[key]), key
    # the estimator's FLOP formula against torch's own count of the same step (checkpointing recompute included)
    assert 0.8 < adamw["ratio_flops_counted_over_predicted"] < 1.2
    assert 0.8 < adamw["ratio_memory_measured_over_predicted"] < 1.2
    k3 = t["adamw_k3"]  # multi-reference: a canvas of four frames, against the estimate for k = 3
    assert k3["status"] == "measured" and k3["references"] == 3 and 0.8 < k3["ratio_flops_counted_over_predicted"] < 1.2
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        assert t["adamw8bit"]["status"] == "skipped (bitsandbytes missing)"
    else:
        assert t["adamw8bit"]["status"] == "measured"

    f = parts["fp8_matmul"]
    assert set(f["seconds_per_step"]) == {"plain_fp8mm", "plain_float32", "dsd_fp8mm"}
    assert all(positive(v) for v in f["seconds_per_step"].values())
    # ComfyUI's fp8 ops (comfy-kitchen's scaled matmul) really ran: every linear call, none fell back to upcasting
    assert f["fp8_linear_calls"] > 0 and f["fp8_fallbacks"] == 0, f["fp8_fallback_example"]

    assert "| sampling | ratio DSD / plain |" in table and "| training | adamw: MFU |" in table
    assert positive(report["total_seconds"])


def test_part_over_its_cap_is_reported_not_run(tmp_path):
    t = time.monotonic()
    report, table = run_suite(tmp_path, "--parts", "training", "--budget-s", "0.5", timeout=120)
    part = report["parts"]["training"]
    assert part["adamw"]["status"] == "skipped (time)" and "cap" in part["adamw"]["detail"]
    assert part["adamw8bit"]["status"] in ("skipped (time)", "skipped (bitsandbytes missing)")
    assert list(report["parts"]) == ["training"]
    assert "| training | adamw | skipped (time) |" in table
    assert time.monotonic() - t < 120


def test_deadline_caps_each_part_by_what_is_left():
    d = Deadline(10.0)
    assert 9.0 < d.part("a", 100.0).cap_s <= 10.0
    clock = d.part("b", 3.0)
    assert clock.cap_s == 3.0
    clock.check(2.0)
    with pytest.raises(OutOfTime, match="b: .* cap"):
        clock.check(5.0)
    assert Deadline(-1.0).part("c", 5.0).cap_s == 0.0


def test_flop_count_at_flux_dev_shapes():
    base, lora = forward_flops(FULL, lora_rank=512, lora_targets=("attn.to_q",))
    s = 2048 + 512  # 512x1024 canvas: 32 x 64 image tokens; T5 512
    d = 3072
    linear = 2 * s * (19 * 12 * d * d + 38 * 12 * d * d)  # both streams of a double block and a single block: 12 D^2 a token
    attention = 4 * s * s * d * 57
    assert base == pytest.approx(linear + attention, rel=0.01)  # + the embedders and the final layer
    assert lora == pytest.approx(2 * s * (19 * 512 * 2 * d / 2 + 38 * 512 * 2 * d))


def test_markdown_lists_skipped_and_failed_parts():
    report = {"mode": "gpu", "device": "X", "torch": "t", "cuda": "c", "note": "n", "import_seconds": 1.0,
              "shapes": {"height": 512, "width": 1024}, "total_seconds": 3.0,
              "parts": {"memory": {"status": "skipped (time)", "detail": "why", "seconds": 1.0},
                        "fp8_matmul": {"status": "failed: RuntimeError: boom", "seconds": 0.5}}}  # fmt: skip
    md = render_markdown(report)
    assert "| memory | status | skipped (time) | why |" in md
    assert "| fp8_matmul | status | failed: RuntimeError: boom |" in md
    assert "sampling" not in md


@pytest.mark.slow
def test_estimator_flops_at_flux_dev_width_on_the_meta_device(tmp_path):
    """The estimator's FLOPs of one training step against torch's count of the real trainer step at FLUX.1-dev
    width, canvas, T5 length and rank 512 (2 + 2 blocks: the count is per block), on the meta device: no memory,
    no compute. (All 19 + 38 blocks, measured once: 149.3 TFLOP counted vs 144.7 predicted, 1.03.)"""
    from dataclasses import replace
    from types import SimpleNamespace

    import torch
    from diffusers import FluxTransformer2DModel
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.gpu_training import make_batch, train_config
    from dsd.model import DSDTransformer
    from training.estimate import estimate
    from training.model import make_trainable
    from training.objective import flow_matching_loss

    shapes = replace(FULL, double_blocks=2, single_blocks=2)
    gpu = SimpleNamespace(is_cuda=True)  # the GPU config (bf16 base, bf16 activations); nothing here touches CUDA
    cfg = train_config(shapes, "adamw", gpu, tmp_path)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = DSDTransformer(FluxTransformer2DModel.from_config(shapes.diffusers_config()))
            model = make_trainable(model, cfg.model, cfg.network, None, gradient_checkpointing=True).train()
    finally:
        torch.set_default_dtype(previous)
    model.to(torch.bfloat16)  # the LoRA too: meta has no autocast
    batch, empty = make_batch(shapes)
    with FlopCounterMode(display=False) as counter:
        loss, _ = flow_matching_loss(model, batch, cfg.training, torch.Generator().manual_seed(0), empty, device="meta",
                                     dtype=torch.bfloat16)  # fmt: skip
        loss.backward()
    e = estimate(cfg, world_size=1)
    assert e.lora_params == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert 0.8 < counter.get_total_flops() / e.flops_per_sample < 1.2


def test_fp8_fallbacks_reported_at_info_are_captured_and_nothing_else_changes():
    import logging

    from benchmarks.gpu_sampling import captured_logs

    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.WARNING)
    try:
        with captured_logs("Exception during fp8 op") as got:
            logging.getLogger("comfy").info("Exception during fp8 op: mat2 shape (1, 3072) not divisible by 16")
            logging.info("something else")
        logging.info("Exception during fp8 op: after the block")
        assert got == ["Exception during fp8 op: mat2 shape (1, 3072) not divisible by 16"]
        assert root.level == logging.WARNING
    finally:
        root.setLevel(before)


def test_a_failing_part_is_recorded_and_the_run_goes_on(tmp_path):
    env = {**os.environ, "COMFYUI_PATH": str(tmp_path)}  # not a ComfyUI: the sampling part cannot start its host
    r = subprocess.run([*SUITE, "--tiny", "--out", str(tmp_path / "out"), "--parts", "sampling,training",
                        "--budget-s", "1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    parts = json.loads((tmp_path / "out" / "gpu_figures.json").read_text())["parts"]
    assert parts["sampling"]["status"].startswith("failed: HostError: COMFYUI_PATH=")
    assert "Traceback" in parts["sampling"]["traceback"]
    assert parts["training"]["adamw"]["status"] == "skipped (time)"  # the next part still ran (and kept its cap)
