"""The trainable DSD model: frozen FLUX (bf16 / fp8 / fp32) + zero-init condition embedder + PEFT LoRA.

Only the LoRA and ``c_embedder`` train; they are kept in fp32 (the optimizer's master copy),
whatever the base dtype. The fp8 base stores each frozen linear of the blocks as ``float8_e4m3fn``
with a per-output-row scale (torchao's weight-only fp8) and upcasts it per layer in forward: half the
bf16 memory; the matmul itself runs in the compute dtype.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from dsd.model import DSDTransformer
from dsd.weights.lora import LoraPair

from .config import ModelConfig, NetworkConfig

logger = logging.getLogger(__name__)

ADAPTER = "default"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float8": torch.bfloat16}


class ModelLoadError(ValueError):
    """The model paths in [model] do not point at usable FLUX weights."""


class OptionalDependencyError(ImportError):
    """A feature needs a package that is not installed."""


def _frozen_block_linear(module: nn.Module, fqn: str) -> bool:
    """Frozen linears inside the double/single blocks, PEFT base layers included; never the LoRA or the embedders."""
    return type(module) is nn.Linear and not module.weight.requires_grad and "transformer_blocks." in fqn and ".lora_" not in fqn


def quantize_fp8(root: nn.Module) -> int:
    """Store every frozen linear of the transformer blocks in float8_e4m3fn with torchao (weight-only, per-row scale).

    benchmarks/training_fp8.py: the same bytes and errors as the hand-written per-row ``Float8Linear`` this
    replaced (output 2.9e-3, LoRA gradients 5.4e-3 relative to fp32); diffusers' layerwise casting stores the
    same bytes without a scale, which leaves FLUX's small weights in fp8's subnormal range (4.1e-3 / 7.2e-3).
    """
    try:
        from torchao.quantization import Float8WeightOnlyConfig, quantize_
    except ImportError as exc:
        raise OptionalDependencyError(
            'model.base_dtype = "float8" needs torchao (fp8 weight-only storage of the frozen base): '
            '`pip install torchao`, or set model.base_dtype = "bfloat16"'
        ) from exc
    count = sum(_frozen_block_linear(m, n) for n, m in root.named_modules())
    quantize_(root, Float8WeightOnlyConfig(), filter_fn=_frozen_block_linear)
    return count


def _flux_transformer_folder(cfg: ModelConfig) -> Path:
    if cfg.transformer:
        folder = Path(cfg.transformer)
    elif cfg.flux:
        root = Path(cfg.flux)
        folder = root / "transformer" if (root / "transformer" / "config.json").is_file() else root
    else:
        raise ModelLoadError("[model] needs flux (a diffusers FLUX.1-dev folder), transformer, or release")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"{folder}: no config.json; model.flux must be a diffusers FLUX.1-dev folder (with transformer/) "
            "or model.transformer a diffusers transformer folder"
        )
    return folder


def load_base(cfg: ModelConfig, device: str | torch.device = "cpu") -> tuple[DSDTransformer, dict[str, LoraPair] | None]:
    """The frozen DSD transformer (plain FLUX + zero embedder, or the release) and the release LoRA if any."""
    dtype = DTYPES[cfg.base_dtype]
    if cfg.release:
        from dsd.weights.release import find_release_parts, load_release_lora, load_release_transformer

        tdir, lora_path = find_release_parts(cfg.release)
        model = load_release_transformer(tdir, dtype=dtype, device=device)
        lora = load_release_lora(lora_path) if lora_path is not None else None
    else:
        from diffusers import FluxTransformer2DModel

        folder = _flux_transformer_folder(cfg)
        transformer = FluxTransformer2DModel.from_pretrained(folder, dtype=dtype, local_files_only=True)
        model = DSDTransformer(transformer.to(device))
        lora = None
    model.requires_grad_(False)
    model.c_embedder.to(dtype=torch.float32)
    return model, lora


def target_regex(targets: list[str]) -> str:
    """PEFT full-match regex: only linears inside the double/single blocks (never the top-level proj_out)."""
    alts = "|".join(re.escape(t) for t in targets)
    return rf"(transformer_blocks|single_transformer_blocks)\.\d+\.({alts})"


def add_lora(model: DSDTransformer, net: NetworkConfig) -> int:
    """Inject a PEFT LoRA (A: kaiming, B: zero, so the model is unchanged at step 0); returns #modules."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=net.rank, lora_alpha=net.alpha, target_modules=target_regex(net.target_modules), lora_dropout=0.0)
    inject_adapter_in_model(config, model.transformer, adapter_name=ADAPTER)
    modules = lora_modules(model)
    if not modules:
        raise ModelLoadError(f"network.target_modules {net.target_modules} matched no linear layer of the transformer")
    for layer in modules.values():
        for p in (layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight):
            p.data = p.data.to(torch.float32)
            p.requires_grad_(True)
    return len(modules)


def lora_modules(model: DSDTransformer) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.transformer.named_modules() if isinstance(m, LoraLayer) and ADAPTER in m.lora_A}


def lora_pairs(model: DSDTransformer, alpha: float) -> dict[str, LoraPair]:
    """The LoRA in the project's canonical form (diffusers module path -> pair), fp32 CPU copies."""
    return {
        name: LoraPair(
            down=m.lora_A[ADAPTER].weight.detach().float().cpu().clone(),
            up=m.lora_B[ADAPTER].weight.detach().float().cpu().clone(),
            alpha=float(alpha),
        )
        for name, m in sorted(lora_modules(model).items())
    }


@torch.no_grad()
def load_lora_pairs(model: DSDTransformer, pairs: dict[str, LoraPair], alpha: float, source: str = "<memory>") -> None:
    """Copy a LoRA into the PEFT modules, rescaling B so that ``scale * B @ A`` is unchanged."""
    modules = lora_modules(model)
    missing = sorted(set(pairs) - set(modules))
    if missing:
        raise ModelLoadError(f"{source}: LoRA targets {missing[:3]} which network.target_modules does not adapt")
    for name, pair in pairs.items():
        layer = modules[name]
        a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        if a.shape != pair.down.shape or b.shape != pair.up.shape:
            raise ModelLoadError(
                f"{source}: LoRA for {name} has rank {pair.rank}, network.rank is {a.shape[0]}; set network.rank="
                f"{pair.rank} or network.init_from_release=false"
            )
        a.copy_(pair.down.to(a.dtype))
        b.copy_((pair.up.float() * (pair.scale / (alpha / a.shape[0]))).to(b.dtype))


def build_model(model_cfg: ModelConfig, net: NetworkConfig, gradient_checkpointing: bool = False,
                device: str | torch.device = "cpu") -> DSDTransformer:  # fmt: skip
    """Frozen base + trainable LoRA (+ embedder). With the release: continue its LoRA (same rank) or merge it."""
    model, release_lora = load_base(model_cfg, device)
    return make_trainable(model, model_cfg, net, release_lora, gradient_checkpointing)


def make_trainable(model: DSDTransformer, model_cfg: ModelConfig, net: NetworkConfig,
                   release_lora: dict[str, LoraPair] | None = None, gradient_checkpointing: bool = False) -> DSDTransformer:  # fmt: skip
    """A loaded DSD transformer (any source: files, or random weights built on the GPU by the GPU suite) ->
    frozen base + trainable LoRA (+ embedder), exactly as training runs it."""
    model.requires_grad_(False)
    model.c_embedder.to(dtype=torch.float32)
    if release_lora is not None and not (net.init_from_release and release_lora and
                                         next(iter(release_lora.values())).rank == net.rank):  # fmt: skip
        from dsd.weights.lora import merge_lora

        logger.info("merging the release LoRA into the base weights; a fresh rank-%d LoRA trains on top", net.rank)
        merge_lora(model.transformer, release_lora, source=model_cfg.release)
        release_lora = None
    count = add_lora(model, net)
    if release_lora is not None:
        load_lora_pairs(model, release_lora, net.alpha, source=model_cfg.release)
    if model_cfg.base_dtype == "float8":
        n = quantize_fp8(model.transformer)
        logger.info("stored %d frozen linears in float8_e4m3fn", n)
    model.c_embedder.requires_grad_(net.train_c_embedder)
    if gradient_checkpointing:
        model.transformer.enable_gradient_checkpointing()
    logger.info("LoRA rank %d on %d modules; %s trainable parameters", net.rank, count,
                f"{sum(p.numel() for p in trainable_parameters(model).values()):,}")  # fmt: skip
    return model


def trainable_parameters(model: DSDTransformer) -> dict[str, nn.Parameter]:
    """Trainable parameters by stable name (the order the optimizer and checkpoints use)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def adapter_from_model(model: DSDTransformer, alpha: float):
    from dsd.weights.adapter import DSDAdapter

    c_emb = {k: v.detach().float().cpu().clone() for k, v in model.c_embedder_state_dict().items()}
    return DSDAdapter(c_embedder=c_emb, lora=lora_pairs(model, alpha))
