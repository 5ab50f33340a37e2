"""Part 3 of the GPU suite: one training step of the real trainer code (training.model / objective / loop's
optimizer) on a random-weight FLUX built on the device, next to what ``python -m training estimate`` predicts.

Rank-``shapes.rank`` LoRA on every default target + the condition embedder, frozen base in bf16 (fp32 on the
CPU toy), gradient checkpointing, batch 1 at the suite's canvas; AdamW and 8-bit AdamW (bitsandbytes). The
step is the loop's own body: bf16 autocast, flow-matching loss, backward, gradient clipping, optimizer step.
FLOPs of one step are also counted by ``torch.utils.flop_counter`` (untimed step) to check the estimator's
FLOP formula independently of the machine's speed. ``adamw_k3`` is the same AdamW step on a multi-reference
canvas of three references (four frames of the suite's frame size), against the estimate for k = 3.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from benchmarks.gpu_common import GIB, Device, OutOfTime, PartClock, Shapes, tensor_bytes
from benchmarks.gpu_models import diffusers_dsd
from training.config import TrainConfig, load_config
from training.estimate import estimate
from training.loop import make_optimizer
from training.model import make_trainable, trainable_parameters
from training.objective import Batch, flow_matching_loss

# measurement -> (optimizer, references k); k = 3 runs second, so a short budget still measures it
VARIANTS = {"adamw": ("adamw", 1), "adamw_k3": ("adamw", 3), "adamw8bit": ("adamw8bit", 1)}


def train_config(shapes: Shapes, optimizer: str, device: Device, folder: Path, references: int = 1) -> TrainConfig:
    """The trainer config of this measurement; its transformer folder holds only config.json (for the estimator)."""
    (folder / "transformer").mkdir(parents=True, exist_ok=True)
    (folder / "transformer" / "config.json").write_text(json.dumps(shapes.diffusers_config()))
    bf16 = device.is_cuda
    return load_config(None, [
        f"model.transformer='{folder / 'transformer'}'", f"model.base_dtype='{'bfloat16' if bf16 else 'float32'}'",
        f"model.max_sequence_length={shapes.text_tokens}", f"dataset.frame_buckets=[[{shapes.height}, {shapes.width // 2}]]",
        f"network.rank={shapes.rank}", f"network.alpha={float(shapes.rank)}", "training.batch_size=1", "training.gpus=1",
        "training.effective_batch_size=1", f"training.mixed_precision='{'bf16' if bf16 else 'no'}'",
        "training.gradient_checkpointing=true", f"optimizer.name='{optimizer}'", f"training.references={{{references} = 1.0}}",
    ])  # fmt: skip


def make_batch(shapes: Shapes, references: int = 1) -> tuple[Batch, tuple[torch.Tensor, torch.Tensor]]:
    """Random latents of the canvas: two frames, or ``references + 1`` frames of the suite's frame size."""
    g = torch.Generator().manual_seed(0)
    hl, wl = shapes.height // 8, shapes.width // 2 * (references + 1) // 8
    batch = Batch(cond=torch.randn(1, 16, hl, wl, generator=g), target=torch.randn(1, 16, hl, wl, generator=g),
                  prompt_embeds=torch.randn(1, shapes.text_tokens, shapes.context_dim, generator=g),
                  pooled=torch.randn(1, shapes.pooled_dim, generator=g), keys=["gpu-suite"], references=references)  # fmt: skip
    return batch, (torch.zeros(1, shapes.text_tokens, shapes.context_dim), torch.zeros(1, shapes.pooled_dim))


class Trainer:
    """Model + optimizer + one step, as ``training.loop.train`` runs them (single process)."""

    def __init__(self, cfg: TrainConfig, shapes: Shapes, device: Device) -> None:
        self.cfg, self.device = cfg, device
        dtype = torch.bfloat16 if cfg.model.base_dtype == "bfloat16" else torch.float32
        base = diffusers_dsd(shapes, device.torch, dtype)
        with torch.device(device.torch):  # PEFT's LoRA layers are born on the device: no CPU init of 2 B parameters
            self.model = make_trainable(base, cfg.model, cfg.network, None, cfg.training.gradient_checkpointing).train()
        self.params = list(trainable_parameters(self.model).values())
        self.optimizer = make_optimizer(cfg.optimizer, self.params)
        self.batch, self.empty = make_batch(shapes, max(cfg.training.reference_mix))
        self.generator = torch.Generator("cpu").manual_seed(0)
        self.grad_bytes = 0

    def step(self) -> float:
        dev = self.device.torch
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.cfg.training.mixed_precision == "bf16"):
            loss, _ = flow_matching_loss(self.model, self.batch, self.cfg.training, self.generator, self.empty, device=dev)
        loss.backward()
        self.grad_bytes = sum(p.grad.nbytes for p in self.params if p.grad is not None)
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optimizer.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def state_bytes(self) -> int:
        """CPU stand-in for peak memory: weights + gradients + optimizer state (activations not counted)."""
        opt = sum(t.nbytes for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.ndim > 0)
        return tensor_bytes(self.model) + self.grad_bytes + opt


def counted_flops(trainer: Trainer) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        trainer.step()
    return float(counter.get_total_flops())


def run_one(shapes: Shapes, device: Device, variant: str, clock: PartClock, folder: Path) -> dict:
    optimizer, references = VARIANTS[variant]
    cfg = train_config(shapes, optimizer, device, folder, references)
    baseline = device.reset_peak()
    trainer = Trainer(cfg, shapes, device)
    flops = counted_flops(trainer)  # also the warm-up step (first allocations, cuBLAS/SDPA choices)
    times, losses = [], []
    for _ in range(shapes.train_steps):
        clock.check(max(times, default=0.0))
        t = device.now()
        losses.append(trainer.step())
        times.append(device.now() - t)
    peak = device.peak()
    measured = (peak - baseline) if peak is not None else trainer.state_bytes()
    del trainer
    device.free()
    e = estimate(cfg, world_size=1)
    sec = sorted(times)[len(times) // 2]
    state = (e.base_weights_gib + e.trainable_gib + e.gradients_gib + e.optimizer_gib + e.ema_gib) * GIB
    predicted_mem = e.total_fsdp_gib * GIB if peak is not None else state  # world 1: the single-process total
    return {
        "seconds_per_step": sec, "steps_timed": len(times), "loss_finite": all(x == x and abs(x) < float("inf") for x in losses),
        "predicted_seconds_per_step": e.seconds_per_step, "ratio_seconds_measured_over_predicted": sec / e.seconds_per_step,
        "memory_bytes": measured, "predicted_memory_bytes": predicted_mem, "ratio_memory_measured_over_predicted": measured / predicted_mem,
        "memory_source": "cuda max_memory_allocated (model, LoRA, grads, optimizer, activations)" if peak is not None else
                         "CPU tensor bytes: weights + gradients + optimizer state (activations not counted); predicted: the same items",
        "flops_per_step_counted": flops, "flops_per_step_predicted": e.flops_per_sample,
        "ratio_flops_counted_over_predicted": flops / e.flops_per_sample,
        "mfu": flops / sec / e.peak_flops, "mfu_peak_tflops": e.peak_flops / 1e12, "predicted_mfu": e.mfu,
        "lora_params": e.lora_params, "trainable_params_predicted": e.lora_params + e.c_embedder_params,
        "references": references, "image_tokens": e.image_tokens,
    }  # fmt: skip


def part_training(shapes: Shapes, device: Device, clock: PartClock) -> dict:
    out: dict[str, dict] = {}
    last = 0.0
    with tempfile.TemporaryDirectory(prefix="dsd_gpu_train_") as tmp:
        for variant, (optimizer, references) in VARIANTS.items():
            if optimizer == "adamw8bit":
                try:
                    import bitsandbytes  # noqa: F401
                except ImportError:
                    out[variant] = {"status": "skipped (bitsandbytes missing)"}
                    continue
            t = clock.elapsed()
            try:
                clock.check(last * (1 + references) / 2)  # a longer canvas takes longer
                out[variant] = {"status": "measured", **run_one(shapes, device, variant, clock, Path(tmp))}
            except OutOfTime as exc:  # the other measurements' figures stay
                out[variant] = {"status": "skipped (time)", "detail": str(exc)}
                device.free()
            last = (clock.elapsed() - t) * 2 / (1 + references)  # per two frames
    return out
