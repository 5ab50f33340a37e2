"""FLUX key layouts: diffusers (``transformer_blocks.N.attn.to_q``) <-> BFL/ComfyUI (``double_blocks.N.img_attn.qkv``).

Written from the two architectures' definitions. Fused BFL tensors (``qkv``, single-block
``linear1``) are concatenations of diffusers tensors along dim 0; the final norm's
modulation is stored (shift, scale) in BFL and (scale, shift) in diffusers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

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


def diffusers_to_bfl(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a diffusers ``FluxTransformer2DModel`` state dict to BFL/ComfyUI keys."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return state[key]

    for src, dst in _TOP_LEVEL.items():
        for p in ("weight", "bias"):
            if f"{src}.{p}" in state:
                out[f"{dst}.{p}"] = take(f"{src}.{p}")
    for p in ("weight", "bias"):
        if f"norm_out.linear.{p}" in state:
            out[f"final_layer.adaLN_modulation.1.{p}"] = _swap_halves(take(f"norm_out.linear.{p}"))

    doubles = sorted({int(m.group(1)) for k in state if (m := re.match(r"transformer_blocks\.(\d+)\.", k))})
    singles = sorted({int(m.group(1)) for k in state if (m := re.match(r"single_transformer_blocks\.(\d+)\.", k))})
    for i in doubles:
        s, d = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for src, dst in _DOUBLE.items():
            for p in ("weight", "bias"):
                if s + f"{src}.{p}" in state:
                    out[d + f"{dst}.{p}"] = take(s + f"{src}.{p}")
        for src, dst in _DOUBLE_NORMS.items():
            if s + src in state:
                out[d + dst] = take(s + src)
        for dst, parts in _DOUBLE_FUSED.items():
            for p in ("weight", "bias"):
                if s + f"{parts[0]}.{p}" in state:
                    out[d + f"{dst}.{p}"] = torch.cat([take(s + f"{part}.{p}") for part in parts], dim=0)
    for i in singles:
        s, d = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for src, dst in _SINGLE.items():
            for p in ("weight", "bias"):
                if s + f"{src}.{p}" in state:
                    out[d + f"{dst}.{p}"] = take(s + f"{src}.{p}")
        for src, dst in _SINGLE_NORMS.items():
            if s + src in state:
                out[d + dst] = take(s + src)
        for dst, parts in _SINGLE_FUSED.items():
            for p in ("weight", "bias"):
                if s + f"{parts[0]}.{p}" in state:
                    out[d + f"{dst}.{p}"] = torch.cat([take(s + f"{part}.{p}") for part in parts], dim=0)
    leftover = sorted(set(state) - used)
    if leftover:
        raise LayoutError(f"{len(leftover)} diffusers keys have no BFL equivalent, e.g. {leftover[:3]}")
    return out


def bfl_to_diffusers(state: Mapping[str, torch.Tensor], num_heads: int | None = None) -> dict[str, torch.Tensor]:
    """Convert BFL/ComfyUI FLUX keys (optionally prefixed ``model.diffusion_model.``) to diffusers keys."""
    state = {_strip_prefix(k): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return state[key]

    for dst, src in _TOP_LEVEL.items():
        for p in ("weight", "bias"):
            if f"{src}.{p}" in state:
                out[f"{dst}.{p}"] = take(f"{src}.{p}")
    for p in ("weight", "bias"):
        if f"final_layer.adaLN_modulation.1.{p}" in state:
            out[f"norm_out.linear.{p}"] = _swap_halves(take(f"final_layer.adaLN_modulation.1.{p}"))
    hidden = state["img_in.weight"].shape[0] if "img_in.weight" in state else None
    doubles = sorted({int(m.group(1)) for k in state if (m := re.match(r"double_blocks\.(\d+)\.", k))})
    singles = sorted({int(m.group(1)) for k in state if (m := re.match(r"single_blocks\.(\d+)\.", k))})
    for i in doubles:
        s, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for dst, src in _DOUBLE.items():
            for p in ("weight", "bias"):
                if s + f"{src}.{p}" in state:
                    out[d + f"{dst}.{p}"] = take(s + f"{src}.{p}")
        for dst, src in _DOUBLE_NORMS.items():
            if s + src in state:
                out[d + dst] = take(s + src)
        for src, parts in _DOUBLE_FUSED.items():
            for p in ("weight", "bias"):
                if s + f"{src}.{p}" in state:
                    for part, chunk in zip(parts, take(s + f"{src}.{p}").chunk(3, dim=0), strict=True):
                        out[d + f"{part}.{p}"] = chunk
    for i in singles:
        s, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for dst, src in _SINGLE.items():
            for p in ("weight", "bias"):
                if s + f"{src}.{p}" in state:
                    out[d + f"{dst}.{p}"] = take(s + f"{src}.{p}")
        for dst, src in _SINGLE_NORMS.items():
            if s + src in state:
                out[d + dst] = take(s + src)
        for p in ("weight", "bias"):
            key = s + f"linear1.{p}"
            if key in state:
                if hidden is None:
                    raise LayoutError("cannot split single-block linear1 without img_in.weight")
                t = take(key)
                q, k, v, mlp = t.split([hidden, hidden, hidden, t.shape[0] - 3 * hidden], dim=0)
                for part, chunk in zip(_SINGLE_FUSED["linear1"], (q, k, v, mlp), strict=True):
                    out[d + f"{part}.{p}"] = chunk
    leftover = sorted(set(state) - used)
    if leftover:
        raise LayoutError(f"{len(leftover)} BFL keys have no diffusers equivalent, e.g. {leftover[:3]}")
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
