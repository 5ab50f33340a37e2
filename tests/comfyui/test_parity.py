"""Numerical parity: our nodes on ComfyUI's FLUX == dsd.sampler on diffusers' FLUX (same weights, fp32)."""

from __future__ import annotations

import pytest
import torch
from dsd_graph import comfy_dsd_sample, reference_images, reference_sample

from dsd.sampler import make_noise

TOL = 1e-4


def test_comfy_noise_equals_make_noise(comfy_host):
    import comfy.sample

    latent = torch.zeros(2, 16, 4, 8)
    assert torch.equal(comfy.sample.prepare_noise(latent, 123), make_noise(2, 4, 8, 123))


@pytest.mark.slow
@pytest.mark.parametrize(
    "batch,s_i,s_t",
    [(1, 1.0, 1.0), (2, 1.0, 1.0), (1, 2.5, 1.5), (2, 2.5, 1.5)],
    ids=["b1-plain", "b2-plain", "b1-cfg", "b2-cfg"],
)
def test_sampler_parity(comfy_host, tiny_flux, tiny_vae, tiny_weights, text_cond, models_dir, batch, s_i, s_t, record_property):
    pos, text = text_cond(1, seed=0)
    neg, neg_text = text_cond(1, seed=1)
    image = reference_images(batch)
    with torch.inference_mode():
        ours, sigmas, _ = comfy_dsd_sample(
            comfy_host, tiny_flux(), tiny_vae.comfy, pos, neg, image, "tiny_adapter.safetensors",
            image_guidance=s_i, text_guidance=s_t,
        )  # fmt: skip
    ref = reference_sample(
        tiny_weights.reference, tiny_vae.diffusers, text, neg_text, image, sigmas.clone(), batch=batch,
        image_guidance=s_i, text_guidance=s_t,
    )  # fmt: skip
    err = (ours.float() - ref).abs().max().item()
    record_property("max_abs_err", err)
    print(f"parity batch={batch} s_i={s_i} s_t={s_t}: max abs err {err:.3e} (latent scale {ref.abs().max():.2f})")
    assert ours.shape == ref.shape == (batch, 16, 8, 16)
    assert err < TOL
