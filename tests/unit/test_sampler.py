"""The sampler: branch counts, the CFG formula, e_00's zero tokens, parity with diffusers' FluxPipeline."""

from __future__ import annotations

import pytest
import torch

from dsd.sampler import GuidanceConfig, SamplerStats, TextConditioning, combine_cfg, make_noise, sample_tokens
from dsd.tiny import make_tiny_dsd
from dsd.tokens import flux_sigmas, image_ids, pack, text_ids


def random_text(batch: int = 1, length: int = 7, dim: int = 32, seed: int = 0) -> TextConditioning:
    gen = torch.Generator().manual_seed(seed)
    return TextConditioning(torch.randn(batch, length, dim, generator=gen), torch.randn(batch, dim, generator=gen))


H, W = 4, 8  # latent size: 8 tokens


def _setup(b=1, seed=0):
    model = make_tiny_dsd(seed)
    gen = torch.Generator().manual_seed(seed + 100)
    noise = torch.randn(b, (H // 2) * (W // 2), 64, generator=gen)
    cond = torch.randn(b, (H // 2) * (W // 2), 64, generator=gen)
    return model, noise, cond, random_text(b, 6, seed=seed), random_text(b, 6, seed=seed + 1)


class _RowCounter:
    """Counts transformer calls and rows (predictions x batch) through a forward pre-hook."""

    def __init__(self, module):
        self.rows: list[int] = []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.rows.append(kwargs["hidden_states"].shape[0])


@torch.no_grad()
def test_no_cfg_one_pass_per_step():
    model, noise, cond, text, neg = _setup(b=2)
    stats = SamplerStats()
    counter = _RowCounter(model.transformer)
    sample_tokens(model, noise, cond, text, image_ids(H, W), text_ids(6), steps=5,
                  guidance=GuidanceConfig(image_guidance=1.0, text_guidance=1.0), negative_text=neg, stats=stats)  # fmt: skip
    assert stats.model_calls == 5 and stats.predictions == 5
    assert stats.predictions_per_step == [1] * 5
    assert counter.rows == [2] * 5


@pytest.mark.parametrize("batch_branches", [True, False])
@torch.no_grad()
def test_true_cfg_three_predictions_from_third_step(batch_branches):
    model, noise, cond, text, neg = _setup(b=2)
    stats = SamplerStats()
    counter = _RowCounter(model.transformer)
    sample_tokens(model, noise, cond, text, image_ids(H, W), text_ids(6), steps=6,
                  guidance=GuidanceConfig(image_guidance=2.0, text_guidance=1.5), negative_text=neg,
                  batch_branches=batch_branches, stats=stats)  # fmt: skip
    assert stats.predictions_per_step == [1, 1, 3, 3, 3, 3]
    assert sum(counter.rows) == 2 * (2 + 3 * 4)
    if batch_branches:
        assert counter.rows == [2, 2, 6, 6, 6, 6]
    else:
        assert counter.rows == [2, 2] + [2] * 12


@torch.no_grad()
def test_e00_gets_exactly_zero_condition_tokens():
    model, noise, cond, text, neg = _setup(b=1)
    seen: list[torch.Tensor] = []
    model.c_embedder.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    sample_tokens(model, noise, cond, text, image_ids(H, W), text_ids(6), steps=3,
                  guidance=GuidanceConfig(image_guidance=2.0), negative_text=neg)  # fmt: skip
    assert len(seen) == 3
    assert torch.equal(seen[0], cond) and torch.equal(seen[1], cond)
    e_full, e_t0, e_00 = seen[2].chunk(3)
    assert torch.equal(e_full, cond) and torch.equal(e_t0, cond)
    assert torch.equal(e_00, torch.zeros_like(cond))


@torch.no_grad()
def test_cfg_matches_explicit_unbatched_computation():
    model, noise, cond, text, neg = _setup(b=2, seed=4)
    s_i, s_t, steps = 2.5, 1.7, 5
    g = GuidanceConfig(image_guidance=s_i, text_guidance=s_t)
    common = dict(img_ids=image_ids(H, W), txt_ids=text_ids(6), steps=steps, guidance=g, negative_text=neg)
    batched = sample_tokens(model, noise, cond, text, batch_branches=True, **common)
    unbatched = sample_tokens(model, noise, cond, text, batch_branches=False, **common)
    torch.testing.assert_close(batched, unbatched, rtol=0, atol=1e-5)

    def pred(x, c, t, sigma):
        b = x.shape[0]
        return model(x, c, t.prompt_embeds, t.pooled, sigma.expand(b), image_ids(H, W), text_ids(6), torch.full((b,), 3.5))

    sig = flux_sigmas(steps, noise.shape[1])
    x = noise.clone()
    for i in range(steps):
        if i < 2:
            v = pred(x, cond, text, sig[i])
        else:
            e_full = pred(x, cond, text, sig[i])
            e_t0 = pred(x, cond, neg, sig[i])
            e_00 = pred(x, torch.zeros_like(cond), neg, sig[i])
            v = e_00 + s_i * (e_t0 - e_00) + s_t * (e_full - e_t0)
        x = x + (sig[i + 1] - sig[i]) * v
    torch.testing.assert_close(batched, x, rtol=0, atol=1e-5)
    assert (batched - sample_tokens(model, noise, cond, text, **{**common, "guidance": GuidanceConfig()})).abs().max() > 1e-4


def test_combine_cfg_formula():
    a, b, c = torch.tensor(3.0), torch.tensor(2.0), torch.tensor(1.0)
    assert combine_cfg(a, b, c, 1.0, 1.0) == a  # s_i = s_t = 1 is e_full
    assert combine_cfg(a, b, c, 2.0, 3.0) == 1 + 2 * (2 - 1) + 3 * (3 - 2)


def test_true_cfg_needs_negative():
    model, noise, cond, text, _ = _setup()
    with pytest.raises(ValueError, match="negative"):
        sample_tokens(model, noise, cond, text, image_ids(H, W), text_ids(6), steps=2, guidance=GuidanceConfig(image_guidance=2.0))


def test_make_noise_is_comfyui_prepare_noise():
    gen = torch.Generator("cpu").manual_seed(42)
    ref = torch.randn((2, 16, 4, 8), generator=gen, dtype=torch.float32)
    assert torch.equal(make_noise(2, 4, 8, 42), ref)


@pytest.mark.slow
@torch.no_grad()
def test_plain_flux_parity_with_diffusers_pipeline(tiny_files):
    """Zero embedder: DSD's sampler must reproduce diffusers' FluxPipeline on the same FLUX."""
    from diffusers import FluxPipeline

    from dsd.model import DSDTransformer

    pipe = FluxPipeline.from_pretrained(tiny_files.flux_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    model = DSDTransformer(pipe.transformer)  # zero c_embedder
    h_px, w_px = 64, 128
    h, w = h_px // 8, w_px // 8
    noise = pack(make_noise(1, h, w, seed=7))
    cond = torch.randn_like(noise)  # ignored by a zero embedder
    text = random_text(1, 9, seed=3)
    steps = 4
    out = pipe(prompt_embeds=text.prompt_embeds, pooled_prompt_embeds=text.pooled, latents=noise.clone(), height=h_px,
               width=w_px, num_inference_steps=steps, guidance_scale=3.5, output_type="latent").images  # fmt: skip
    ours = sample_tokens(model, noise, cond, text, image_ids(h, w), text_ids(9), steps=steps, guidance=GuidanceConfig(guidance=3.5))
    assert out.shape == ours.shape
    torch.testing.assert_close(ours, out, rtol=0, atol=1e-5)
    assert (ours - noise).abs().max() > 1e-2


def test_negative_prompt_of_another_length_runs_unbatched():
    """Branches with different text lengths fall back to separate calls with their own text ids."""
    import torch

    from dsd.sampler import GuidanceConfig, SamplerStats, TextConditioning, sample_tokens
    from dsd.tiny import make_tiny_dsd
    from dsd.tokens import image_ids, text_ids

    model = make_tiny_dsd(0)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 16, 64, generator=gen)
    cond = torch.randn(1, 16, 64, generator=gen)
    text = TextConditioning(torch.randn(1, 6, 32, generator=gen), torch.randn(1, 32, generator=gen))
    neg = TextConditioning(torch.randn(1, 9, 32, generator=gen), torch.randn(1, 32, generator=gen))
    stats = SamplerStats()
    out = sample_tokens(model, noise, cond, text, image_ids(8, 8), text_ids(6), steps=3,
                        guidance=GuidanceConfig(image_guidance=2.0, text_guidance=1.5), negative_text=neg, stats=stats)  # fmt: skip
    assert torch.isfinite(out).all()
    assert stats.predictions_per_step == [1, 1, 3]
