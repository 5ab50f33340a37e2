"""The DSD transformer: diffusers' FLUX plus one zero-initialised condition embedder.

``img = x_embedder(noisy_tokens) + c_embedder(condition_tokens)`` is the only change to
FLUX (docs/method.md §2). The embedder is added through a forward hook on ``x_embedder``, so the
diffusers forward, PEFT LoRA, gradient checkpointing and every state-dict key of the base
model stay exactly as they are. ``widened_transformer`` expresses the same map as one
``Linear(128, hidden)`` input layer (``in_channels=128``), the form ComfyUI's channel-concat
route uses.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

C_EMBEDDER_PREFIX = "c_embedder."


class DSDModelError(ValueError):
    """The model or weights given are not a usable DSD / FLUX transformer."""


def make_c_embedder(in_features: int, hidden: int, dtype=torch.float32, device=None) -> nn.Linear:
    """``Linear(64, hidden)`` with weight and bias exactly zero: at initialisation DSD is plain FLUX."""
    layer = nn.Linear(in_features, hidden, dtype=dtype, device=device)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class DSDTransformer(nn.Module):
    """FLUX (``FluxTransformer2DModel``) + condition embedder."""

    def __init__(self, transformer: nn.Module, c_embedder: nn.Linear | None = None) -> None:
        super().__init__()
        cfg = getattr(transformer, "config", None)
        if cfg is None or not hasattr(transformer, "x_embedder") or not hasattr(cfg, "in_channels"):
            raise DSDModelError(
                f"{type(transformer).__name__} is not a diffusers FluxTransformer2DModel; DSD needs a FLUX transformer"
            )
        out_ch = cfg.out_channels or cfg.in_channels
        if cfg.in_channels != out_ch:
            raise DSDModelError(
                f"transformer has in_channels={cfg.in_channels} but out_channels={out_ch}: it already has a widened "
                "input layer; load the plain FLUX transformer and the DSD embedder separately"
            )
        self.transformer = transformer
        x_emb: nn.Linear = transformer.x_embedder
        if c_embedder is None:
            c_embedder = make_c_embedder(x_emb.in_features, x_emb.out_features, x_emb.weight.dtype, x_emb.weight.device)
        if (c_embedder.in_features, c_embedder.out_features) != (x_emb.in_features, x_emb.out_features):
            raise DSDModelError(
                f"condition embedder is Linear({c_embedder.in_features}, {c_embedder.out_features}) but the "
                f"transformer's x_embedder is Linear({x_emb.in_features}, {x_emb.out_features}): the DSD weights "
                "were made for a different FLUX size"
            )
        self.c_embedder = c_embedder
        self._condition: torch.Tensor | None = None
        self._hook = x_emb.register_forward_hook(self._add_condition)

    @property
    def config(self) -> Any:
        return self.transformer.config

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.x_embedder.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.x_embedder.weight.device

    def _add_condition(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        cond = self._condition
        if cond is None:
            return output
        if cond.shape[:2] != output.shape[:2]:
            raise DSDModelError(
                f"condition tokens {tuple(cond.shape)} do not match the noisy tokens {tuple(inputs[0].shape)}"
            )
        return output + self.c_embedder(cond.to(self.c_embedder.weight.dtype)).to(output.dtype)

    def forward(
        self,
        hidden_states: torch.Tensor,
        condition_tokens: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        img_ids: torch.Tensor,
        txt_ids: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity prediction for packed tokens. ``condition_tokens=None`` is plain FLUX."""
        self._condition = condition_tokens
        try:
            return self.transformer(
                hidden_states=hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                pooled_projections=pooled_projections,
                timestep=timestep,
                img_ids=img_ids,
                txt_ids=txt_ids,
                guidance=guidance,
                return_dict=False,
            )[0]
        finally:
            self._condition = None

    def c_embedder_state_dict(self) -> dict[str, torch.Tensor]:
        return {C_EMBEDDER_PREFIX + k: v.detach() for k, v in self.c_embedder.state_dict().items()}

    def load_c_embedder(self, state: dict[str, torch.Tensor]) -> None:
        weight = state.get(C_EMBEDDER_PREFIX + "weight")
        bias = state.get(C_EMBEDDER_PREFIX + "bias")
        if weight is None:
            raise DSDModelError("weights have no c_embedder.weight: they are not DSD weights")
        expected = tuple(self.c_embedder.weight.shape)
        if tuple(weight.shape) != expected:
            raise DSDModelError(
                f"c_embedder.weight is {tuple(weight.shape)} but this FLUX needs {expected}: "
                "the DSD weights were made for a different FLUX size"
            )
        with torch.no_grad():
            self.c_embedder.weight.copy_(weight.to(self.c_embedder.weight.dtype))
            if bias is not None:
                self.c_embedder.bias.copy_(bias.to(self.c_embedder.bias.dtype))
            else:
                self.c_embedder.bias.zero_()


def widened_transformer(model: DSDTransformer) -> nn.Module:
    """The same model as one FLUX with ``in_channels = 2 x 64``: input is ``cat([noisy, condition], -1)``.

    ``x_embedder.weight = [W_x | W_c]`` and ``bias = b_x + b_c``, so
    ``x_embedder([n, c]) = W_x n + b_x + W_c c + b_c`` -- exactly the two-layer form.
    """
    base = model.transformer
    cfg = dict(base.config)
    in_ch = cfg["in_channels"]
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg["in_channels"] = in_ch * 2
    cfg["out_channels"] = in_ch
    wide = type(base).from_config(cfg).to(dtype=model.dtype, device=model.device)
    state = {k: v for k, v in base.state_dict().items() if not k.startswith("x_embedder.")}
    missing, unexpected = wide.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"x_embedder.weight", "x_embedder.bias"}:
        raise DSDModelError(f"unexpected layout while widening: missing={missing} unexpected={unexpected}")
    with torch.no_grad():
        wide.x_embedder.weight.copy_(torch.cat([base.x_embedder.weight, model.c_embedder.weight], dim=1))
        wide.x_embedder.bias.copy_(base.x_embedder.bias + model.c_embedder.bias)
    return wide


def clone_plain_flux(model: DSDTransformer) -> nn.Module:
    """A deep copy of the underlying FLUX without the embedder hook (tests, diagnostics)."""
    base = model.transformer
    plain = type(base).from_config(base.config).to(dtype=model.dtype, device=model.device)
    plain.load_state_dict(base.state_dict())
    return plain
