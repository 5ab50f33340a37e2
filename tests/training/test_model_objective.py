"""Trainable model (PEFT LoRA, fp8 base, release continuation) and the rectified-flow objective."""

from __future__ import annotations

import pytest
import torch

from training.config import ModelConfig, NetworkConfig, TrainingConfig
from training.model import build_model, lora_pairs, quantize_fp8, trainable_parameters
from training.objective import Batch, draw, flow_matching_loss, sample_timesteps


def _inputs(model, seed=0, n_txt=5):
    g = torch.Generator().manual_seed(seed)
    from dsd.tokens import image_ids, text_ids

    x = torch.randn(2, 8, 64, generator=g)
    c = torch.randn(2, 8, 64, generator=g)
    cfg = model.config
    return dict(hidden_states=x, condition_tokens=c,
                encoder_hidden_states=torch.randn(2, n_txt, cfg.joint_attention_dim, generator=g),
                pooled_projections=torch.randn(2, cfg.pooled_projection_dim, generator=g),
                timestep=torch.tensor([0.3, 0.8]), img_ids=image_ids(4, 8), txt_ids=text_ids(n_txt),
                guidance=torch.tensor([1.0, 1.0]))  # fmt: skip


def test_fp8_model_runs_and_is_close(tiny_flux):
    net = NetworkConfig(rank=4, alpha=4.0)
    ref = build_model(ModelConfig(flux=str(tiny_flux), base_dtype="float32"), net)
    fp8 = build_model(ModelConfig(flux=str(tiny_flux), base_dtype="float32"), net)
    n = quantize_fp8(fp8.transformer)
    base = fp8.transformer.transformer_blocks[0].attn.to_q.base_layer.weight
    assert n == 12 + 2 + 5 + 1 and type(base).__name__ == "Float8Tensor"  # + the AdaLN linears and base.qdata.dtype == torch.float8_e4m3fn
    assert trainable_parameters(fp8)["transformer.transformer_blocks.0.attn.to_q.lora_A.default.weight"].dtype == torch.float32
    inp = _inputs(ref)
    with torch.no_grad():
        a, b = ref(**inp), fp8(**inp)
    assert (a - b).norm() / a.norm() < 0.05
    # the LoRA still trains on top of the fp8 base
    loss = fp8(**inp).pow(2).mean()
    loss.backward()
    grads = [p.grad for p in trainable_parameters(fp8).values()]
    assert all(g is not None for g in grads)


def test_fresh_model_equals_plain_flux(tiny_flux):
    """Zero c_embedder + zero LoRA B: at step 0 the trainable model is exactly FLUX (tokens ignored)."""
    m = build_model(ModelConfig(flux=str(tiny_flux), base_dtype="float32"), NetworkConfig(rank=4, alpha=8.0))
    inp = _inputs(m)
    with torch.no_grad():
        a = m(**inp)
        inp["condition_tokens"] = None
        b = m(**inp)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    names = list(trainable_parameters(m))
    assert "c_embedder.weight" in names and any(".lora_A." in n for n in names)
    assert all(not p.requires_grad for n, p in m.named_parameters() if n not in names)


def test_continue_from_release(tmp_path):
    """The authors' release: embedder loaded, the LoRA initialised from theirs; same output as the merged release."""
    from dsd.tiny import write_release
    from dsd.weights.lora import merge_lora

    rel = write_release(tmp_path / "release", seed=3, rank=4)
    m = build_model(ModelConfig(release=str(rel.root), base_dtype="float32"), NetworkConfig(rank=4, alpha=8.0))
    pairs = lora_pairs(m, 8.0)
    assert set(pairs) == set(rel.lora)
    for k, p in pairs.items():
        torch.testing.assert_close(p.delta(), rel.lora[k].delta(), rtol=1e-5, atol=1e-6)
    merged = rel.model
    merge_lora(merged.transformer, rel.lora)
    inp = _inputs(m)
    with torch.no_grad():
        torch.testing.assert_close(m(**inp), merged(**inp), rtol=1e-4, atol=1e-5)
    # another rank: the release LoRA is merged into the base and a fresh LoRA trains on top
    m2 = build_model(ModelConfig(release=str(rel.root), base_dtype="float32"), NetworkConfig(rank=2, alpha=2.0))
    with torch.no_grad():
        torch.testing.assert_close(m2(**inp), merged(**inp), rtol=1e-4, atol=1e-5)


def test_timestep_sampling():
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(TrainingConfig(timestep_sampling="logit_normal"), 20000, 256, g)
    assert 0 < t.min() and t.max() < 1 and abs(float(t.median()) - 0.5) < 0.02
    u = sample_timesteps(TrainingConfig(timestep_sampling="uniform"), 20000, 256, g)
    assert abs(float(u.mean()) - 0.5) < 0.02
    shifted = sample_timesteps(TrainingConfig(timestep_sampling="uniform", resolution_shift=True), 20000, 2048, g)
    assert float(shifted.mean()) > 0.6  # 2048 tokens shift towards noise, like the sampling schedule


def test_objective_matches_hand_computation(tiny_flux):
    """x_t = (1-t) x0 + t noise, target velocity = noise - x0, MSE over every token of both frames."""
    from dsd.tokens import image_ids, pack, text_ids

    m = build_model(ModelConfig(flux=str(tiny_flux), base_dtype="float32"), NetworkConfig(rank=4, alpha=4.0))
    g = torch.Generator().manual_seed(1)
    batch = Batch(cond=torch.randn(2, 16, 4, 8, generator=g), target=torch.randn(2, 16, 4, 8, generator=g),
                  prompt_embeds=torch.randn(2, 5, 32, generator=g), pooled=torch.randn(2, 32, generator=g), keys=["a", "b"])  # fmt: skip
    cfg = TrainingConfig(caption_dropout=0.0, reference_dropout=0.0, guidance=1.0)
    empty = (torch.zeros(1, 5, 32), torch.zeros(1, 32))
    loss, _ = flow_matching_loss(m, batch, cfg, torch.Generator().manual_seed(7), empty)
    d = draw(cfg, (2, 8, 64), torch.Generator().manual_seed(7))
    x0, cond = pack(batch.target), pack(batch.cond)
    t = d.t.view(2, 1, 1)
    with torch.no_grad():
        pred = m(hidden_states=(1 - t) * x0 + t * d.noise, condition_tokens=cond, encoder_hidden_states=batch.prompt_embeds,
                 pooled_projections=batch.pooled, timestep=d.t, img_ids=image_ids(4, 8), txt_ids=text_ids(5),
                 guidance=torch.ones(2))  # fmt: skip
    expected = ((pred - (d.noise - x0)) ** 2).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_dropout_swaps_in_empty_prompt_and_zero_reference(tiny_flux):
    m = build_model(ModelConfig(flux=str(tiny_flux), base_dtype="float32"), NetworkConfig(rank=4, alpha=4.0))
    g = torch.Generator().manual_seed(1)
    batch = Batch(cond=torch.randn(2, 16, 4, 8, generator=g), target=torch.randn(2, 16, 4, 8, generator=g),
                  prompt_embeds=torch.randn(2, 5, 32, generator=g), pooled=torch.randn(2, 32, generator=g), keys=["a", "b"])  # fmt: skip
    empty = (torch.randn(1, 5, 32, generator=g), torch.randn(1, 32, generator=g))
    seen = {}

    def spy(module, args, kwargs, output):
        seen.update(kwargs)

    h = m.transformer.register_forward_hook(spy, with_kwargs=True)
    cfg = TrainingConfig(caption_dropout=1.0, reference_dropout=1.0)
    flow_matching_loss(m, batch, cfg, torch.Generator().manual_seed(0), empty)
    h.remove()
    torch.testing.assert_close(seen["encoder_hidden_states"], empty[0].expand(2, -1, -1))
    torch.testing.assert_close(seen["pooled_projections"], empty[1].expand(2, -1))


@pytest.mark.parametrize("scheme", ["sigma_sqrt", "cosmap"])
def test_loss_weighting_weights_each_sample_by_its_t(tiny_flux, scheme):
    """training.loss_weighting: diffusers' SD3 weighting of each sample's t times its squared velocity error."""
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    from dsd.tokens import image_ids, pack, text_ids

    m = build_model(ModelConfig(flux=str(tiny_flux), base_dtype="float32"), NetworkConfig(rank=4, alpha=4.0))
    g = torch.Generator().manual_seed(2)
    batch = Batch(cond=torch.randn(2, 16, 4, 8, generator=g), target=torch.randn(2, 16, 4, 8, generator=g),
                  prompt_embeds=torch.randn(2, 5, 32, generator=g), pooled=torch.randn(2, 32, generator=g), keys=["a", "b"])  # fmt: skip
    cfg = TrainingConfig(caption_dropout=0.0, reference_dropout=0.0, loss_weighting=scheme)
    loss, _ = flow_matching_loss(m, batch, cfg, torch.Generator().manual_seed(3), (torch.zeros(1, 5, 32), torch.zeros(1, 32)))
    d = draw(cfg, (2, 8, 64), torch.Generator().manual_seed(3))
    x0, t = pack(batch.target), d.t.view(2, 1, 1)
    with torch.no_grad():
        pred = m(hidden_states=(1 - t) * x0 + t * d.noise, condition_tokens=pack(batch.cond), encoder_hidden_states=batch.prompt_embeds,
                 pooled_projections=batch.pooled, timestep=d.t, img_ids=image_ids(4, 8), txt_ids=text_ids(5),
                 guidance=torch.ones(2))  # fmt: skip
    per_sample = ((pred - (d.noise - x0)) ** 2).mean(dim=(1, 2))
    expected = (compute_loss_weighting_for_sd3(scheme, d.t) * per_sample).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
