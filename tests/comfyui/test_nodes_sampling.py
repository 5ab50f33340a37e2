"""DSD Reference Conditioning, DSD Guider (branches per step), DSD Split Canvas, DSD Control Hint To Frame."""

from __future__ import annotations

import pytest
import torch
from dsd_graph import HEIGHT, WIDTH, comfy_dsd_sample, reference_images

from dsd.canvas import CanvasLayout, compose_canvas
from dsd.tokens import latent_to_model, pack


@pytest.mark.slow
def test_reference_conditioning_outputs(comfy_host, tiny_vae, text_cond):
    pos, _ = text_cond(1, seed=0)
    neg, _ = text_cond(1, seed=1)
    image = reference_images(2)
    p, n, latent, layout = comfy_host.call(
        "DSDReferenceConditioning", positive=pos, negative=neg, vae=tiny_vae.comfy, image=image,
        width=WIDTH, height=HEIGHT, fit="crop", batch_size=1,
    )  # fmt: skip
    assert layout == CanvasLayout(HEIGHT, WIDTH, "crop").to_dict()
    assert torch.count_nonzero(latent["samples"]) == 0 and latent["samples"].shape == (2, 16, HEIGHT // 8, WIDTH // 8)
    tp, tn = p[0][1]["model_conds"]["dsd_condition"].cond, n[0][1]["model_conds"]["dsd_condition"].cond
    assert torch.equal(tp, tn) and tp.shape == (2, (HEIGHT // 16) * (WIDTH // 16), 64)
    # the shared canvas code + ComfyUI's VAE + FLUX shift/scale + packing
    pixels = ((compose_canvas(image, CanvasLayout(HEIGHT, WIDTH, "crop")) + 1) / 2).permute(0, 2, 3, 1)
    with torch.inference_mode():
        expect = pack(latent_to_model(tiny_vae.comfy.encode(pixels).float()))
    assert torch.equal(tp, expect)
    assert "dsd_condition" not in pos[0][1].get("model_conds", {})  # inputs are not mutated
    # a single reference broadcasts over a latent batch
    _, _, latent4, _ = comfy_host.call(
        "DSDReferenceConditioning", positive=pos, negative=neg, vae=tiny_vae.comfy, image=image[:1],
        width=WIDTH, height=HEIGHT, fit="pad", batch_size=4,
    )  # fmt: skip
    assert latent4["samples"].shape[0] == 4


def _count_calls(model, calls):
    import comfy.patcher_extension

    def counter(executor, x, *args, **kwargs):
        calls.append((x.shape[0], torch.count_nonzero(kwargs["dsd_condition"].reshape(x.shape[0], -1), dim=1).tolist()))
        return executor(x, *args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_counter", counter)
    return m


@pytest.mark.slow
def test_guider_batches_branches_in_one_call(comfy_host, tiny_flux, tiny_vae, text_cond, models_dir):
    pos, _ = text_cond(1, seed=0)
    neg, _ = text_cond(1, seed=1)
    image = reference_images(1)
    for s_i, expect in ((1.0, [1, 1, 1, 1]), (2.0, [1, 1, 3, 3])):
        calls: list = []
        with torch.inference_mode():
            comfy_dsd_sample(comfy_host, _count_calls(tiny_flux(), calls), tiny_vae.comfy, pos, neg, image,
                             "tiny_adapter.safetensors", steps=4, image_guidance=s_i, text_guidance=1.5)  # fmt: skip
        assert [b for b, _ in calls] == expect, f"s_i={s_i}: one model call per step, batch = branches"
        if s_i > 1:  # e_full and e_t0 carry the reference, e_00 exactly zero tokens
            nonzero = sorted(calls[-1][1])
            assert nonzero[0] == 0 and nonzero[1] > 0 and nonzero[2] > 0


def test_split_canvas_and_hint_frame(comfy_host):
    layout = CanvasLayout(HEIGHT, WIDTH, "crop").to_dict()
    canvas = torch.rand(2, HEIGHT, WIDTH, 3)
    result, recon, recons = comfy_host.call("DSDSplitCanvas", canvas=canvas, layout=layout)
    assert torch.equal(result, canvas[:, :, WIDTH // 2 :]) and torch.equal(recon, canvas[:, :, : WIDTH // 2])
    assert torch.equal(recons, recon)  # one reference: every reconstruction is frame one
    hint = torch.rand(1, 96, 96, 3)
    (out,) = comfy_host.call("DSDControlHintToFrame", hint=hint, layout=layout)
    assert out.shape == (1, HEIGHT, WIDTH, 3)
    assert torch.count_nonzero(out[:, :, : WIDTH // 2]) == 0 and out[:, :, WIDTH // 2 :].mean() > 0.2
    (out2,) = comfy_host.call("DSDControlHintToFrame", hint=hint, layout=layout, reference_hint=torch.ones(2, 64, 64, 3))
    assert out2.shape == (2, HEIGHT, WIDTH, 3) and torch.allclose(out2[:, :, : WIDTH // 2], torch.ones(()))
