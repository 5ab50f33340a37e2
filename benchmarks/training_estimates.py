"""The memory/time estimates of the ready configs (same numbers as the .estimate.md files beside them).
Run: .venv/bin/python -m benchmarks.training_estimates
"""

from __future__ import annotations

from pathlib import Path

from training.config import load_config
from training.estimate import estimate, estimate_variant

ROOT = Path(__file__).resolve().parents[1]

for name in ("paper_8xh100.toml", "single_24gb.toml"):
    cfg = load_config(ROOT / "training" / "configs" / name)
    e = estimate(cfg)
    off = estimate_variant(cfg, e.world_size, False)
    print(f"{name}: base {e.base_params / 1e9:.2f} B, LoRA {e.lora_params / 1e6:.0f} M (rank {cfg.network.rank}); "
          f"per GPU DDP {e.total_ddp_gib:.1f} GiB, FSDP {e.total_fsdp_gib:.1f} GiB; activations/sample "
          f"{e.activations_per_sample_gib:.2f} GiB (no checkpointing {off.activations_per_sample_gib:.2f}); "
          f"{e.flops_per_sample / 1e12:.0f} TFLOP/sample; {e.seconds_per_step:.1f} s/step x {cfg.training.steps} = "
          f"{e.hours_total:.0f} h on {e.world_size} GPU(s) at MFU {e.mfu}")
