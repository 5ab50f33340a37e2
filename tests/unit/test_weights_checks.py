"""Weights the pack reads are checked: shard indexes stay in their folder, NaN/inf tensors are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dsd.weights.adapter import DSDAdapter, load_adapter, save_adapter
from dsd.weights.errors import WeightsError
from dsd.weights.lora import lora_to_state_dict, parse_lora
from dsd.weights.release import load_release_lora, scan_release_transformer
from dsd.weights.safetensors_io import shard_files

INDEX = "diffusion_pytorch_model.safetensors.index.json"


def _index(folder: Path, weight_map: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"a": torch.zeros(2)}, str(folder / "part-1.safetensors"))
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.mark.parametrize("name", ["../../../../../../etc/passwd", "/etc/passwd", "sub/../../part-1.safetensors", "", 3])
def test_index_entries_outside_the_folder_are_refused(tmp_path, name):
    folder = _index(tmp_path / "release" / "transformer", {"a": "part-1.safetensors", "b": name})
    with pytest.raises(WeightsError, match="is not a file inside the model folder") as info:
        shard_files(folder)
    assert repr(name) in str(info.value)


def test_index_that_is_not_a_map_is_refused(tmp_path):
    folder = _index(tmp_path / "t", ["part-1.safetensors"])
    with pytest.raises(WeightsError, match="weight_map is not an object"):
        shard_files(folder)
    (folder / INDEX).write_text("[1, 2]")
    with pytest.raises(WeightsError, match="not a valid safetensors index"):
        shard_files(folder)


def test_index_entries_inside_the_folder_load(tmp_path):
    folder = _index(tmp_path / "t", {"a": "part-1.safetensors", "b": "./part-1.safetensors"})
    (folder / "sub").mkdir()
    save_file({"c": torch.zeros(1)}, str(folder / "sub" / "part-2.safetensors"))
    index = json.loads((folder / INDEX).read_text())
    index["weight_map"]["c"] = "sub/part-2.safetensors"
    (folder / INDEX).write_text(json.dumps(index))
    assert shard_files(folder) == [folder / "part-1.safetensors", folder / "sub" / "part-2.safetensors"]


def test_sharded_release_with_an_escaping_index_is_refused(tiny_release_sharded, tmp_path):
    root = Path(shutil.copytree(tiny_release_sharded.root, tmp_path / "release"))
    tdir = root / tiny_release_sharded.transformer_dir.relative_to(tiny_release_sharded.root)
    index = json.loads((tdir / INDEX).read_text())
    index["weight_map"][next(iter(index["weight_map"]))] = "../../../../etc/passwd"
    (tdir / INDEX).write_text(json.dumps(index))
    with pytest.raises(WeightsError, match="is not a file inside the model folder"):
        scan_release_transformer(tdir)


def _pairs(tiny_release):
    return load_release_lora(tiny_release.lora_path)


@pytest.mark.parametrize(("part", "value"), [("up", float("nan")), ("down", float("inf")), ("alpha", float("nan"))])
def test_lora_with_non_finite_values_is_refused(tiny_release, tmp_path, part, value):
    state = lora_to_state_dict(_pairs(tiny_release))
    key = next(k for k in state if k.endswith({"up": "lora_B.weight", "down": "lora_A.weight"}.get(part, ".lora_A.weight")))
    if part == "alpha":
        state[key.replace(".lora_A.weight", ".alpha")] = torch.tensor(value)
    else:
        state[key] = state[key].clone()
        state[key][0, 0] = value
    with pytest.raises(WeightsError, match="NaN or infinite|alpha of .* is nan"):
        parse_lora(state, source="x.safetensors")


def test_adapter_with_a_nan_embedder_is_refused(tiny_release, tmp_path):
    info = scan_release_transformer(tiny_release.transformer_dir)
    c_emb = {k: v.clone() for k, v in info.c_embedder.items()}
    c_emb["c_embedder.bias"][3] = float("nan")
    path = save_adapter(DSDAdapter(c_embedder=c_emb, lora=_pairs(tiny_release)), tmp_path / "a.safetensors")
    with pytest.raises(WeightsError, match=r"a\.safetensors: tensor 'c_embedder\.bias' holds 1 NaN or infinite"):
        load_adapter(path)
