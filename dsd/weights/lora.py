"""LoRA weights for FLUX in the diffusers/PEFT layout: parse, validate, merge, serialise.

The canonical in-memory form is ``{module_path: LoraPair}`` with diffusers module paths
(``transformer_blocks.0.attn.to_q``). On disk the adapter uses the ``transformer.``-prefixed
diffusers keys of the authors' ``pytorch_lora_weights.safetensors``, which ComfyUI's own LoRA
loader maps onto FLUX (bare PEFT keys map to nothing in ComfyUI, silently).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import WeightsError
from .safetensors_io import check_finite

_LORA_RE = re.compile(r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.default)?\.weight$")
_ALPHA_RE = re.compile(r"^(?P<module>.+?)\.alpha$")
_KNOWN_PREFIXES = ("transformer.", "base_model.model.", "diffusion_model.")
_FLUX_MODULE_RE = re.compile(
    r"^(transformer_blocks\.\d+\.|single_transformer_blocks\.\d+\.|x_embedder$|context_embedder$|proj_out$|norm_out\.|time_text_embed\.)"
)


@dataclass
class LoraPair:
    down: torch.Tensor  # lora_A: [rank, in]
    up: torch.Tensor  # lora_B: [out, rank]
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else float(self.alpha) / self.rank

    def delta(self, dtype=torch.float32) -> torch.Tensor:
        return (self.up.to(dtype) @ self.down.to(dtype)) * self.scale


def _strip(key: str) -> str:
    for p in _KNOWN_PREFIXES:
        if key.startswith(p):
            return key[len(p) :]
    return key


def parse_lora(state: Mapping[str, torch.Tensor], source: str | Path = "<memory>") -> dict[str, LoraPair]:
    """Parse diffusers/PEFT FLUX LoRA tensors (``transformer.``-prefixed, bare or ``base_model.model.``)."""
    downs: dict[str, torch.Tensor] = {}
    ups: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    foreign: list[str] = []
    for key, tensor in state.items():
        m = _LORA_RE.match(key)
        if m:
            module = _strip(m.group("module"))
            (downs if m.group("kind") in ("lora_A", "lora_down") else ups)[module] = tensor
            continue
        m = _ALPHA_RE.match(key)
        if m:
            alphas[_strip(m.group("module"))] = float(tensor.item())
            continue
        foreign.append(key)
    if not downs:
        raise WeightsError(f"{source}: no LoRA tensors (lora_A/lora_B) found; this is not a LoRA file")
    not_flux = sorted(m for m in downs if not _FLUX_MODULE_RE.match(m))
    if not_flux:
        raise WeightsError(
            f"{source}: LoRA targets modules that FLUX does not have (e.g. {not_flux[0]!r}); it was made for "
            "another model (SD1.5/SDXL/SD3?). DSD needs a FLUX LoRA in diffusers/PEFT layout."
        )
    unpaired = sorted(set(downs) ^ set(ups))
    if unpaired:
        raise WeightsError(f"{source}: LoRA has unpaired lora_A/lora_B tensors for {unpaired[:3]}; the file is incomplete")
    pairs: dict[str, LoraPair] = {}
    for module, down in downs.items():
        up = ups[module]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise WeightsError(f"{source}: LoRA shapes for {module} do not fit ({tuple(down.shape)} / {tuple(up.shape)})")
        pairs[module] = LoraPair(down=down, up=up, alpha=alphas.get(module))
        check_finite({f"{module}.lora_A": down, f"{module}.lora_B": up}, source)
        if not math.isfinite(alphas.get(module, 1.0)):
            raise WeightsError(f"{source}: LoRA alpha of {module} is {alphas[module]}; the file is damaged")
    return pairs


def lora_rank(pairs: Mapping[str, LoraPair]) -> int:
    return max(p.rank for p in pairs.values())


def lora_to_state_dict(pairs: Mapping[str, LoraPair], prefix: str = "transformer.") -> dict[str, torch.Tensor]:
    """Serialise in the ComfyUI-mapped diffusers layout (``transformer.<path>.lora_A.weight``, ``.alpha``)."""
    out: dict[str, torch.Tensor] = {}
    for module, pair in sorted(pairs.items()):
        out[f"{prefix}{module}.lora_A.weight"] = pair.down.contiguous()
        out[f"{prefix}{module}.lora_B.weight"] = pair.up.contiguous()
        if pair.alpha is not None:
            out[f"{prefix}{module}.alpha"] = torch.tensor(float(pair.alpha))
    return out


def check_lora_fits(pairs: Mapping[str, LoraPair], model: nn.Module, source: str | Path = "<memory>") -> None:
    modules = dict(model.named_modules())
    for module, pair in pairs.items():
        target = modules.get(module)
        if target is None or not isinstance(target, nn.Linear):
            raise WeightsError(f"{source}: LoRA targets {module!r}, which this FLUX transformer does not have")
        if (pair.down.shape[1], pair.up.shape[0]) != (target.in_features, target.out_features):
            raise WeightsError(
                f"{source}: LoRA for {module} is {pair.down.shape[1]}->{pair.up.shape[0]} but the layer is "
                f"{target.in_features}->{target.out_features}: the LoRA was made for a different FLUX size"
            )


@torch.no_grad()
def merge_lora(model: nn.Module, pairs: Mapping[str, LoraPair], strength: float = 1.0, source: str | Path = "<memory>") -> None:
    """``W += strength * alpha/rank * B @ A`` in place, computed in fp32."""
    check_lora_fits(pairs, model, source)
    modules = dict(model.named_modules())
    for module, pair in pairs.items():
        layer: nn.Linear = modules[module]
        w = layer.weight
        layer.weight.copy_((w.float() + strength * pair.delta(torch.float32).to(w.device)).to(w.dtype))
