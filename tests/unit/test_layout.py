"""Key layouts: diffusers <-> BFL round trip, and agreement with ComfyUI's own key map."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from dsd.tiny import make_tiny_lora, make_tiny_transformer
from dsd.weights.layout import (
    LayoutError,
    bfl_to_diffusers,
    detect_layout,
    diffusers_to_bfl,
    lora_target_to_bfl,
)
from tests.needs import require_comfyui


def _state():
    return {k: v.clone() for k, v in make_tiny_transformer(1).state_dict().items()}


def test_round_trip_exact():
    state = _state()
    bfl = diffusers_to_bfl(state)
    assert detect_layout(list(bfl)) == "bfl" and detect_layout(list(state)) == "diffusers"
    back = bfl_to_diffusers(bfl)
    assert set(back) == set(state)
    for k in state:
        assert torch.equal(back[k], state[k]), k
    prefixed = bfl_to_diffusers({f"model.diffusion_model.{k}": v for k, v in bfl.items()})
    assert all(torch.equal(prefixed[k], state[k]) for k in state)
    again = diffusers_to_bfl(back)
    assert all(torch.equal(again[k], bfl[k]) for k in bfl)


def test_fused_and_swapped_tensors():
    state = _state()
    bfl = diffusers_to_bfl(state)
    q, k, v = (state[f"transformer_blocks.0.attn.{n}.weight"] for n in ("to_q", "to_k", "to_v"))
    assert torch.equal(bfl["double_blocks.0.img_attn.qkv.weight"], torch.cat([q, k, v]))
    scale, shift = state["norm_out.linear.weight"].chunk(2)
    assert torch.equal(bfl["final_layer.adaLN_modulation.1.weight"], torch.cat([shift, scale]))
    assert lora_target_to_bfl("single_transformer_blocks.0.proj_mlp", 32, 128) == ("single_blocks.0.linear1", (96, 128))


def test_unknown_keys_rejected():
    with pytest.raises(LayoutError):
        diffusers_to_bfl({**_state(), "mystery.weight": torch.zeros(1)})
    assert detect_layout(["model.diffusion_model.input_blocks.0.0.weight"]) == "unknown"


_COMFY_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import comfy.utils
cfg = json.loads(sys.argv[2])
m = comfy.utils.flux_to_diffusers(cfg, output_prefix="")
out = {}
for k, v in m.items():
    if isinstance(v, str):
        out[k] = [v, None, None]
    elif len(v) == 3:
        out[k] = [v[0], None, "swap"]
    else:
        out[k] = [v[0], list(v[1]) if v[1] is not None else None, None]
print(json.dumps(out))
"""


@pytest.mark.comfyui
def test_comfyui_key_map_agrees():
    comfy = require_comfyui()
    model = make_tiny_transformer(1)
    cfg = model.config
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    comfy_cfg = {"depth": cfg.num_layers, "depth_single_blocks": cfg.num_single_layers, "hidden_size": hidden}
    proc = subprocess.run(
        [sys.executable, "-c", _COMFY_SCRIPT, str(comfy), json.dumps(comfy_cfg)],
        capture_output=True, text=True, cwd=comfy, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, f"ComfyUI at {comfy} does not import here: {proc.stderr[-300:]}"
    key_map = json.loads(proc.stdout.strip().splitlines()[-1])
    state = _state()
    bfl = diffusers_to_bfl(state)
    covered: set[str] = set()
    for dkey, t in state.items():
        assert dkey in key_map, f"ComfyUI has no mapping for {dkey}"
        bkey, sl, op = key_map[dkey]
        covered.add(bkey)
        target = bfl[bkey]
        if sl is not None:
            dim, offset, length = sl
            target = target.narrow(dim, offset, length)
        if op == "swap":
            a, b = t.chunk(2)
            t = torch.cat([b, a])
        assert torch.equal(target, t), dkey
    assert covered == set(bfl)
    # every LoRA module of the adapter layout is one ComfyUI's LoRA loader maps (transformer.<path>.weight)
    for module in make_tiny_lora(model, rank=2):
        assert f"{module}.weight" in key_map, module
