"""DSD Adapter Loader: ComfyUI's own LoRA machinery, embedder as a patch, release layout, fp8 weights, GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dsd_graph import comfy_dsd_sample, reference_images


def _patch_count(model) -> int:
    return sum(len(v) for v in model.patches.values())


def test_adapter_maps_every_lora_module(comfy_host, tiny_flux, tiny_weights, models_dir):
    base = tiny_flux()
    (m,) = comfy_host.call("DSDAdapterLoader", model=base, adapter="tiny_adapter.safetensors", strength=1.0)
    n_modules = len(tiny_weights.lora)
    assert n_modules == 17  # 12 double-block + 5 single-block linears (q, k, v, proj_mlp, proj_out)
    assert _patch_count(m) == n_modules
    assert _patch_count(base) == 0  # the input MODEL is not modified (clone)
    post = m.model_options["transformer_options"]["patches"]["post_input"]
    assert len(post) == 1 and type(post[0]).__name__ == "DSDPostInput"
    assert "dsd" in str(m.wrappers)


def test_release_folder_equals_adapter(comfy_host, tiny_flux, tiny_vae, text_cond, models_dir):
    pos, _ = text_cond(1, seed=0)
    neg, _ = text_cond(1, seed=1)
    image = reference_images(1)
    with torch.inference_mode():
        a, _, _ = comfy_dsd_sample(comfy_host, tiny_flux(), tiny_vae.comfy, pos, neg, image, "tiny_adapter.safetensors", steps=2)
        r, _, _ = comfy_dsd_sample(
            comfy_host, tiny_flux(), tiny_vae.comfy, pos, neg, image, "tiny_release/pytorch_lora_weights.safetensors", steps=2
        )
        r2, _, _ = comfy_dsd_sample(
            comfy_host, tiny_flux(), tiny_vae.comfy, pos, neg, image,
            "tiny_release/transformer/diffusion_pytorch_model.safetensors", steps=2,
        )  # fmt: skip
    assert torch.equal(a, r) and torch.equal(a, r2)


@pytest.mark.slow
def test_strength_changes_output_and_base_weights_untouched(comfy_host, tiny_flux, tiny_vae, text_cond, models_dir):
    pos, _ = text_cond(1, seed=0)
    neg, _ = text_cond(1, seed=1)
    image = reference_images(1)
    import comfy.model_management

    base = tiny_flux()
    comfy.model_management.unload_all_models()  # earlier tests may have left it loaded (= patched in place)
    before = {k: v.clone() for k, v in base.model.diffusion_model.state_dict().items()}
    with torch.inference_mode():
        full, _, _ = comfy_dsd_sample(comfy_host, base, tiny_vae.comfy, pos, neg, image, "tiny_adapter.safetensors", steps=2)
        off, _, _ = comfy_dsd_sample(
            comfy_host, base, tiny_vae.comfy, pos, neg, image, "tiny_adapter.safetensors", steps=2, strength=0.0
        )
    assert (full - off).abs().max() > 1e-2
    # ComfyUI patches LoRA weights in place while loaded and restores them on unload; the embedder never touches them
    comfy.model_management.unload_all_models()
    after = base.model.diffusion_model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"base weights were modified: {changed[:5]}"


@pytest.mark.slow
def test_fp8_weights_run_close_to_fp32(comfy_host, tiny_flux, tiny_vae, text_cond, models_dir):
    """fp8 e4m3 weight storage + fp32 compute (what UNETLoader weight_dtype=fp8_e4m3fn does on CPU)."""
    pos, _ = text_cond(1, seed=0)
    neg, _ = text_cond(1, seed=1)
    image = reference_images(1)
    with torch.inference_mode():
        ref, _, _ = comfy_dsd_sample(comfy_host, tiny_flux(), tiny_vae.comfy, pos, neg, image, "tiny_adapter.safetensors")
        fp8_model = tiny_flux(torch.float8_e4m3fn, torch.float32)
        assert fp8_model.model.diffusion_model.img_in.weight.dtype == torch.float8_e4m3fn
        out, _, _ = comfy_dsd_sample(comfy_host, fp8_model, tiny_vae.comfy, pos, neg, image, "tiny_adapter.safetensors")
    assert torch.isfinite(out).all()
    rel = ((out - ref).norm() / ref.norm()).item()
    print(f"fp8 vs fp32 relative error {rel:.4f}")
    assert rel < 0.1


def test_dsd_folder_is_registered(comfy_host, models_dir):
    fp = comfy_host.folder_paths
    assert "dsd" in fp.folder_names_and_paths
    names = fp.get_filename_list("dsd")
    assert "tiny_adapter.safetensors" in names
    assert Path(fp.get_full_path_or_raise("dsd", "tiny_adapter.safetensors")) == models_dir.adapter
