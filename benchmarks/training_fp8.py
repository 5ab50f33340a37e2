"""fp8 frozen base for LoRA training: the hand-written Float8Linear vs diffusers' layerwise casting vs torchao, one run.

The question (issue 11): can a library replace the trainer's own ``Float8Linear`` (per-row scale, upcast in
forward; kept here, removed from ``training.model``, which now uses torchao)? Each variant stores the
frozen linears of the transformer blocks in float8_e4m3fn under a trainable PEFT LoRA, on a FLUX-architecture
model at diffusers' default init (hidden 512, 2 double + 4 single blocks; real FLUX weights are not measured).
Per variant: bytes of the block linears' weights, relative error of the output and of the LoRA gradients
against the fp32 model, and forward+backward time as a ratio to fp32 (interleaved repeats, median). All
compute is fp32 on the CPU, so the times say little about a GPU; the errors and bytes carry over.

Run: .venv/bin/python -m benchmarks.training_fp8
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

import torch

from dsd.model import DSDTransformer
from dsd.tokens import image_ids, text_ids
from training.config import NetworkConfig
from training.model import _frozen_block_linear, add_lora, quantize_fp8, trainable_parameters

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)

CONFIG = {"patch_size": 1, "in_channels": 64, "num_layers": 2, "num_single_layers": 4, "attention_head_dim": 64,
          "num_attention_heads": 8, "joint_attention_dim": 256, "pooled_projection_dim": 256, "guidance_embeds": True,
          "axes_dims_rope": [8, 28, 28]}  # fmt: skip
H, W, TXT, REPEATS = 32, 32, 32, 11  # latent size (256 packed image tokens)


def fp32_model() -> DSDTransformer:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = DSDTransformer(FluxTransformer2DModel.from_config(CONFIG)).requires_grad_(False)
    add_lora(model, NetworkConfig(rank=16, alpha=16.0))
    with torch.no_grad():  # a LoRA that already moved, so that its gradients depend on the base
        for n, p in trainable_parameters(model).items():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    model.c_embedder.requires_grad_(True)
    return model


class Float8Linear(torch.nn.Module):
    """The removed hand-written variant: a frozen linear in float8_e4m3fn with a per-row scale, upcast in forward."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1, keepdim=True) / 448.0).clamp(min=1e-12)
        self.weight = torch.nn.Parameter((w / scale).to(torch.float8_e4m3fn), requires_grad=False)
        self.register_buffer("weight_scale", scale)
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight.to(torch.float32) * self.weight_scale).to(x.dtype)
        return torch.nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))


def hand_written(model: DSDTransformer) -> None:
    for name, module in list(model.transformer.named_modules()):
        for child_name, child in list(module.named_children()):
            if _frozen_block_linear(child, f"{name}.{child_name}" if name else child_name):
                setattr(module, child_name, Float8Linear(child))


def blocks(model: DSDTransformer) -> list[torch.nn.Module]:
    return [*model.transformer.transformer_blocks, *model.transformer.single_transformer_blocks]


def layerwise(model: DSDTransformer) -> None:
    from diffusers.hooks import apply_layerwise_casting

    for block in blocks(model):
        apply_layerwise_casting(block, torch.float8_e4m3fn, torch.float32, skip_modules_pattern=("lora_",))


def weight_bytes(model: DSDTransformer) -> int:
    seen, total = set(), 0
    for block in blocks(model):
        for name, t in [*block.named_parameters(), *block.named_buffers()]:
            if "lora_" in name or "norm" in name or t.ndim < 2 and "scale" not in name:
                continue
            parts = [getattr(t, a) for a in t.__tensor_flatten__()[0]] if hasattr(t, "__tensor_flatten__") else [t]
            for part in parts:
                if part.data_ptr() not in seen:
                    seen.add(part.data_ptr())
                    total += part.numel() * part.element_size()
    return total


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    n = (H // 2) * (W // 2)
    return {"hidden_states": torch.randn(1, n, 64, generator=g), "condition_tokens": torch.randn(1, n, 64, generator=g),
            "encoder_hidden_states": torch.randn(1, TXT, 256, generator=g), "pooled_projections": torch.randn(1, 256, generator=g),
            "timestep": torch.tensor([0.6]), "img_ids": image_ids(H, W), "txt_ids": text_ids(TXT),
            "guidance": torch.tensor([1.0])}  # fmt: skip


def step(model: DSDTransformer, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward + backward; returns (output, flattened LoRA/embedder gradients)."""
    for p in trainable_parameters(model).values():
        p.grad = None
    out = model(**x)
    out.pow(2).mean().backward()
    return out.detach(), torch.cat([p.grad.flatten() for p in trainable_parameters(model).values()])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main() -> None:
    ref = fp32_model()
    variants = {"fp32 (reference)": ref}
    for name, apply in (("hand-written Float8Linear", hand_written), ("diffusers layerwise casting", layerwise),
                        ("torchao (training.model)", lambda m: quantize_fp8(m.transformer))):  # fmt: skip
        model = copy.deepcopy(ref)
        try:
            apply(model)
        except ImportError as exc:  # torchao not installed
            print(f"{name}: not measured ({exc})")
            continue
        variants[name] = model
    x = inputs()
    ref_out, ref_grad = step(ref, x)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(REPEATS):
        for name, model in variants.items():
            t0 = time.perf_counter()
            step(model, x)
            times[name].append(time.perf_counter() - t0)
    base_t, base_b = statistics.median(times["fp32 (reference)"]), weight_bytes(ref)
    print(f"FLUX-architecture model, hidden 512, 2+4 blocks, {(H // 2) * (W // 2)} image + {TXT} text tokens, LoRA rank 16, CPU 1 thread")
    print(f"{'variant':32s} {'weights MiB':>11s} {'x fp32':>7s} {'out err':>9s} {'grad err':>9s} {'time x fp32':>11s}")
    for name, model in variants.items():
        out, grad = step(model, x)
        b, t = weight_bytes(model), statistics.median(times[name])
        print(f"{name:32s} {b / 2**20:11.2f} {b / base_b:7.3f} {rel(out, ref_out):9.2e} {rel(grad, ref_grad):9.2e} {t / base_t:11.2f}")


if __name__ == "__main__":
    main()
