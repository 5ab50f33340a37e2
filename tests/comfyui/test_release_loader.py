"""DSD Adapter Loader reads the authors' release whatever its config's class name, and refuses other models."""

from __future__ import annotations

import importlib
import json
import shutil

import pytest
import torch
from dsd_graph import comfy_dsd_sample, reference_images


def _release_copy(models_dir, name: str, **config) -> str:
    dst = models_dir.root / "dsd" / name
    if not dst.exists():
        shutil.copytree(models_dir.release, dst)
        cfg_path = dst / "transformer" / "config.json"
        cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), **config}))
    return f"{name}/pytorch_lora_weights.safetensors"


def test_loader_accepts_the_authors_class_name(comfy_host, tiny_flux, tiny_vae, text_cond, models_dir):
    authors = _release_copy(models_dir, "authors_release", _class_name="FluxTransformer2DConditionalModel")
    pos, _ = text_cond(1, seed=0)
    neg, _ = text_cond(1, seed=1)
    image = reference_images(1)
    with torch.inference_mode():
        a, _, _ = comfy_dsd_sample(comfy_host, tiny_flux(), tiny_vae.comfy, pos, neg, image, authors, steps=2)
        r, _, _ = comfy_dsd_sample(comfy_host, tiny_flux(), tiny_vae.comfy, pos, neg, image,
                                   "tiny_release/pytorch_lora_weights.safetensors", steps=2)  # fmt: skip
    assert torch.equal(a, r)


def test_loader_refuses_another_architecture_naming_it(comfy_host, tiny_flux, models_dir):
    errors = importlib.import_module(f"{comfy_host.pack.__name__}.nodes.errors")  # our pack, as ComfyUI loaded it
    sd3 = _release_copy(models_dir, "sd3_release", _class_name="SD3Transformer2DModel", in_channels=16, patch_size=2)
    with pytest.raises(errors.DSDAdapterError, match=r"SD3Transformer2DModel, not a FLUX\.1 transformer .*in_channels=16"):
        comfy_host.call("DSDAdapterLoader", model=tiny_flux(), adapter=sd3, strength=1.0)
