"""Bad values sent to the real executor get a clear error naming the input, and the next prompt still runs.

JSON ``NaN``/``Infinity`` pass ComfyUI's own min/max checks, a raw JSON object can stand where a
``DSD_LAYOUT`` link belongs, and an upstream node (stock ImageBlend with a NaN factor) can hand over NaN
pixels: each must end as an error, not a "successful" black image or a 50 GB allocation. Prompts go
through ``json.dumps``/``json.loads`` so NaN arrives exactly as a client's JSON delivers it.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from dsd_graph import HEIGHT, WIDTH

ADAPTER = "tiny_adapter.safetensors"
LAYOUT = {"height": HEIGHT, "width": WIDTH, "fit": "crop", "pad_value": 1.0}
NAN, INF = float("nan"), float("inf")


def as_json(graph: dict) -> dict:
    """The prompt as the server receives it (Python's json writes and reads NaN/Infinity, as browsers' JSON.parse does not need to)."""
    return json.loads(json.dumps(graph))


def _image(node: str, seed: int = 0, height: int = 72, width: int = 80) -> dict:
    return {node: {"class_type": "DSDTest_Image", "inputs": {"batch": 1, "height": height, "width": width, "seed": seed}}}


def _nan_image(node: str) -> dict:
    """Stock ImageBlend with a NaN factor: the way the issue produced a NaN reference."""
    return {
        **_image("nan_a", 1), **_image("nan_b", 2),
        node: {"class_type": "ImageBlend", "inputs": {"image1": ["nan_a", 0], "image2": ["nan_b", 0],
                                                      "blend_factor": NAN, "blend_mode": "normal"}},
    }  # fmt: skip


def _capture(value: list, label: str = "out") -> dict:
    return {"cap": {"class_type": "DSDTest_Capture", "inputs": {"label": label, "value": value}}}


def _hint_graph(layout, hint: dict | None = None) -> dict:
    hint = hint or _image("hint")
    return as_json({**hint, "ctl": {"class_type": "DSDControlHintToFrame", "inputs": {"hint": ["hint", 0], "layout": layout}},
                    **_capture(["ctl", 0])})  # fmt: skip


def _guided_graph(strength=1.0, image_guidance=2.0, text_guidance=1.5, cfg_start_step=0, reference=None) -> dict:
    """Tiny FLUX -> DSD Adapter Loader -> DSD Reference Conditioning -> DSD Guider -> SamplerCustomAdvanced."""
    reference = reference or _image("ref")
    return as_json({
        **reference,
        "flux": {"class_type": "DSDTest_TinyFlux", "inputs": {"kind": "flux"}},
        "dsd": {"class_type": "DSDAdapterLoader", "inputs": {"model": ["flux", 0], "adapter": ADAPTER, "strength": strength}},
        "text": {"class_type": "DSDTest_TextCond", "inputs": {"batch": 1, "seed": 0}},
        "vae": {"class_type": "DSDTest_TinyVAE", "inputs": {}},
        "cond": {"class_type": "DSDReferenceConditioning", "inputs": {
            "positive": ["text", 0], "negative": ["text", 0], "vae": ["vae", 0], "image": ["ref", 0],
            "width": WIDTH, "height": HEIGHT, "fit": "crop", "batch_size": 1}},
        "guider": {"class_type": "DSDGuider", "inputs": {
            "model": ["dsd", 0], "positive": ["cond", 0], "negative": ["cond", 1], "image_guidance": image_guidance,
            "text_guidance": text_guidance, "cfg_start_step": cfg_start_step}},
        "sched": {"class_type": "BasicScheduler", "inputs": {"model": ["dsd", 0], "scheduler": "simple", "steps": 2, "denoise": 1.0}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "sampler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "sample": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["sampler", 0], "sigmas": ["sched", 0],
            "latent_image": ["cond", 2]}},
        **_capture(["sample", 0], "latent"),
    })  # fmt: skip


def _short_graph(strength=1.0, **guidance) -> dict:
    """Tiny FLUX -> DSD Adapter Loader -> DSD Guider on plain text conditioning: the numbers' checks without a VAE pass
    (the whole chain, reference included, runs in test_good_dsd_prompt_runs_after_refused_ones)."""
    full = _guided_graph(strength=strength, **guidance)
    full["guider"]["inputs"].update(positive=["text", 0], negative=["text", 0])
    keep = ("flux", "dsd", "text", "guider")
    return {**{k: full[k] for k in keep}, **_capture(["guider", 0])}


def refused(run, node_type: str, *words: str):
    """The run ended with an execution error in ``node_type`` whose message holds every word."""
    assert not run.ok and run.exec_error is not None, run.error
    assert run.exec_error["node_type"] == node_type, run.exec_error
    message = run.exec_error["exception_message"]
    assert all(w in message for w in words), message
    return message


_SEEDS = iter(range(10_000, 20_000))


def still_serving(run_prompt) -> None:
    """A cheap good prompt right after a refused one runs to the end (the executor is not left broken).

    A new seed each time: ComfyUI's cache would otherwise answer a repeated prompt without running it."""
    good = run_prompt(_hint_graph(LAYOUT, _image("hint", next(_SEEDS))))
    assert good.ok, good.exec_error
    assert good.captured["out"].shape == (1, HEIGHT, WIDTH, 3)


@pytest.mark.parametrize(
    ("node", "inputs", "name", "shown"),
    [
        ("DSDAdapterLoader", {"strength": NAN}, "strength", "nan"),
        ("DSDGuider", {"image_guidance": NAN}, "image_guidance", "nan"),
        ("DSDGuider", {"text_guidance": NAN}, "text_guidance", "nan"),
    ],
)
def test_nan_numbers_are_refused(run_prompt, test_nodes, models_dir, node, inputs, name, shown):
    run = run_prompt(_short_graph(**inputs))
    refused(run, node, f"{name} is {shown}", "finite")
    still_serving(run_prompt)


def test_infinite_numbers_are_refused(comfy_host, run_prompt, test_nodes, models_dir, tiny_flux):
    """ComfyUI's range check stops +-inf in a prompt; the nodes refuse it themselves too (API callers, no range)."""
    run = run_prompt(_guided_graph(text_guidance=-INF))
    assert not run.ok and "text_guidance" in json.dumps(run.node_errors)
    still_serving(run_prompt)
    with pytest.raises(ValueError, match="DSD Adapter Loader: strength is inf"):
        comfy_host.call("DSDAdapterLoader", model=tiny_flux(), adapter=ADAPTER, strength=INF)
    with pytest.raises(ValueError, match="DSD Guider: image_guidance is -inf; text_guidance is nan"):
        comfy_host.call("DSDGuider", model=tiny_flux(), positive=[], negative=[], image_guidance=-INF,
                        text_guidance=NAN, cfg_start_step=0)  # fmt: skip


def test_nan_reference_from_image_blend_is_refused(run_prompt, test_nodes, models_dir):
    run = run_prompt(_guided_graph(reference=_nan_image("ref")))
    refused(run, "DSDReferenceConditioning", "DSD Reference Conditioning", "image holds", "NaN")
    still_serving(run_prompt)


def test_nan_control_hint_is_refused(run_prompt, test_nodes):
    refused(run_prompt(_hint_graph(LAYOUT, _nan_image("hint"))), "DSDControlHintToFrame", "hint holds", "NaN")
    still_serving(run_prompt)


@pytest.mark.parametrize(
    ("layout", "words"),
    [
        ({"height": 65536, "width": 131072}, ("height=65536", "width=131072", "16384")),
        ({**LAYOUT, "frames": 3}, ("unknown key 'frames'",)),
        ({"width": WIDTH}, ("no 'height'",)),
        ({**LAYOUT, "height": "64"}, ("height='64' is not an integer",)),
        ({**LAYOUT, "height": 64.5}, ("height=64.5 is not an integer",)),
        ({**LAYOUT, "width": 16}, ("width=16", "from 32")),
        ({**LAYOUT, "height": 72}, ("height=72", "multiple of 16")),
        ({**LAYOUT, "fit": "zoom"}, ("fit='zoom'",)),
        ({**LAYOUT, "pad_value": NAN}, ("pad_value=nan",)),
        ("not a layout", ("got str",)),
    ],
)
def test_layouts_from_json_are_checked(run_prompt, test_nodes, layout, words):
    run = run_prompt(_hint_graph(layout))
    message = refused(run, "DSDControlHintToFrame", "DSD Control Hint To Frame", "not a DSD layout", *words)
    assert "TypeError" not in run.exec_error["exception_type"], message
    still_serving(run_prompt)


def test_split_canvas_checks_its_layout_too(run_prompt, test_nodes):
    graph = as_json({**_image("c", height=HEIGHT, width=WIDTH), "split": {"class_type": "DSDSplitCanvas", "inputs": {
        "canvas": ["c", 0], "layout": {"height": 65536, "width": 131072}}}, **_capture(["split", 0])})  # fmt: skip
    refused(run_prompt(graph), "DSDSplitCanvas", "height=65536")
    graph["split"]["inputs"]["layout"] = LAYOUT
    assert run_prompt(graph).ok


def test_prompt_node_refuses_a_nan_reference_before_any_request(run_prompt, test_nodes, private_user_and_keys):
    """Refused before a provider is asked: the base_url is a closed port, so any request would fail differently."""
    graph = as_json({**_nan_image("ref"), "enhance": {"class_type": "DSDPromptEnhance", "inputs": {
        "image": ["ref", 0], "prompt": "the dog on a beach", "provider": "openai-compatible", "model": "m",
        "enabled": True, "base_url": "http://127.0.0.1:9/v1"}}, **_capture(["enhance", 0])})  # fmt: skip
    refused(run_prompt(graph), "DSDPromptEnhance", "DSDPromptEnhance: image holds", "NaN")
    still_serving(run_prompt)


@pytest.fixture(scope="module")
def nan_adapters(models_dir, tiny_weights):
    """Adapter files whose embedder or LoRA holds a NaN, in the models/dsd folder the loader lists."""
    from dsd.weights.adapter import DSDAdapter, save_adapter
    from dsd.weights.lora import LoraPair

    c_emb = {k: v.clone() for k, v in tiny_weights.adapter.c_embedder.items()}
    c_emb["c_embedder.weight"][0, 0] = NAN
    save_adapter(DSDAdapter(c_embedder=c_emb, lora=tiny_weights.lora), models_dir.root / "dsd" / "nan_embedder.safetensors")
    lora = dict(tiny_weights.lora)
    module, pair = next(iter(lora.items()))
    lora[module] = LoraPair(down=pair.down, up=torch.full_like(pair.up, INF), alpha=pair.alpha)
    save_adapter(DSDAdapter(c_embedder=tiny_weights.adapter.c_embedder, lora=lora), models_dir.root / "dsd" / "inf_lora.safetensors")
    return models_dir


@pytest.mark.parametrize(("name", "tensor"), [("nan_embedder.safetensors", "c_embedder.weight"), ("inf_lora.safetensors", "lora_B")])
def test_non_finite_adapter_weights_are_refused(run_prompt, test_nodes, nan_adapters, name, tensor):
    graph = as_json({"flux": {"class_type": "DSDTest_TinyFlux", "inputs": {"kind": "flux"}},
                     "dsd": {"class_type": "DSDAdapterLoader", "inputs": {"model": ["flux", 0], "adapter": name, "strength": 1.0}},
                     **_capture(["dsd", 0])})  # fmt: skip
    message = refused(run_prompt(graph), "DSDAdapterLoader", f"models/dsd/{name}", tensor, "NaN or infinite")
    assert str(nan_adapters.root) not in message
    still_serving(run_prompt)


# ---------------------------------------------------------------- the identity node
@pytest.fixture(scope="module")
def tiny_clip_vision(comfy_host, tmp_path_factory):
    """ComfyUI's own ClipVisionModel at toy size (the smallest a file may hold is ViT-L), finite or with NaN weights.

    Served by a test node, ``DSDTest_TinyClipVision(kind)``, so the identity node runs in the real executor.
    """
    import comfy.clip_vision

    config = {"hidden_act": "quick_gelu", "hidden_size": 32, "image_size": 32, "intermediate_size": 64,
              "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": 2, "num_channels": 3,
              "num_hidden_layers": 2, "patch_size": 16, "projection_dim": 16}  # fmt: skip
    path = tmp_path_factory.mktemp("tiny_clip") / "config.json"
    path.write_text(json.dumps(config))
    models = {}
    for kind in ("finite", "nan"):
        model = comfy.clip_vision.ClipVisionModel(str(path))
        gen = torch.Generator().manual_seed(0)
        state = {k: (torch.ones_like(v) if "layer_norm" in k or "layrnorm" in k else torch.randn(v.shape, generator=gen) * 0.1)
                 for k, v in model.get_sd().items()}  # fmt: skip
        if kind == "nan":
            state["visual_projection.weight"][0, 0] = NAN
        model.load_sd(state)
        models[kind] = model

    class TinyClipVision:
        CATEGORY = "DSD/testing"
        RETURN_TYPES = ("CLIP_VISION",)
        FUNCTION = "run"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"kind": (["finite", "nan"],)}}

        def run(self, kind):
            return (models[kind],)

    comfy_host.nodes.NODE_CLASS_MAPPINGS["DSDTest_TinyClipVision"] = TinyClipVision
    return models


def _identity_graph(kind="finite", candidates: dict | None = None) -> dict:
    candidates = candidates or {"cand": {"class_type": "DSDTest_Image", "inputs": {"batch": 3, "height": 48, "width": 48, "seed": 5}}}
    return as_json({
        **_image("ref"), **candidates,
        "clip": {"class_type": "DSDTest_TinyClipVision", "inputs": {"kind": kind}},
        "score": {"class_type": "DSDIdentityScore", "inputs": {"clip_vision": ["clip", 0], "reference": ["ref", 0],
                  "candidates": ["cand", 0], "embedding": "image_embeds", "center_crop": True}},
        **_capture(["score", 4], "best_index"),
    })  # fmt: skip


def test_identity_node_refuses_nan_candidates_and_scores(run_prompt, test_nodes, tiny_clip_vision):
    refused(run_prompt(_identity_graph(candidates=_nan_image("cand"))), "DSDIdentityScore", "candidates holds", "NaN")
    message = refused(run_prompt(_identity_graph(kind="nan")), "DSDIdentityScore", "non-finite", "no score")
    assert "candidate(s) [0, 1, 2]" in message
    good = run_prompt(_identity_graph())
    assert good.ok, good.exec_error
    assert good.captured["best_index"] in (0, 1, 2)


def test_identity_rank_refuses_nan_embeddings(comfy_host):
    rank = importlib.import_module(f"{comfy_host.pack.__name__}.nodes.eval").rank  # our pack, as ComfyUI loaded it
    with pytest.raises(ValueError, match=r"candidate\(s\) \[1\]"):
        rank(torch.ones(1, 4), torch.tensor([[1.0, 0, 0, 0], [NAN, 0, 0, 0]]))


# ---------------------------------------------------------------- files named as the user knows them
def _sharded_release(models_dir, name: str, shard_name: str) -> str:
    """A copy of the tiny release whose transformer index lists ``shard_name`` besides its real shard."""
    dst = models_dir.root / "dsd" / name
    if not dst.exists():
        shutil.copytree(models_dir.release, dst)
        tdir = dst / "transformer"
        (tdir / "diffusion_pytorch_model.safetensors").rename(tdir / "part-1.safetensors")
        index = {"metadata": {}, "weight_map": {"x_embedder.weight": "part-1.safetensors", "c_embedder.weight": shard_name}}
        (tdir / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    return f"{name}/pytorch_lora_weights.safetensors"


@pytest.mark.parametrize("shard", ["../../../../../../../../etc/passwd", "/etc/passwd", "sub/../../x.safetensors"])
def test_release_index_cannot_leave_the_release_folder(comfy_host, tiny_flux, models_dir, shard):
    adapter = _sharded_release(models_dir, f"evil_{abs(hash(shard))}", shard)
    with pytest.raises(ValueError) as info:
        comfy_host.call("DSDAdapterLoader", model=tiny_flux(), adapter=adapter, strength=1.0)
    message = str(info.value)
    assert "is not a file inside the model folder" in message and repr(shard) in message
    assert f"models/dsd/{adapter.split('/')[0]}/transformer/diffusion_pytorch_model.safetensors.index.json" in message
    assert str(models_dir.root) not in message


def test_sharded_release_inside_its_folder_loads(comfy_host, tiny_flux, models_dir):
    adapter = _sharded_release(models_dir, "sharded_release", "part-1.safetensors")
    (model,) = comfy_host.call("DSDAdapterLoader", model=tiny_flux(), adapter=adapter, strength=1.0)
    assert model is not None


def test_errors_name_files_relative_to_the_comfyui_folder(comfy_host, tiny_flux, models_dir):
    for name in ("corrupt.safetensors", "random.safetensors"):
        with pytest.raises(ValueError) as info:
            comfy_host.call("DSDAdapterLoader", model=tiny_flux(), adapter=name, strength=1.0)
        folder = "dsd" if name.startswith("corrupt") else "loras"
        assert f"models/{folder}/{name}" in str(info.value) and str(models_dir.root) not in str(info.value)


def test_public_paths_under_the_comfyui_folder(comfy_host):
    errors = importlib.import_module(f"{comfy_host.pack.__name__}.nodes.errors")
    base = Path(comfy_host.folder_paths.base_path)
    assert errors.public_path(Path(comfy_host.folder_paths.models_dir) / "dsd" / "a" / "b.safetensors") == "models/dsd/a/b.safetensors"
    assert errors.public_path(base / "custom_nodes" / "x.py") == "custom_nodes/x.py"
    assert errors.public_path("/somewhere/else/secret_name.safetensors") == "secret_name.safetensors"
    text = f"{base}/models/dsd/x.safetensors and {base}2/y"
    assert errors.public_text(text) == f"models/dsd/x.safetensors and {base}2/y"


@pytest.mark.slow
def test_good_dsd_prompt_runs_after_refused_ones(run_prompt, test_nodes, models_dir):
    refused(run_prompt(_guided_graph(image_guidance=NAN)), "DSDGuider", "image_guidance is nan")
    refused(run_prompt(_guided_graph(strength=NAN)), "DSDAdapterLoader", "strength is nan")
    refused(run_prompt(_guided_graph(reference=_nan_image("ref"))), "DSDReferenceConditioning", "image holds")
    good = run_prompt(_guided_graph())
    assert good.ok, good.exec_error
    latent = good.captured["latent"]["samples"]
    assert latent.shape == (1, 16, HEIGHT // 8, WIDTH // 8) and torch.isfinite(latent).all()
