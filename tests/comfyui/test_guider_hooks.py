"""DSD Guider combines through ComfyUI's CFG hook points (comfy.samplers.cfg_function), like Guider_DualCFG.

RescaleCFG (a ``sampler_cfg_function``) and ``sampler_post_cfg_function`` patches apply; with no effective
patch the result is today's, operation for operation (the parity tests against dsd.sampler hold it).
"""

from __future__ import annotations

import pytest
import torch
from dsd_graph import comfy_dsd_sample, reference_images

S_I, S_T, STEPS = 2.5, 1.5, 4


@pytest.fixture(scope="module")
def run(comfy_host, tiny_flux, tiny_vae, text_cond, models_dir):
    pos, _ = text_cond(1, seed=0)
    neg, _ = text_cond(1, seed=1)
    image = reference_images(1)

    def sample(model=None, image_guidance=S_I):
        with torch.inference_mode():
            out, _, _ = comfy_dsd_sample(comfy_host, model if model is not None else tiny_flux(), tiny_vae.comfy, pos, neg,
                                         image, "tiny_adapter.safetensors", steps=STEPS, image_guidance=image_guidance,
                                         text_guidance=S_T)  # fmt: skip
        return out.float()

    return sample


@pytest.fixture(scope="module")
def plain(run):
    return run()


@pytest.mark.slow
def test_rescale_cfg_applies_and_multiplier_zero_is_todays_output(comfy_host, tiny_flux, run, plain):
    (rescaled,) = comfy_host.call("RescaleCFG", model=tiny_flux(), multiplier=0.7)
    assert "sampler_cfg_function" in rescaled.model_options
    change = (run(rescaled) - plain).abs().max().item()
    print(f"RescaleCFG(0.7) vs no patch: max abs change {change:.3e}")
    assert change > 1e-3, "RescaleCFG must change the DSD Guider's result"
    (identity,) = comfy_host.call("RescaleCFG", model=tiny_flux(), multiplier=0.0)
    err = (run(identity) - plain).abs().max().item()
    print(f"RescaleCFG(0) vs no patch: max abs err {err:.3e} (latent scale {plain.abs().max():.2f})")
    assert err < 1e-5  # the same combination through RescaleCFG's v-space round trip: float rounding only


@pytest.mark.slow
def test_post_cfg_hook_sees_every_step(tiny_flux, run, plain):
    seen: list[tuple[float, bool]] = []

    def post_cfg(args):
        seen.append((float(args["cond_scale"]), args["uncond"] is None))
        return args["denoised"]

    model = tiny_flux().clone()
    model.set_model_sampler_post_cfg_function(post_cfg)
    assert torch.equal(run(model), plain)  # a pass-through hook changes nothing, bit for bit
    # steps 0 and 1: one pass (no uncond, scale 1, as ComfyUI's CFGGuider at cfg 1); then image CFG at s_i
    assert seen == [(1.0, True), (1.0, True), (S_I, False), (S_I, False)]


@pytest.mark.slow
def test_one_pass_with_rescale_cfg_stays_one_pass(comfy_host, tiny_flux, run):
    (rescaled,) = comfy_host.call("RescaleCFG", model=tiny_flux(), multiplier=0.7)
    one_pass = run(rescaled, image_guidance=1.0)
    # with one prediction per step there is nothing to rescale: RescaleCFG's cond and CFG result coincide
    torch.testing.assert_close(one_pass, run(image_guidance=1.0), rtol=0, atol=1e-5)
