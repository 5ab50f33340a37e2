"""The DSD transformer: zero embedder is plain FLUX; forward equals two independent formulations; LoRA merge."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dsd.model import DSDModelError, DSDTransformer, clone_plain_flux, make_c_embedder, widened_transformer
from dsd.sampler import TextConditioning
from dsd.tiny import make_tiny_dsd, make_tiny_lora, make_tiny_transformer
from dsd.tokens import image_ids, text_ids
from dsd.weights.lora import merge_lora


def random_text(batch: int = 1, length: int = 7, dim: int = 32, seed: int = 0) -> TextConditioning:
    gen = torch.Generator().manual_seed(seed)
    return TextConditioning(torch.randn(batch, length, dim, generator=gen), torch.randn(batch, dim, generator=gen))



def _inputs(b=2, h=4, w=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = (h // 2) * (w // 2)
    text = random_text(b, 7, seed=seed)
    return dict(
        hidden_states=torch.randn(b, n, 64, generator=gen),
        encoder_hidden_states=text.prompt_embeds,
        pooled_projections=text.pooled,
        timestep=torch.full((b,), 0.7),
        img_ids=image_ids(h, w),
        txt_ids=text_ids(7),
        guidance=torch.full((b,), 3.5),
    ), torch.randn(b, n, 64, generator=gen)


def _plain(transformer, **kw):
    return transformer(**kw, return_dict=False)[0]


@torch.no_grad()
def test_zero_embedder_is_plain_flux_bit_for_bit():
    model = DSDTransformer(make_tiny_transformer(3))
    assert torch.equal(model.c_embedder.weight, torch.zeros_like(model.c_embedder.weight))
    plain = clone_plain_flux(model)
    kw, cond = _inputs()
    assert torch.equal(model(condition_tokens=cond, **kw), _plain(plain, **kw))
    assert torch.equal(model(condition_tokens=None, **kw), _plain(plain, **kw))
    assert torch.equal(make_c_embedder(64, 32).weight, torch.zeros(32, 64))


class _ExplicitInput(nn.Module):
    """x_embedder(noisy) + c_embedder(cond), written out with F.linear."""

    def __init__(self, x_emb: nn.Linear, c_emb: nn.Linear, cond: torch.Tensor) -> None:
        super().__init__()
        self.x_emb, self.c_emb, self.cond = x_emb, c_emb, cond

    def forward(self, x):
        return nn.functional.linear(x, self.x_emb.weight, self.x_emb.bias) + nn.functional.linear(
            self.cond, self.c_emb.weight, self.c_emb.bias
        )


@torch.no_grad()
def test_forward_equals_explicit_formulation():
    model = make_tiny_dsd(5)
    assert model.c_embedder.weight.abs().sum() > 0
    kw, cond = _inputs(seed=1)
    ours = model(condition_tokens=cond, **kw)
    plain = clone_plain_flux(model)
    plain.x_embedder = _ExplicitInput(plain.x_embedder, model.c_embedder, cond)
    ref = _plain(plain, **kw)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    # and the condition matters
    assert (ours - model(condition_tokens=torch.zeros_like(cond), **kw)).abs().max() > 1e-4


@torch.no_grad()
def test_zero_condition_tokens_still_add_the_bias():
    model = make_tiny_dsd(5)
    kw, cond = _inputs(seed=1)
    plain = clone_plain_flux(model)
    zero = torch.zeros_like(cond)
    plain.x_embedder = _ExplicitInput(plain.x_embedder, model.c_embedder, zero)
    torch.testing.assert_close(model(condition_tokens=zero, **kw), _plain(plain, **kw), rtol=0, atol=1e-5)


@torch.no_grad()
def test_widened_layer_form_agrees():
    model = make_tiny_dsd(7)
    kw, cond = _inputs(seed=2)
    wide = widened_transformer(model)
    assert wide.x_embedder.in_features == 128 and wide.config.out_channels == 64
    ours = model(condition_tokens=cond, **kw)
    kw_wide = {**kw, "hidden_states": torch.cat([kw["hidden_states"], cond], dim=-1)}
    torch.testing.assert_close(_plain(wide, **kw_wide), ours, rtol=0, atol=1e-5)


def test_mismatched_condition_rejected():
    model = make_tiny_dsd(0)
    kw, cond = _inputs()
    with pytest.raises(DSDModelError, match="do not match"):
        model(condition_tokens=cond[:, :3], **kw)


def test_load_c_embedder_checks_shape():
    model = make_tiny_dsd(0)
    with pytest.raises(DSDModelError, match="different FLUX size"):
        model.load_c_embedder({"c_embedder.weight": torch.zeros(16, 64)})
    with pytest.raises(DSDModelError, match="not DSD"):
        model.load_c_embedder({})
    sd = make_tiny_dsd(9).c_embedder_state_dict()
    model.load_c_embedder(sd)
    assert torch.equal(model.c_embedder.weight, sd["c_embedder.weight"])


@pytest.mark.parametrize("alpha", [None, 2.0])
@torch.no_grad()
def test_lora_merge_equals_peft_unmerged(alpha):
    from peft import LoraConfig, inject_adapter_in_model

    rank = 4
    base = make_tiny_transformer(11)
    pairs = make_tiny_lora(base, rank=rank, seed=11, alpha=alpha)
    merged = make_tiny_transformer(11)
    merge_lora(merged, pairs)

    peft_model = make_tiny_transformer(11)
    cfg = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, target_modules=sorted(pairs), lora_dropout=0.0)
    peft_model = inject_adapter_in_model(cfg, peft_model)
    modules = dict(peft_model.named_modules())
    for name, pair in pairs.items():
        modules[name].lora_A["default"].weight.copy_(pair.down)
        modules[name].lora_B["default"].weight.copy_(pair.up)
    kw, _ = _inputs(seed=3)
    out_merged = _plain(merged, **kw)
    out_peft = _plain(peft_model.eval(), **kw)
    torch.testing.assert_close(out_merged, out_peft, rtol=0, atol=1e-5)
    assert (out_merged - _plain(base, **kw)).abs().max() > 1e-3  # the LoRA does something
