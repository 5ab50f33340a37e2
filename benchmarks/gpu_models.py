"""Random-weight models of the GPU suite, created directly on the device (no files, no download):
ComfyUI's own FLUX (bf16 / fp8 weights / fp8 matmul), the DSD adapter file for it, and the authors'
structure (diffusers FLUX + DSD embedder + an unmerged PEFT LoRA)."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.gpu_common import Shapes
from training.config import DEFAULT_LORA_TARGETS


@torch.no_grad()
def randomise_(module: torch.nn.Module, seed: int) -> None:
    """Fill every parameter in place on its own device: norm scales 1, matrices N(0, 1/fan_in) (0.018 at hidden
    3072), vectors N(0, 0.01^2). Timing does not depend on the values as long as activations stay O(1): shrinking
    ones turn into denormals, which are slow on CPUs."""
    for i, (name, p) in enumerate(sorted(module.named_parameters())):
        gen = torch.Generator(p.device).manual_seed(seed * 100_003 + i)
        work = torch.float32 if p.dtype == torch.float32 else torch.bfloat16  # fp8 cannot be drawn into directly
        if p.ndim == 1 and name.endswith(("scale", "norm.weight", "norm_q.weight", "norm_k.weight", "norm_added_q.weight",
                                          "norm_added_k.weight")):  # fmt: skip
            p.fill_(1.0)
            continue
        std = (p[0].numel() ** -0.5) if p.ndim > 1 else 0.01
        p.copy_(torch.randn(p.shape, generator=gen, device=p.device, dtype=work) * std)


def comfy_flux(shapes: Shapes, device: torch.device, weights: str, fp8_matmul: bool = False, seed: int = 0):
    """ComfyUI's ``model_base.Flux`` with the full config, weights created on ``device``, in a ModelPatcher whose
    offload device is ComfyUI's own choice (system RAM on a normal GPU install, as for a loaded checkpoint).

    ``weights``: ``float32`` (CPU toy), ``bf16``, or ``fp8`` (float8_e4m3fn storage, upcast per layer as ComfyUI's
    fp8 checkpoints run); ``fp8_matmul`` picks ComfyUI's fp8 ops (``torch._scaled_mm``) where the device has them."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    dtypes = {"float32": (torch.float32, None), "bf16": (torch.bfloat16, None), "fp8": (torch.float8_e4m3fn, compute)}
    cfg = comfy.supported_models.Flux(shapes.comfy_unet_config())
    cfg.set_inference_dtype(*dtypes[weights])
    if fp8_matmul:
        cfg.optimizations = {**cfg.optimizations, "fp8": True}  # a copy: the class attribute is shared
    model = cfg.get_model({}, "", device=device)
    randomise_(model.diffusion_model, seed)
    offload = comfy.model_management.unet_offload_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=offload)


def lora_modules(shapes: Shapes, targets: tuple[str, ...] = DEFAULT_LORA_TARGETS) -> dict[str, tuple[int, int]]:
    """diffusers module path -> (fan_in, fan_out) of every LoRA target in every block."""
    from training.estimate import block_linears

    double, single, _ = block_linears(shapes.diffusers_config())
    out: dict[str, tuple[int, int]] = {}
    for prefix, count, layers in (("transformer_blocks", shapes.double_blocks, double),
                                  ("single_transformer_blocks", shapes.single_blocks, single)):  # fmt: skip
        for i in range(count):
            out.update({f"{prefix}.{i}.{x.name}": (x.fan_in, x.fan_out) for x in layers if x.name in targets})
    return out


@torch.no_grad()
def lora_pairs(shapes: Shapes, device: torch.device, dtype: torch.dtype, seed: int = 1) -> dict:
    """A random rank-``shapes.rank`` LoRA on every target, drawn on ``device`` (CPU copies for the file)."""
    from dsd.weights.lora import LoraPair

    gen = torch.Generator(device).manual_seed(seed)
    r = shapes.rank
    pairs = {}
    for name, (fan_in, fan_out) in lora_modules(shapes).items():
        down = 0.01 * torch.randn(r, fan_in, generator=gen, device=device, dtype=dtype)
        up = 0.01 * torch.randn(fan_out, r, generator=gen, device=device, dtype=dtype)
        pairs[name] = LoraPair(down=down, up=up, alpha=float(r))
    return pairs


def write_adapter(path: Path, shapes: Shapes, pairs: dict, seed: int = 2) -> Path:
    """The DSD adapter file (embedder + LoRA) as `dsd convert` writes it; the LoRA goes to the CPU for saving."""
    from dsd.weights.adapter import DSDAdapter, save_adapter
    from dsd.weights.lora import LoraPair

    gen = torch.Generator("cpu").manual_seed(seed)
    emb = {"c_embedder.weight": 0.02 * torch.randn(shapes.hidden, 64, generator=gen), "c_embedder.bias": torch.zeros(shapes.hidden)}
    cpu = {k: LoraPair(down=p.down.cpu(), up=p.up.cpu(), alpha=p.alpha) for k, p in pairs.items()}
    return save_adapter(DSDAdapter(c_embedder=emb, lora=cpu), path)


def diffusers_dsd(shapes: Shapes, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """diffusers' FluxTransformer2DModel + DSD embedder, built on ``device`` in ``dtype`` (random weights)."""
    from diffusers import FluxTransformer2DModel

    from dsd.model import DSDTransformer

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are born in the target dtype: no fp32 copy of 12 B weights
    try:
        with torch.device(device):
            model = DSDTransformer(FluxTransformer2DModel.from_config(shapes.diffusers_config()))
    finally:
        torch.set_default_dtype(previous)
    randomise_(model, seed)
    return model.eval()


@torch.no_grad()
def authors_model(shapes: Shapes, device: torch.device, dtype: torch.dtype, pairs: dict, adapter_path: Path):
    """The authors' inference structure: the PEFT LoRA stays unmerged (rank ``shapes.rank``, every target)."""
    from peft import LoraConfig

    from dsd.weights.adapter import load_adapter
    from training.model import target_regex

    model = diffusers_dsd(shapes, device, dtype)
    r = shapes.rank
    with torch.device(device):  # the LoRA layers are born on the device (no CPU init of 2 B parameters)
        model.transformer.add_adapter(LoraConfig(r=r, lora_alpha=r, target_modules=target_regex(list(DEFAULT_LORA_TARGETS))))
    for name, pair in pairs.items():
        mod = model.transformer.get_submodule(name)
        mod.lora_A["default"].weight.copy_(pair.down)
        mod.lora_B["default"].weight.copy_(pair.up)
    model.to(dtype)
    model.load_c_embedder(load_adapter(adapter_path).c_embedder)
    return model.eval()
