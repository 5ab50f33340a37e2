"""What every part of the GPU suite shares: the shapes (FLUX.1-dev or toy), the time budget, the device
(timing that waits for the GPU, peak memory) and the FLOP count of one transformer call."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Any

import torch

GIB = 1024**3
# Dense bf16 matmul throughput the issue takes for an H100/H200 (the datasheet says 989 TFLOP/s; ~790 is what
# large bf16 GEMMs sustain): the physical bound of a sampling step. The estimator's MFU uses its own 989.
SUSTAINED_BF16_PEAK = 790e12


@dataclass(frozen=True)
class Shapes:
    """Transformer shapes, canvas and run lengths of one suite mode."""

    name: str
    hidden: int
    heads: int
    double_blocks: int
    single_blocks: int
    context_dim: int
    pooled_dim: int
    axes: tuple[int, int, int]
    height: int  # canvas pixels (the whole two-frame canvas)
    width: int
    text_tokens: int
    rank: int  # the adapter's / trainer's LoRA rank
    timed_steps: int  # timed sampler steps per run (one more runs first and is dropped)
    rounds: int  # A-B-B-A rounds
    train_steps: int  # timed training steps (one more runs first and is dropped)
    steps_per_image: int = 28
    cfg_start_step: int = 2

    @property
    def image_tokens(self) -> int:
        return (self.height // 16) * (self.width // 16)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def comfy_unet_config(self) -> dict[str, Any]:
        """ComfyUI's ``unet_config`` for ``comfy.supported_models.Flux``."""
        return {
            "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": self.pooled_dim,
            "context_in_dim": self.context_dim, "hidden_size": self.hidden, "mlp_ratio": 4.0, "num_heads": self.heads,
            "depth": self.double_blocks, "depth_single_blocks": self.single_blocks, "axes_dim": list(self.axes),
            "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True, "txt_ids_dims": [],
        }  # fmt: skip

    def diffusers_config(self) -> dict[str, Any]:
        """diffusers' ``FluxTransformer2DModel`` config (also what ``training.estimate`` reads)."""
        return {
            "patch_size": 1, "in_channels": 64, "num_layers": self.double_blocks, "num_single_layers": self.single_blocks,
            "attention_head_dim": self.head_dim, "num_attention_heads": self.heads, "joint_attention_dim": self.context_dim,
            "pooled_projection_dim": self.pooled_dim, "guidance_embeds": True, "axes_dims_rope": list(self.axes),
        }  # fmt: skip


FULL = Shapes(
    name="FLUX.1-dev", hidden=3072, heads=24, double_blocks=19, single_blocks=38, context_dim=4096, pooled_dim=768,
    axes=(16, 56, 56), height=512, width=1024, text_tokens=512, rank=512, timed_steps=4, rounds=2, train_steps=3,
)  # fmt: skip
TINY = Shapes(
    name="tiny (CPU)", hidden=64, heads=2, double_blocks=1, single_blocks=1, context_dim=32, pooled_dim=32,
    axes=(8, 12, 12), height=64, width=128, text_tokens=8, rank=8, timed_steps=2, rounds=1, train_steps=1,
)  # fmt: skip


class OutOfTime(RuntimeError):
    """A part's time cap would be overrun by its next run; the part reports "skipped (time)"."""


class Deadline:
    """The whole run's budget, shared out as per-part caps (a part never gets more than what is left)."""

    def __init__(self, total_s: float) -> None:
        self.start = time.monotonic()
        self.total_s = total_s

    def remaining(self) -> float:
        return self.total_s - (time.monotonic() - self.start)

    def part(self, name: str, cap_s: float) -> PartClock:
        return PartClock(name, min(cap_s, max(0.0, self.remaining())))


class PartClock:
    def __init__(self, name: str, cap_s: float) -> None:
        self.name = name
        self.cap_s = cap_s
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.cap_s - self.elapsed()

    def check(self, need_s: float = 0.0) -> None:
        """Raise :class:`OutOfTime` unless ``need_s`` more seconds fit under the cap."""
        if self.remaining() < need_s:
            raise OutOfTime(f"{self.name}: {self.elapsed():.0f} s used of its {self.cap_s:.0f} s cap, next run needs ~{need_s:.0f} s")


class Device:
    """The suite's device: CUDA (real run) or the CPU (``--tiny``). Times wait for queued GPU work."""

    def __init__(self, tiny: bool) -> None:
        if not tiny and not torch.cuda.is_available():
            raise SystemExit("the GPU suite needs CUDA (torch.cuda.is_available() is False); use --tiny for the CPU check")
        self.torch = torch.device("cpu" if tiny else "cuda")
        self.is_cuda = self.torch.type == "cuda"
        self.name = torch.cuda.get_device_name(0) if self.is_cuda else "CPU"
        if not self.is_cuda:
            torch.set_flush_denormal(True)  # random toy weights must not time the CPU's denormal path

    def sync(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize()

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def free(self) -> None:
        """Release dropped models: ComfyUI forgets a loaded model when its weakref dies (hence the collection)."""
        if self.is_cuda:
            gc.collect()
            torch.cuda.empty_cache()

    def reset_peak(self) -> int:
        """Start a peak-memory window; returns the bytes allocated now (the window's baseline)."""
        self.free()
        if not self.is_cuda:
            return 0
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()

    def peak(self) -> int | None:
        return torch.cuda.max_memory_allocated() if self.is_cuda else None


def tensor_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers of ``modules`` (each storage once): the CPU stand-in for GPU memory."""
    seen: dict[int, int] = {}
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def forward_flops(shapes: Shapes, batch: int = 1, lora_rank: int = 0, lora_targets: tuple[str, ...] = ()) -> tuple[float, float]:
    """(base, unmerged-LoRA extra) FLOPs of one transformer call: 2 x weights each token passes x tokens
    + 4 S^2 D attention per block, counted from the same layer list as ``training.estimate``."""
    from training.estimate import block_linears

    double, single, _ = block_linears(shapes.diffusers_config())
    s = shapes.image_tokens + shapes.text_tokens
    nd, ns = shapes.double_blocks, shapes.single_blocks
    per_token = nd * sum(x.fan_in * x.fan_out for x in double if x.per_token) / 2  # each token passes one stream
    per_token += ns * sum(x.fan_in * x.fan_out for x in single if x.per_token)
    lora = nd * sum(lora_rank * (x.fan_in + x.fan_out) for x in double if x.name in lora_targets) / 2
    lora += ns * sum(lora_rank * (x.fan_in + x.fan_out) for x in single if x.name in lora_targets)
    base = 2 * per_token * s + 4 * s * s * shapes.hidden * (nd + ns)
    return float(base * batch), float(2 * lora * s * batch)
