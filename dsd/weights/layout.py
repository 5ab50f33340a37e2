"""FLUX key layouts: diffusers (``transformer_blocks.N.attn.to_q``) <-> BFL/ComfyUI (``double_blocks.N.img_attn.qkv``).

Written from the two architectures' definitions. Fused BFL tensors (``qkv``, single-block
``linear1``) are concatenations of diffusers tensors along dim 0; the final norm's
modulation is stored (shift, scale) in BFL and (scale, shift) in diffusers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

# diffusers suffix -> BFL suffix, for one-to-one tensors
_TOP_LEVEL = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "proj_out": "final_layer.linear",
}
_DOUBLE = {
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
}
_DOUBLE_NORMS = {
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
}
_DOUBLE_FUSED = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_SINGLE = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
_SINGLE_NORMS = {"attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale"}
_SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}


class LayoutError(ValueError):
    pass


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


@dataclass(frozen=True)
class _Rule:
    """One BFL tensor and the diffusers tensor(s) it holds: several are concatenated along dim 0."""

    diffusers: tuple[str, ...]
    bfl: str
    swap_halves: bool = False  # final norm modulation: (shift, scale) in BFL, (scale, shift) in diffusers
    equal_parts: bool = False  # double-block qkv: equal thirds; single-block linear1: q, k, v of `hidden`, then mlp


def _block_indices(keys: Iterable[str], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})


def _rules(doubles: list[int], singles: list[int]) -> list[_Rule]:
    """THE mapping table, for both directions, for a model with these block indices."""
    rules: list[_Rule] = []

    def add(src: str, dst: str, one_to_one: dict[str, str], norms: dict[str, str], fused: dict, equal: bool) -> None:
        for p in ("weight", "bias"):
            rules.extend(_Rule((f"{src}{a}.{p}",), f"{dst}{b}.{p}") for a, b in one_to_one.items())
            rules.extend(
                _Rule(tuple(f"{src}{part}.{p}" for part in parts), f"{dst}{b}.{p}", equal_parts=equal)
                for b, parts in fused.items()
            )
        rules.extend(_Rule((f"{src}{a}",), f"{dst}{b}") for a, b in norms.items())

    add("", "", _TOP_LEVEL, {}, {}, False)
    rules.extend(
        _Rule((f"norm_out.linear.{p}",), f"final_layer.adaLN_modulation.1.{p}", swap_halves=True) for p in ("weight", "bias")
    )
    for i in doubles:
        add(f"transformer_blocks.{i}.", f"double_blocks.{i}.", _DOUBLE, _DOUBLE_NORMS, _DOUBLE_FUSED, True)
    for i in singles:
        add(f"single_transformer_blocks.{i}.", f"single_blocks.{i}.", _SINGLE, _SINGLE_NORMS, _SINGLE_FUSED, False)
    return rules


def _check_all_used(state: Mapping[str, torch.Tensor], used: set[str], source: str, target: str) -> None:
    leftover = sorted(set(state) - used)
    if leftover:
        raise LayoutError(f"{len(leftover)} {source} keys have no {target} equivalent, e.g. {leftover[:3]}")


def diffusers_to_bfl(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a diffusers ``FluxTransformer2DModel`` state dict to BFL/ComfyUI keys."""
    rules = _rules(
        _block_indices(state, r"transformer_blocks\.(\d+)\."), _block_indices(state, r"single_transformer_blocks\.(\d+)\.")
    )
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for rule in rules:
        if rule.diffusers[0] not in state:
            continue
        used.update(rule.diffusers)
        parts = [state[k] for k in rule.diffusers]
        tensor = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        out[rule.bfl] = _swap_halves(tensor) if rule.swap_halves else tensor
    _check_all_used(state, used, "diffusers", "BFL")
    return out


def _split_fused(rule: _Rule, tensor: torch.Tensor, hidden: int | None) -> tuple[torch.Tensor, ...]:
    if rule.equal_parts:
        return tensor.chunk(len(rule.diffusers), dim=0)
    if hidden is None:
        raise LayoutError(f"cannot split {rule.bfl} without img_in.weight (it gives the hidden size)")
    head = len(rule.diffusers) - 1
    return tensor.split([hidden] * head + [tensor.shape[0] - head * hidden], dim=0)


def bfl_to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert BFL/ComfyUI FLUX keys (optionally prefixed ``model.diffusion_model.``) to diffusers keys."""
    state = {_strip_prefix(k): v for k, v in state.items()}
    rules = _rules(_block_indices(state, r"double_blocks\.(\d+)\."), _block_indices(state, r"single_blocks\.(\d+)\."))
    hidden = state["img_in.weight"].shape[0] if "img_in.weight" in state else None
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for rule in rules:
        if rule.bfl not in state:
            continue
        used.add(rule.bfl)
        tensor = _swap_halves(state[rule.bfl]) if rule.swap_halves else state[rule.bfl]
        chunks = _split_fused(rule, tensor, hidden) if len(rule.diffusers) > 1 else (tensor,)
        out.update(zip(rule.diffusers, chunks, strict=True))
    _check_all_used(state, used, "BFL", "diffusers")
    return out


_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def _strip_prefix(key: str) -> str:
    for p in _PREFIXES:
        if key.startswith(p):
            return key[len(p) :]
    return key


def detect_layout(keys: list[str] | set[str]) -> str:
    """'diffusers', 'bfl' or 'unknown' for a FLUX transformer state dict's keys."""
    keys = {_strip_prefix(k) for k in keys}
    if "x_embedder.weight" in keys and any(k.startswith("transformer_blocks.") for k in keys):
        return "diffusers"
    if "img_in.weight" in keys and "double_blocks.0.img_attn.norm.key_norm.scale" in keys:
        return "bfl"
    return "unknown"


def lora_target_to_bfl(module_path: str, hidden: int, mlp_hidden: int) -> tuple[str, tuple[int, int] | None]:
    """Diffusers module path -> (BFL module path, optional (offset, length) slice of its output rows)."""
    m = re.match(r"transformer_blocks\.(\d+)\.(.+)$", module_path)
    if m:
        i, rest = m.groups()
        for dst, parts in _DOUBLE_FUSED.items():
            if rest in parts:
                return f"double_blocks.{i}.{dst}", (parts.index(rest) * hidden, hidden)
        if rest in _DOUBLE:
            return f"double_blocks.{i}.{_DOUBLE[rest]}", None
    m = re.match(r"single_transformer_blocks\.(\d+)\.(.+)$", module_path)
    if m:
        i, rest = m.groups()
        parts = _SINGLE_FUSED["linear1"]
        if rest in parts:
            idx = parts.index(rest)
            return f"single_blocks.{i}.linear1", (idx * hidden, hidden if idx < 3 else mlp_hidden)
        if rest in _SINGLE:
            return f"single_blocks.{i}.{_SINGLE[rest]}", None
    if module_path in _TOP_LEVEL:
        return _TOP_LEVEL[module_path], None
    if module_path == "norm_out.linear":
        return "final_layer.adaLN_modulation.1", None
    raise LayoutError(f"no BFL equivalent for diffusers module {module_path!r}")
