"""Clear errors for wrong inputs, and the host keeps serving after one (executor runs the next prompt)."""

from __future__ import annotations

import pytest
import torch
from dsd_graph import HEIGHT, WIDTH, reference_images


def _loader_error(host, model, name):
    with pytest.raises(ValueError) as info:
        host.call("DSDAdapterLoader", model=model, adapter=name, strength=1.0)
    return info


def test_plain_lora_is_refused(comfy_host, tiny_flux, models_dir):
    info = _loader_error(comfy_host, tiny_flux(), "plain_lora.safetensors")
    assert type(info.value).__name__ == "DSDAdapterError"
    assert "not a DSD adapter" in str(info.value) and "plain LoRA" in str(info.value)


def test_random_and_corrupt_files_are_refused(comfy_host, tiny_flux, models_dir):
    info = _loader_error(comfy_host, tiny_flux(), "random.safetensors")
    assert "not a DSD adapter" in str(info.value) and "random.safetensors" in str(info.value)
    info = _loader_error(comfy_host, tiny_flux(), "corrupt.safetensors")
    assert "corrupt" in str(info.value) and "DSD Adapter Loader" in str(info.value)


def test_non_flux_model_is_refused(comfy_host, models_dir, not_flux_model):
    info = _loader_error(comfy_host, not_flux_model(), "tiny_adapter.safetensors")
    assert type(info.value).__name__ == "DSDModelMismatchError"
    assert "DSD needs a FLUX.1 model" in str(info.value) and "SD3" in str(info.value)


def test_wrong_size_adapter_is_refused(comfy_host, tiny_flux, tiny_weights, models_dir):
    from dsd.weights.adapter import DSDAdapter, save_adapter

    wide = DSDAdapter(c_embedder={"c_embedder.weight": torch.zeros(64, 64), "c_embedder.bias": torch.zeros(64)},
                      lora=tiny_weights.lora)  # fmt: skip
    save_adapter(wide, models_dir.root / "dsd" / "wide_adapter.safetensors")
    info = _loader_error(comfy_host, tiny_flux(), "wide_adapter.safetensors")
    assert "different FLUX size" in str(info.value)


def test_tiny_reference_is_refused(comfy_host, tiny_vae, text_cond):
    pos, _ = text_cond(1)
    with pytest.raises(ValueError, match="at least 32 px"):
        comfy_host.call("DSDReferenceConditioning", positive=pos, negative=pos, vae=tiny_vae.comfy,
                        image=torch.rand(1, 16, 16, 3), width=WIDTH, height=HEIGHT, fit="crop", batch_size=1)  # fmt: skip


def test_reference_batch_mismatch_is_refused(comfy_host, tiny_vae, text_cond):
    pos, _ = text_cond(1)
    with pytest.raises(ValueError, match="2 reference images but batch_size=3"):
        comfy_host.call("DSDReferenceConditioning", positive=pos, negative=pos, vae=tiny_vae.comfy,
                        image=reference_images(2), width=WIDTH, height=HEIGHT, fit="crop", batch_size=3)  # fmt: skip


def _graph(kind="flux", refs=1, latent_batch=None, adapter="tiny_adapter.safetensors"):
    """API-format prompt: tiny FLUX -> DSD -> stock KSampler (cfg 1 = plain DSD) -> capture the latent."""
    g = {
        "1": {"class_type": "DSDTest_TinyFlux", "inputs": {"kind": kind}},
        "2": {"class_type": "DSDAdapterLoader", "inputs": {"model": ["1", 0], "adapter": adapter, "strength": 1.0}},
        "3": {"class_type": "DSDTest_TextCond", "inputs": {"batch": 1, "seed": 0}},
        "4": {"class_type": "DSDTest_TinyVAE", "inputs": {}},
        "5": {"class_type": "DSDTest_Image", "inputs": {"batch": refs, "height": 72, "width": 80, "seed": 0}},
        "6": {"class_type": "DSDReferenceConditioning", "inputs": {
            "positive": ["3", 0], "negative": ["3", 0], "vae": ["4", 0], "image": ["5", 0],
            "width": WIDTH, "height": HEIGHT, "fit": "crop", "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["6", 0], "negative": ["6", 1], "latent_image": ["6", 2], "seed": 3,
            "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "8": {"class_type": "DSDTest_Capture", "inputs": {"label": "latent", "value": ["7", 0]}},
    }  # fmt: skip
    if latent_batch is not None:
        g["9"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": latent_batch}}
        g["7"]["inputs"]["latent_image"] = ["9", 0]
    return g


@pytest.mark.slow
def test_executor_reports_errors_and_keeps_serving(comfy_host, run_prompt, test_nodes, models_dir):
    bad = run_prompt(_graph(kind="not_flux"))
    assert not bad.ok and bad.exec_error["node_type"] == "DSDAdapterLoader"
    assert "DSD needs a FLUX.1 model" in bad.exec_error["exception_message"]

    bad = run_prompt(_graph(adapter="plain_lora.safetensors"))
    assert not bad.ok and "not a DSD adapter" in bad.exec_error["exception_message"]

    bad = run_prompt(_graph(refs=2, latent_batch=3))  # 2 canvases, latent batch 3: caught when sampling
    assert not bad.ok and bad.exec_error["node_type"] == "KSampler"
    assert "2 reference canvases but the latent batch is 3" in bad.exec_error["exception_message"]

    invalid = run_prompt({**_graph(), "2": {"class_type": "DSDAdapterLoader", "inputs": {
        "model": ["1", 0], "adapter": "no_such_file.safetensors", "strength": 1.0}}})  # fmt: skip
    assert not invalid.ok and invalid.error is not None  # validation refuses a file not in the list

    good = run_prompt(_graph(refs=2, latent_batch=2))
    assert good.ok, good.exec_error
    latent = good.captured["latent"]["samples"]
    assert latent.shape == (2, 16, HEIGHT // 8, WIDTH // 8) and torch.isfinite(latent).all()
