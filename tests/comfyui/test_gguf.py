"""DSD on a GGUF-quantised FLUX loaded by city96/ComfyUI-GGUF (UnetLoaderGGUF), in the real ComfyUI host.

The FLUX is the full-width tiny one (hidden 3072, 1 double block: ComfyUI detects FLUX from a file only
at hidden 3072 because it hard-codes 24 heads), written as a GGUF with Q8_0 weights by
``tests/support/gguf_writer.py``. The same chain runs on the bf16 safetensors of the same weights (stock UNETLoader)
as the reference. Files are cached under ``dsd.tiny.fixture_cache_dir()/comfy_models``.

ComfyUI-GGUF is found in ``COMFYUI_GGUF_PATH`` or in the host's ``custom_nodes/``; it is loaded into the
session's host here (the harness loads no other custom nodes).
"""

from __future__ import annotations

import hashlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from dsd_graph import HEIGHT, WIDTH, comfy_dsd_sample, reference_images

from tests.needs import require_gguf_pack

pytestmark = pytest.mark.comfyui

STEPS = 2
TEXT_DIM = 768  # context and pooled width of the full-width tiny FLUX
# Relative L2 error of the final latent vs the bf16 file: measured 0.0168 (0.0155 at LoRA strength 0, so it is
# the weights' Q8_0 rounding, ~0.5% per weight, amplified by the random tiny FLUX), a 3x margin.
Q8_TOLERANCE = 0.05


def _writer_version() -> str:
    import tests.support.gguf_writer as writer

    return hashlib.sha1(Path(writer.__file__).read_bytes()).hexdigest()[:8]


@dataclass
class GGUFFiles:
    models: Path
    gguf_name: str
    bf16_gguf_name: str
    safetensors_name: str
    adapter_name: str
    tensor_types: dict[str, str]
    lora_modules: int


@pytest.fixture(scope="module")
def gguf_pack(comfy_host) -> Path:
    import gguf  # noqa: F401 - ComfyUI-GGUF and our writer both need it (requirements-dev.txt)

    path = require_gguf_pack()
    if "UnetLoaderGGUF" not in comfy_host.nodes.NODE_CLASS_MAPPINGS:
        ok = comfy_host.loop.run_until_complete(comfy_host.nodes.load_custom_node(str(path)))
        if not ok or "UnetLoaderGGUF" not in comfy_host.nodes.NODE_CLASS_MAPPINGS:
            pytest.fail(f"ComfyUI could not load ComfyUI-GGUF from {path} (see the log above)")
    return path


@pytest.fixture(scope="module")
def gguf_files(comfy_host, gguf_pack):
    from safetensors.torch import load_file

    from dsd.tiny import fixture_cache_dir, make_tiny_comfyui_files
    from dsd.weights.adapter import load_adapter
    from tests.support.gguf_writer import read_gguf_types, write_flux_gguf

    tiny = make_tiny_comfyui_files(fixture_cache_dir() / "comfy_models")
    unet_dir = tiny.models_dir / "diffusion_models"
    names = {q: f"dsd_tiny_flux_full_width_{q}_{_writer_version()}.gguf" for q in ("Q8_0", "BF16")}
    state = None
    for quant, name in names.items():
        if (unet_dir / name).is_file():
            continue
        for stale in unet_dir.glob(f"dsd_tiny_flux_full_width_{quant}_*.gguf"):
            stale.unlink()
        state = state if state is not None else load_file(str(unet_dir / tiny.diffusion_model))
        write_flux_gguf(state, unet_dir / name, quant=quant, name="dsd tiny FLUX (random, test fixture)")
    del state
    _, types = read_gguf_types(unet_dir / names["Q8_0"])

    fp = comfy_host.folder_paths
    added = []
    for folder, sub in (("diffusion_models", unet_dir), ("dsd", tiny.models_dir / "dsd")):
        if str(sub) not in fp.get_folder_paths(folder):
            fp.add_model_folder_path(folder, str(sub))
            added.append((folder, str(sub)))
    # ComfyUI-GGUF's "unet_gguf" list is diffusion_models' own list object; add there too if it was replaced
    gguf_paths = fp.folder_names_and_paths.get("unet_gguf", ([], set()))[0]
    if str(unet_dir) not in gguf_paths:
        gguf_paths.append(str(unet_dir))
        added.append(("unet_gguf", str(unet_dir)))
    fp.filename_list_cache.clear()
    lora_modules = len(load_adapter(tiny.path("dsd", tiny.adapter)).lora)
    yield GGUFFiles(tiny.models_dir, names["Q8_0"], names["BF16"], tiny.diffusion_model, tiny.adapter, types, lora_modules)
    for folder, sub in added:
        paths = fp.folder_names_and_paths[folder][0]
        if sub in paths:
            paths.remove(sub)
    fp.filename_list_cache.clear()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [f"{r.levelname} {r.name}: {r.getMessage()}" for r in self.records]


def _text(seed: int):
    gen = torch.Generator("cpu").manual_seed(2000 + seed)
    return [[torch.randn(1, 8, TEXT_DIM, generator=gen), {"pooled_output": torch.randn(1, TEXT_DIM, generator=gen), "guidance": 3.5}]]


def _plain_sample(host, model, positive, seed=7):
    """The same sampling on the base model without DSD (plain FLUX, text only)."""
    (m,) = host.call("ModelSamplingFlux", model=model, max_shift=1.15, base_shift=0.5, width=WIDTH, height=HEIGHT)
    (sigmas,) = host.call("BasicScheduler", model=m, scheduler="simple", steps=STEPS, denoise=1.0)
    (guider,) = host.call("BasicGuider", model=m, conditioning=positive)
    (noise,) = host.call("RandomNoise", noise_seed=seed)
    (sampler,) = host.call("KSamplerSelect", sampler_name="euler")
    (latent,) = host.call("EmptySD3LatentImage", width=WIDTH, height=HEIGHT, batch_size=1)
    out, _ = host.call("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas, latent_image=latent)
    return out["samples"]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _type_name(t) -> str:
    return getattr(getattr(t, "tensor_type", None), "name", str(t.dtype))


def _pack_module(pack: Path, name: str):
    """A module of the loaded ComfyUI-GGUF pack (ComfyUI imports it under a path-derived name)."""
    target = str(pack / f"{name}.py")
    for mod in list(sys.modules.values()):
        if getattr(mod, "__file__", None) == target:
            return mod
    raise LookupError(f"ComfyUI-GGUF's {name}.py is not imported (looked for {target})")


def test_gguf_writer_round_trips_through_comfyui_gguf_loader(gguf_pack, tiny_weights, tmp_path):
    """Our fixture writer's file, read by ComfyUI-GGUF's own gguf_sd_loader: names, shapes, types and values."""
    from dsd.weights.layout import bfl_to_diffusers
    from tests.support.gguf_writer import GGUFFixtureError, write_flux_gguf

    state = tiny_weights.bfl_state
    report = write_flux_gguf(state, tmp_path / "tiny.gguf")
    loader = _pack_module(gguf_pack, "loader")
    dequant = _pack_module(gguf_pack, "dequant")
    sd, arch = loader.gguf_sd_loader(str(tmp_path / "tiny.gguf"), return_arch=True)
    assert arch == "flux" and set(sd) == set(state)
    quantised = set(report.quantised)
    assert {"double_blocks.0.img_attn.qkv.weight", "img_in.weight"} <= quantised  # 96 x 32, 32 x 64 > 1024 elements
    assert "txt_in.weight" not in quantised  # 32 x 32 = 1024: small tensors stay F32, as in ComfyUI-GGUF's convert.py
    for k, v in state.items():
        assert tuple(sd[k].shape) == tuple(v.shape), k
        got = dequant.dequantize_tensor(sd[k], dtype=torch.float32)
        if k in quantised:
            assert _type_name(sd[k]) == "Q8_0"
            assert _rel(got, v.float()) < 0.01, k
        else:
            assert _type_name(sd[k]) == "F32" and torch.equal(got, v.float()), k
    with pytest.raises(GGUFFixtureError, match="diffusers layout"):
        write_flux_gguf(bfl_to_diffusers(dict(state)), tmp_path / "bad.gguf")
    assert not (tmp_path / "bad.gguf").exists()


@pytest.mark.slow
def test_dsd_on_comfyui_gguf(comfy_host, gguf_files, tiny_vae, record_property):
    """UnetLoaderGGUF (Q8_0) -> DSD Adapter Loader -> DSD Reference Conditioning -> DSD Guider -> 2 Euler steps,
    against the same chain on the bf16 safetensors (stock UNETLoader), on a BF16 GGUF of the same values, and
    on the Q8_0 model without DSD. One test so that pytest-xdist never runs the heavy runs in two workers."""
    import comfy.model_base
    import comfy.model_management

    types = gguf_files.tensor_types
    assert types["double_blocks.0.img_attn.qkv.weight"] == types["img_in.weight"] == "Q8_0"
    assert types["double_blocks.0.img_attn.qkv.bias"] == types["double_blocks.0.img_attn.norm.key_norm.scale"] == "F32"
    assert sum(t == "Q8_0" for t in types.values()) == 20  # every 2-D weight of the 1-double-block FLUX

    host = comfy_host
    pos, neg = _text(0), _text(1)
    image = reference_images(1)
    handler = _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with torch.inference_mode():
            comfy.model_management.unload_all_models()
            (gguf_model,) = host.call("UnetLoaderGGUF", unet_name=gguf_files.gguf_name)
            assert isinstance(gguf_model.model, comfy.model_base.Flux)
            assert type(gguf_model).__name__ == "GGUFModelPatcher"
            qkv = gguf_model.model.diffusion_model.double_blocks[0].img_attn.qkv.weight
            ops = sys.modules[type(qkv).__module__]  # ComfyUI-GGUF's ops: GGMLLayer.get_weight dequantises via it
            calls = {"n": 0}
            real = ops.dequantize_tensor

            def counting(*args, **kwargs):
                calls["n"] += 1
                return real(*args, **kwargs)

            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(ops, "dequantize_tensor", counting)
                (dsd_model,) = host.call("DSDAdapterLoader", model=gguf_model, adapter=gguf_files.adapter_name, strength=1.0)
                host.call(
                    "DSDReferenceConditioning", positive=pos, negative=neg, vae=tiny_vae.comfy, image=image,
                    width=WIDTH, height=HEIGHT, fit="crop", batch_size=1,
                )  # fmt: skip
            loader_dequantised = calls["n"]
            out_q8, _, sampled = comfy_dsd_sample(host, gguf_model, tiny_vae.comfy, pos, neg, image, gguf_files.adapter_name, steps=STEPS)
            dm = sampled.model.diffusion_model  # while loaded: GGUFModelPatcher hung the LoRA on the quantised tensors
            qkv_loaded = dm.double_blocks[0].img_attn.qkv.weight
            qkv_patches = sum(len(p) for p, _key in getattr(qkv_loaded, "patches", []))
            qkv_type, img_in_type = _type_name(qkv_loaded), _type_name(dm.img_in.weight)
            comfy.model_management.unload_all_models()
            out_plain = _plain_sample(host, gguf_model, pos)
            comfy.model_management.unload_all_models()
            (bf16_model,) = host.call("UnetLoaderGGUF", unet_name=gguf_files.bf16_gguf_name)
            out_bf16, _, _ = comfy_dsd_sample(host, bf16_model, tiny_vae.comfy, pos, neg, image, gguf_files.adapter_name, steps=STEPS)
            del bf16_model
            comfy.model_management.unload_all_models()
            (st_model,) = host.call("UNETLoader", unet_name=gguf_files.safetensors_name, weight_dtype="default")
            out_ref, _, _ = comfy_dsd_sample(host, st_model, tiny_vae.comfy, pos, neg, image, gguf_files.adapter_name, steps=STEPS)
            del st_model
            comfy.model_management.unload_all_models()
    finally:
        root.removeHandler(handler)
    out_q8, out_bf16, out_ref, out_plain = (t.float() for t in (out_q8, out_bf16, out_ref, out_plain))

    rel_q8 = _rel(out_q8, out_ref)
    bf16_err = (out_bf16 - out_ref).abs().max().item()
    rel_plain = _rel(out_q8, out_plain)
    for key, value in (("q8_0_rel_err", rel_q8), ("bf16_gguf_max_abs_err", bf16_err), ("dsd_vs_plain_rel", rel_plain)):
        record_property(key, value)
    print(
        f"DSD on GGUF: Q8_0 vs bf16 safetensors rel L2 {rel_q8:.5f}; BF16 GGUF vs safetensors max abs {bf16_err:.3e}; "
        f"with vs without DSD rel L2 {rel_plain:.4f}"
    )

    # our nodes read no base weight: nothing dequantised while they ran, and the weights are still Q8_0 after sampling
    assert loader_dequantised == 0
    assert type(dsd_model).__name__ == "GGUFModelPatcher"  # our clones keep ComfyUI-GGUF's patcher class
    assert qkv_type == img_in_type == "Q8_0"
    # every LoRA module mapped (12 modules onto 8 BFL weights; q, k, v are slices of one qkv), applied on the fly
    patches = dsd_model.patches
    assert sum(len(v) for v in patches.values()) == gguf_files.lora_modules
    assert len(patches["diffusion_model.double_blocks.0.img_attn.qkv.weight"]) == 3
    assert qkv_patches == 3
    bad = [m for m in handler.messages() if "lora key not loaded" in m or m.startswith("ERROR")]
    assert not bad, bad
    # numbers: finite, close to bf16 (Q8_0 rounding only: the BF16 GGUF gives the stock result), DSD matters
    assert out_q8.shape == out_ref.shape == (1, 16, HEIGHT // 8, WIDTH // 8)
    assert torch.isfinite(out_q8).all() and torch.isfinite(out_plain).all()
    assert rel_q8 < Q8_TOLERANCE
    assert bf16_err <= 1e-5 * out_ref.abs().max().item()
    assert rel_plain > 0.05 and rel_plain > 10 * rel_q8
