"""`dsd convert`: release -> adapter (exact), clear errors, the streaming diff report, SVD extraction."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dsd.convert import convert_release, delta_lora_path
from dsd.tiny import write_plain_flux
from dsd.weights.adapter import load_adapter
from dsd.weights.diff import diff_against_base, svd_lora
from dsd.weights.errors import WeightsError
from dsd.weights.lora import lora_to_state_dict, parse_lora

HIDDEN = 32


def _copy_release(release, dst: Path) -> Path:
    shutil.copytree(release.root, dst)
    return dst


@pytest.mark.parametrize("which", ["tiny_release", "tiny_release_sharded"])
def test_adapter_recovers_every_tensor_exactly(which, request, tmp_path):
    release = request.getfixturevalue(which)
    out = tmp_path / "dsd_adapter.safetensors"
    result = convert_release(release.transformer_dir, out, lora_path=release.lora_path, progress=False)
    assert result.stray.status == "match"
    ad = load_adapter(out)
    expected = release.model.c_embedder_state_dict()
    assert set(ad.c_embedder) == set(expected)
    for k, v in expected.items():
        assert torch.equal(ad.c_embedder[k], v), k
    assert set(ad.lora) == set(release.lora)
    for module, pair in release.lora.items():
        assert torch.equal(ad.lora[module].down, pair.down), module
        assert torch.equal(ad.lora[module].up, pair.up), module
    meta = ad.metadata
    assert meta["dsd_format"] == "dsd-adapter" and meta["dsd_rank"] == "4"
    source = json.loads(meta["dsd_source"])
    assert source["lora"]["file"] == "pytorch_lora_weights.safetensors" and len(source["lora"]["header_sha256"]) == 64
    assert len(source["transformer"]) == (3 if which.endswith("sharded") else 1)
    assert not any(str(tmp_path) in v or str(Path.home()) in v for v in meta.values())
    # keys in the layout ComfyUI's LoRA loader maps: transformer.<diffusers path>.lora_A.weight
    keys = set(load_file(out))
    assert all(k.startswith(("transformer.", "c_embedder.")) for k in keys)
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in keys


def test_lora_defaults_to_file_beside_transformer(tiny_release, tmp_path):
    result = convert_release(tiny_release.root, tmp_path / "a.safetensors", progress=False)
    assert len(result.adapter.lora) == len(tiny_release.lora)


def test_stray_lora_mismatch_warns(tiny_release, tmp_path, caplog):
    root = _copy_release(tiny_release, tmp_path / "rel")
    lora = load_file(root / "pytorch_lora_weights.safetensors")
    key = "transformer.transformer_blocks.0.attn.to_q.lora_B.weight"
    lora[key] = lora[key] + 1.0
    save_file(lora, root / "pytorch_lora_weights.safetensors")
    with caplog.at_level(logging.WARNING, logger="dsd.convert"):
        result = convert_release(root / "transformer", tmp_path / "a.safetensors", progress=False)
    assert result.stray.status == "differs"
    assert result.stray.differing == ["transformer_blocks.0.attn.to_q.lora_B.default.weight"]
    assert any("differ" in r.getMessage() for r in caplog.records)
    assert torch.equal(load_adapter(tmp_path / "a.safetensors").lora["transformer_blocks.0.attn.to_q"].up, lora[key])


# -- clear errors -------------------------------------------------------------------------------


def test_truncated_transformer_names_the_file(tiny_release, tmp_path):
    root = _copy_release(tiny_release, tmp_path / "rel")
    f = root / "transformer" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"diffusion_pytorch_model\.safetensors.*(truncated|corrupt)"):
        convert_release(root / "transformer", tmp_path / "a.safetensors", progress=False)
    assert not (tmp_path / "a.safetensors").exists()


def test_corrupt_lora_names_the_file(tiny_release, tmp_path):
    root = _copy_release(tiny_release, tmp_path / "rel")
    f = root / "pytorch_lora_weights.safetensors"
    data = bytearray(f.read_bytes())
    data[8:40] = b"\x00garbage-not-json-header-bytes!!"
    f.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"pytorch_lora_weights\.safetensors"):
        convert_release(root / "transformer", tmp_path / "a.safetensors", progress=False)


def test_corrupt_base_names_the_file(tiny_release, tmp_path):
    base = tmp_path / "flux1-dev.safetensors"
    base.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(WeightsError, match=r"flux1-dev\.safetensors"):
        convert_release(tiny_release.transformer_dir, tmp_path / "a.safetensors", base=base, progress=False)


def test_sd_unet_base_rejected(tiny_release, tmp_path):
    base = tmp_path / "sd15.safetensors"
    save_file(
        {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3), "first_stage_model.decoder.conv_in.weight": torch.zeros(1)},
        base,
    )
    with pytest.raises(WeightsError, match=r"sd15\.safetensors: not a FLUX transformer"):
        convert_release(tiny_release.transformer_dir, tmp_path / "a.safetensors", base=base, progress=False)


def test_sd_unet_folder_as_transformer_rejected(tmp_path):
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "in_channels": 4}))
    save_file({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, folder / "diffusion_pytorch_model.safetensors")
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"config\.json: the model is a UNet2DConditionModel, not a FLUX\.1 transformer.*in_channels=4"):
        convert_release(folder, tmp_path / "a.safetensors", lora_path=tmp_path / "pytorch_lora_weights.safetensors", progress=False)


def test_sdxl_lora_rejected(tiny_release, tmp_path):
    lora = tmp_path / "sdxl_lora.safetensors"
    save_file(
        {
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 640),
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(640, 4),
        },
        lora,
    )
    with pytest.raises(WeightsError, match=r"sdxl_lora\.safetensors: LoRA targets modules that FLUX does not have"):
        convert_release(tiny_release.transformer_dir, tmp_path / "a.safetensors", lora_path=lora, progress=False)
    kohya = tmp_path / "sdxl_kohya.safetensors"
    save_file({"lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 640),
               "lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight": torch.zeros(640, 4)}, kohya)  # fmt: skip
    with pytest.raises(WeightsError, match=r"sdxl_kohya\.safetensors: .*another model"):
        convert_release(tiny_release.transformer_dir, tmp_path / "a.safetensors", lora_path=kohya, progress=False)


def test_missing_config_json(tiny_release, tmp_path):
    root = _copy_release(tiny_release, tmp_path / "rel")
    (root / "transformer" / "config.json").unlink()
    with pytest.raises(WeightsError, match=r"config\.json: missing"):
        convert_release(root / "transformer", tmp_path / "a.safetensors", lora_path=root / "pytorch_lora_weights.safetensors", progress=False)


def test_transformer_without_c_embedder(tiny_release, tmp_path):
    root = _copy_release(tiny_release, tmp_path / "rel")
    f = root / "transformer" / "diffusion_pytorch_model.safetensors"
    save_file({k: v for k, v in load_file(f).items() if not k.startswith("c_embedder.")}, f)
    with pytest.raises(WeightsError, match=r"transformer: the transformer has no c_embedder"):
        convert_release(root / "transformer", tmp_path / "a.safetensors", progress=False)


# -- diff report ---------------------------------------------------------------------------------


def test_identical_bfl_base(tiny_release, tmp_path):
    base = write_plain_flux(tmp_path / "flux1-dev.safetensors", tiny_release.model, layout="bfl")
    report_path = tmp_path / "report.json"
    result = convert_release(tiny_release.transformer_dir, tmp_path / "a.safetensors", base=base, report_path=report_path, progress=False)
    r = result.report
    assert r.identical and r.tensors_differing == 0 and r.max_abs == 0
    assert r.tensors_compared == len(tiny_release.model.transformer.state_dict())
    assert not r.only_in_base and not r.only_in_release
    data = json.loads(report_path.read_text())
    assert data["identical"] is True and data["base_layout"] == "bfl"
    assert load_adapter(tmp_path / "a.safetensors").metadata["dsd_base_identical"] == "yes"


def test_identical_prefixed_bfl_and_diffusers_folder(tiny_release, tiny_files, tmp_path):
    state = load_file(write_plain_flux(tmp_path / "plain.safetensors", tiny_release.model, layout="bfl"))
    prefixed = {f"model.diffusion_model.{k}": v for k, v in state.items()}
    prefixed["vae.decoder.conv_in.weight"] = torch.zeros(2)  # all-in-one checkpoints carry other models too
    save_file(prefixed, tmp_path / "comfy_flux.safetensors")
    r = diff_against_base(tiny_release.transformer_dir, tmp_path / "comfy_flux.safetensors", HIDDEN, progress=False).report
    assert r.identical and r.tensors_compared == len(tiny_release.model.transformer.state_dict())
    # make_tiny's diffusers FLUX folder holds the same base transformer (same seed)
    r2 = diff_against_base(tiny_release.transformer_dir, tiny_files.flux_dir / "transformer", HIDDEN, progress=False).report
    assert r2.identical and r2.base_layout == "diffusers"


def test_peft_wrapped_base_layer_keys(tiny_release, tmp_path):
    root = _copy_release(tiny_release, tmp_path / "rel")
    f = root / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(f)
    renamed = {k.replace("attn.to_q.weight", "attn.to_q.base_layer.weight"): v for k, v in state.items()}
    assert renamed.keys() != state.keys()
    save_file(renamed, f)
    base = write_plain_flux(tmp_path / "flux1-dev.safetensors", tiny_release.model, layout="bfl")
    assert diff_against_base(root / "transformer", base, HIDDEN, progress=False).report.identical


def _perturbed_base(release, path: Path, changes: dict[str, torch.Tensor]) -> Path:
    """BFL base = release's FLUX with ``changes`` (diffusers key -> additive delta) applied in diffusers keys."""
    from dsd.weights.layout import diffusers_to_bfl

    state = {k: v.clone() for k, v in release.model.transformer.state_dict().items()}
    for k, d in changes.items():
        state[k] = state[k] - d  # release = base + d
    save_file({k: v.contiguous() for k, v in diffusers_to_bfl(state).items()}, path)
    return path


def test_finds_exactly_the_perturbed_tensor(tiny_release, tmp_path):
    key = "transformer_blocks.0.attn.to_k.weight"  # lives inside the fused BFL qkv tensor
    delta = torch.zeros(HIDDEN, HIDDEN)
    delta[3, 5] = 0.25
    base = _perturbed_base(tiny_release, tmp_path / "flux1-dev.safetensors", {key: delta})
    r = diff_against_base(tiny_release.transformer_dir, base, HIDDEN, progress=False).report
    assert not r.identical and r.tensors_differing == 1
    (d,) = r.differing
    assert d.key == key and d.base_key == "double_blocks.0.img_attn.qkv.weight"
    assert d.max_abs == pytest.approx(0.25, abs=1e-6)
    assert r.by_block() == {"transformer_blocks.0": 1}
    assert d.rel_fro > 0 and r.overall_rel_fro > 0


def test_single_block_linear1_slice_and_bias(tiny_release, tmp_path):
    changes = {
        "single_transformer_blocks.0.proj_mlp.weight": 0.01 * torch.ones(4 * HIDDEN, HIDDEN),
        "single_transformer_blocks.0.attn.to_v.bias": 0.01 * torch.ones(HIDDEN),
        "norm_out.linear.weight": torch.cat([torch.zeros(HIDDEN, HIDDEN), 0.01 * torch.ones(HIDDEN, HIDDEN)]),
    }
    base = _perturbed_base(tiny_release, tmp_path / "b.safetensors", changes)
    r = diff_against_base(tiny_release.transformer_dir, base, HIDDEN, svd_rank=2, progress=False).report
    assert sorted(d.key for d in r.differing) == sorted(changes)
    assert r.svd["not_representable"] == ["single_transformer_blocks.0.attn.to_v.bias"]
    for d in r.differing:
        if d.key.endswith(".weight"):  # rank-1 deltas: rank 2 reconstructs them
            assert d.svd_rel_error < 1e-5


def test_svd_full_rank_reconstructs(tiny_release, tmp_path):
    gen = torch.Generator().manual_seed(0)
    changes = {
        "transformer_blocks.0.attn.to_q.weight": 0.02 * torch.randn(HIDDEN, HIDDEN, generator=gen),
        "transformer_blocks.0.ff.net.0.proj.weight": 0.02 * torch.randn(4 * HIDDEN, HIDDEN, generator=gen),
        "x_embedder.weight": 0.02 * torch.randn(HIDDEN, 64, generator=gen),
    }
    base = _perturbed_base(tiny_release, tmp_path / "flux1-dev.safetensors", changes)
    out = tmp_path / "dsd.safetensors"
    result = convert_release(tiny_release.transformer_dir, out, base=base, report_path=tmp_path / "r.json", svd_rank=64, progress=False)
    assert result.delta_path == delta_lora_path(out) == tmp_path / "dsd.base_delta_lora.safetensors"
    pairs = parse_lora(load_file(result.delta_path), source=result.delta_path)
    assert set(pairs) == {k[: -len(".weight")] for k in changes}
    for k, d in changes.items():
        torch.testing.assert_close(pairs[k[: -len(".weight")]].delta(), d, rtol=0, atol=1e-5)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["svd"]["overall_rel_error"] < 1e-5
    assert report["svd"]["file"] == "dsd.base_delta_lora.safetensors"
    assert all(t["rel_error"] < 1e-5 for t in report["svd"]["tensors"])
    # merged onto the base, the delta LoRA gives back the release's weights
    from dsd.weights.layout import bfl_to_diffusers
    from dsd.weights.lora import merge_lora

    plain = type(tiny_release.model.transformer).from_config(tiny_release.model.config)
    plain.load_state_dict(bfl_to_diffusers(load_file(base)))
    merge_lora(plain, pairs)
    for k, v in tiny_release.model.transformer.state_dict().items():
        torch.testing.assert_close(plain.state_dict()[k], v, rtol=0, atol=1e-5)


def test_svd_low_rank_error_is_the_tail_energy():
    gen = torch.Generator().manual_seed(1)
    d = torch.randn(48, 32, generator=gen)
    s = torch.linalg.svdvals(d)
    for rank in (1, 4, 20):
        pair, err = svd_lora(d, rank)
        assert pair.rank == rank and pair.alpha is None
        expected = math.sqrt(float((s[rank:] ** 2).sum() / (s**2).sum()))
        assert 0 < err < 1
        assert err == pytest.approx(expected, rel=2e-2)
    assert svd_lora(torch.zeros(8, 8), 2)[1] == 0.0


def test_low_rank_report(tiny_release, tmp_path):
    gen = torch.Generator().manual_seed(2)
    key = "transformer_blocks.0.attn.to_out.0.weight"
    base = _perturbed_base(tiny_release, tmp_path / "b.safetensors", {key: 0.02 * torch.randn(HIDDEN, HIDDEN, generator=gen)})
    r = diff_against_base(tiny_release.transformer_dir, base, HIDDEN, svd_rank=4, progress=False).report
    (item,) = r.svd["tensors"]
    assert item["rank"] == 4 and 0.3 < item["rel_error"] < 1.0  # a random 32x32 delta is far from rank 4
    assert r.svd["overall_rel_error"] == pytest.approx(item["rel_error"])


def test_other_model_size_base_rejected(tiny_release, tmp_path):
    from dsd.tiny import make_tiny_dsd

    other = make_tiny_dsd(0, {**tiny_release.model.config, "num_attention_heads": 3})
    base = write_plain_flux(tmp_path / "big.safetensors", other, layout="bfl")
    with pytest.raises(WeightsError, match=r"big\.safetensors: FLUX with hidden size 48"):
        diff_against_base(tiny_release.transformer_dir, base, HIDDEN, progress=False)


def test_delta_lora_keys_in_adapter_layout(tiny_release, tmp_path):
    key = "transformer_blocks.0.attn.to_q.weight"
    base = _perturbed_base(tiny_release, tmp_path / "b.safetensors", {key: 0.01 * torch.ones(HIDDEN, HIDDEN)})
    result = convert_release(tiny_release.transformer_dir, tmp_path / "x.safetensors", base=base, svd_rank=1, progress=False)
    keys = set(load_file(result.delta_path))
    assert keys == set(lora_to_state_dict(parse_lora(load_file(result.delta_path))))
    assert keys == {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight", "transformer.transformer_blocks.0.attn.to_q.lora_B.weight"}


# -- the release as published: any class name with FLUX.1's keys and shapes -----------------------

AUTHORS_CLASS = "FluxTransformer2DConditionalModel"  # their loading code: FluxTransformer2DConditionalModel.from_pretrained


@pytest.fixture(scope="module", params=[1, 3], ids=["single", "sharded"])
def authors_release(request, tmp_path_factory):
    from dsd.tiny import write_release

    return write_release(tmp_path_factory.mktemp("authors"), seed=0, shards=request.param, class_name=AUTHORS_CLASS)


@pytest.mark.parametrize("given", ["root", "transformer"])
def test_authors_class_name_converts(authors_release, given, tmp_path):
    from dsd.weights.release import find_release_parts

    assert json.loads((authors_release.transformer_dir / "config.json").read_text())["_class_name"] == AUTHORS_CLASS
    path = authors_release.root if given == "root" else authors_release.transformer_dir
    assert find_release_parts(path) == (authors_release.transformer_dir, authors_release.lora_path)
    result = convert_release(path, tmp_path / "a.safetensors", progress=False)
    assert result.stray.status == "match"
    ad = load_adapter(tmp_path / "a.safetensors")
    for k, v in authors_release.model.c_embedder_state_dict().items():
        assert torch.equal(ad.c_embedder[k], v), k
    assert set(ad.lora) == set(authors_release.lora)


def test_authors_class_name_loads(authors_release):
    """What the standalone sampler and training's release continuation load (load_release_transformer)."""
    from dsd.weights.release import find_release_parts, load_release_lora, load_release_transformer

    tdir, lora_path = find_release_parts(authors_release.root)
    model = load_release_transformer(tdir)
    expected = authors_release.model
    for k, v in expected.transformer.state_dict().items():
        assert torch.equal(model.transformer.state_dict()[k], v), k
    for k, v in expected.c_embedder_state_dict().items():
        assert torch.equal(model.c_embedder_state_dict()[k], v), k
    assert set(load_release_lora(lora_path)) == set(authors_release.lora)


def test_training_release_continuation_reads_authors_class(authors_release):
    from training.config import ModelConfig
    from training.model import load_base

    model, lora = load_base(ModelConfig(release=str(authors_release.root), base_dtype="float32"))
    assert torch.equal(model.c_embedder.weight, authors_release.model.c_embedder.weight)
    assert lora is not None and set(lora) == set(authors_release.lora)


SD3_CONFIG = {
    "_class_name": "SD3Transformer2DModel", "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24,
    "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192,
}  # fmt: skip


@pytest.mark.parametrize(
    "config,found",
    [
        (SD3_CONFIG, r"the model is a SD3Transformer2DModel, not a FLUX\.1 transformer \(no 'num_single_layers'; in_channels=16 \(FLUX\.1: 64\); patch_size=2"),
        ({"in_channels": 384}, r"the model is a FluxTransformer2DModel, not a FLUX\.1 transformer \(in_channels=384 \(FLUX\.1: 64\)\)"),
        ({"_class_name": AUTHORS_CLASS, "in_channels": 128}, rf"the model is a {AUTHORS_CLASS}, .*in_channels=128"),
    ],
    ids=["sd3", "flux-fill-width", "authors-name-wrong-shape"],
)
def test_other_architecture_refused(tiny_release, tmp_path, config, found):
    """convert and load_release_transformer (the standalone sampler, training) share the one check."""
    from dsd.weights.release import load_release_transformer

    root = _copy_release(tiny_release, tmp_path / "rel")
    cfg_path = root / "transformer" / "config.json"
    cfg_path.write_text(json.dumps(config if config is SD3_CONFIG else {**json.loads(cfg_path.read_text()), **config}))
    with pytest.raises(WeightsError, match=found):
        convert_release(root, tmp_path / "a.safetensors", progress=False)
    with pytest.raises(WeightsError, match=found):
        load_release_transformer(root / "transformer")
    assert not (tmp_path / "a.safetensors").exists()
