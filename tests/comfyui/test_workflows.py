"""The example workflows in workflows/: structure (UI <-> API consistency against the live node
definitions, no secrets) and real runs through ComfyUI's executor with tiny files.

Test-only substitutions (everything else runs as shipped):
- Text encoder: ``DualCLIPLoader(type=flux)`` always builds the full 4.76 B-param T5-XXL, which
  this machine cannot build. The runs swap it for ``CLIPLoader(clip_l.safetensors,
  type=stable_diffusion)`` with a full-size random CLIP-L: its 768-wide hidden states and pooled
  output fit a FLUX whose context and pooled dims are 768 (dsd.tiny.FULL_WIDTH_TRANSFORMER_CONFIG).
- Sizes: canvas 256x128 instead of 1024x512 (DSDReferenceConditioning and ModelSamplingFlux; frames of 128x128
  in DSDMultiReferenceConditioning),
  2 sampling steps (3 for true CFG, which starts at the third step).
- Files: random weights under the names the workflows use: ``flux1-dev.safetensors`` is a
  full-width (hidden 3072, 1 double block, 0 single) FLUX in bf16 (ComfyUI only loads hidden
  3072 from a file), ``ae.safetensors`` the full FLUX VAE layout (diffusers keys), the adapter is
  made for that FLUX, the ControlNet is an XLabs-layout FLUX ControlNet with one block, the vision model of
  ``dsd_best_of_n`` a random CLIP ViT-L/14 (the smallest ComfyUI detects from a file) under the SigLIP name.
- Prompt enhancement talks to tests.support.llm_server.FakeLLMServer on 127.0.0.1.
"""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.llm_server import FakeLLMServer, RecordedRequest
from tests.support.workflow_files import load, script

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
NAMES = ["dsd_basic", "dsd_prompt_enhance", "dsd_true_cfg", "dsd_controlnet", "dsd_batch", "dsd_best_of_n", "dsd_hires",
         "dsd_style_lora", "dsd_multi_reference"]
VIRTUAL_NODES = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CANVAS_W, CANVAS_H = 256, 128
TIMINGS: dict[str, float] = {}


# ------------------------------------------------------------------ live node definitions
def widget_names(input_types: dict) -> list[tuple[str, dict]]:
    """Widget inputs in the frontend's order (required, then optional) with their options."""
    names = []
    for section in ("required", "optional"):
        for name, spec in (input_types.get(section) or {}).items():
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            is_widget = isinstance(kind, list) or kind in WIDGET_TYPES
            if is_widget and not opts.get("forceInput"):
                names.append((name, opts))
    return names


def socket_names(input_types: dict) -> list[str]:
    names = []
    for section in ("required", "optional"):
        for name, spec in (input_types.get(section) or {}).items():
            kind = spec[0]
            if not (isinstance(kind, list) or kind in WIDGET_TYPES):
                names.append(name)
    return names


def extra_values(opts: dict) -> int:
    """Values the frontend stores after a widget: the seed's control mode, the upload button."""
    return int(bool(opts.get("control_after_generate"))) + int(bool(opts.get("image_upload")))


def ui_to_api(ui: dict, node_class) -> dict:
    """What the frontend would POST for this UI document (ComfyUI's own conversion rules)."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) in (2, 4):
            continue
        types = node_class(node["type"]).INPUT_TYPES()
        inputs: dict = {}
        values = list(node.get("widgets_values") or [])
        for name, opts in widget_names(types):
            value = values.pop(0)
            for _ in range(extra_values(opts)):
                values.pop(0)
            inputs[name] = value
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


# ------------------------------------------------------------------ structure (fast)
@pytest.mark.parametrize("name", NAMES)
def test_both_formats_exist_and_are_templates(name):
    ui, api = load(name), load(name, api=True)
    assert ui["version"] == 0.4 and "extra" in ui and ui["links"] and ui["nodes"]
    assert ui["extra"]["dsd"]["api_format"] == f"api/{name}.json"
    assert all({"class_type", "inputs"} <= set(v) for v in api.values())
    # ComfyUI serves <pack>/workflows/*.json as templates: only UI files sit at the top level.
    assert {p.stem for p in WORKFLOWS.glob("*.json")} == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_ui_nodes_exist_and_widget_counts_match(comfy_host, name):
    ui = load(name)
    for node in ui["nodes"]:
        if node["type"] in VIRTUAL_NODES:
            continue
        assert node["type"] in comfy_host.nodes.NODE_CLASS_MAPPINGS, f"{name}: unknown node type {node['type']}"
        types = comfy_host.node_class(node["type"]).INPUT_TYPES()
        widgets = widget_names(types)
        expected = len(widgets) + sum(extra_values(o) for _, o in widgets)
        assert len(node.get("widgets_values", [])) == expected, (
            f"{name}: node {node['id']} ({node['type']}) has {len(node.get('widgets_values', []))} widget values, "
            f"the host defines {expected} ({[w for w, _ in widgets]})"
        )
        # Every socket the UI file names exists on the node with the host's type.
        sockets = set(socket_names(types)) | {w for w, _ in widgets}
        for slot in node.get("inputs", []):
            assert slot["name"] in sockets, f"{name}: {node['type']} has no input {slot['name']}"
        assert len(node["outputs"]) == len(comfy_host.node_class(node["type"]).RETURN_TYPES)


@pytest.mark.parametrize("name", NAMES)
def test_ui_converts_to_the_api_file(comfy_host, name):
    ui = load(name)
    converted = ui_to_api(ui, comfy_host.node_class)
    api = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in load(name, api=True).items()}
    assert converted == api
    # Links are consistent in both directions.
    by_id = {n["id"]: n for n in ui["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, type_ in ui["links"]:
        assert link_id in by_id[src]["outputs"][src_slot]["links"]
        assert by_id[dst]["inputs"][dst_slot]["link"] == link_id
        assert by_id[src]["outputs"][src_slot]["type"] == type_
    assert ui["last_link_id"] == max(link[0] for link in ui["links"])
    assert ui["last_node_id"] == max(by_id)


def test_build_table_matches_host_and_files_are_current(comfy_host, tmp_path):
    build = script("build")
    for type_, (sockets, widgets, outputs) in build.NODE_SPECS.items():
        types = comfy_host.node_class(type_).INPUT_TYPES()
        assert [s for s, _ in sockets] == socket_names(types), type_
        assert widgets == [w for w, _ in widget_names(types)], type_
        assert [t for _, t in outputs] == list(comfy_host.node_class(type_).RETURN_TYPES), type_
    written = build.write_all(tmp_path)
    for path in written:
        shipped = WORKFLOWS / path.relative_to(tmp_path)
        if path.suffix != ".json":  # thumbnails: drawn with the machine's fonts, so only their presence is checked
            assert shipped.is_file(), f"{shipped} is missing: run `python scripts/build_workflows.py`"
            continue
        assert json.loads(path.read_text()) == json.loads(shipped.read_text()), (
            f"{shipped} is stale: run `python scripts/build_workflows.py`"
        )


def test_workflows_folder_holds_only_templates_and_inputs_ship_beside_it():
    """ComfyUI serves every file in workflows/: graphs and thumbnails only. Every image a graph's LoadImage
    names ships in example_inputs/ (the pack copies it into ComfyUI's input folder at load)."""
    served = {p.relative_to(WORKFLOWS).as_posix() for p in WORKFLOWS.rglob("*") if p.is_file()}
    assert all(re.fullmatch(r"(api/)?dsd_\w+\.json|dsd_\w+\.jpg", name) for name in served), sorted(served)
    named = {node["inputs"]["image"] for name in NAMES for node in load(name, api=True).values()
             if node["class_type"] == "LoadImage"}  # fmt: skip
    assert named and all((REPO / "example_inputs" / image).is_file() for image in named), named


SECRET_PATTERNS = [
    re.compile(r"sk-[A-Za-z0-9_\-]{16,}"),  # OpenAI
    re.compile(r"AIza[0-9A-Za-z_\-]{20,}"),  # Google
    re.compile(r"(?i)\"[^\"]*(api[_-]?key|secret|token|password)[^\"]*\"\s*:"),  # a key-like field name
    re.compile(r"(?i)bearer\s+[A-Za-z0-9._\-]{12,}"),
]


@pytest.mark.parametrize("path", sorted(WORKFLOWS.rglob("*.json")), ids=lambda p: str(p.relative_to(WORKFLOWS)))
def test_no_secrets_in_workflows(path):
    text = path.read_text(encoding="utf-8")
    for pattern in SECRET_PATTERNS:
        assert not pattern.search(text), f"{path} contains something that looks like a secret ({pattern.pattern})"


# ------------------------------------------------------------------ tiny files under the shipped names
def _save(state: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def _random_clip_l(path: Path) -> None:
    """A full-size CLIP-L text encoder (transformers layout) with random weights, fp16."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                            projection_dim=768)
    model = CLIPTextModel(config)
    # ComfyUI reads the transformers key layout "text_model.<...>"; transformers 5 names the
    # modules without that prefix, and missing keys would leave ComfyUI's CLIP uninitialised.
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v.half()
             for k, v in model.state_dict().items() if "position_ids" not in k}
    _save(state, path)


def _xlabs_controlnet(flux_bfl: dict, path: Path) -> None:
    """An XLabs-layout FLUX ControlNet (ComfyUI: load_controlnet_flux_xlabs_mistoline) with 1 block."""
    gen = torch.Generator().manual_seed(5)
    state = {k: v for k, v in flux_bfl.items() if not k.startswith("final_layer.")}
    hidden = state["img_in.weight"].shape[0]
    state["controlnet_blocks.0.weight"] = torch.zeros(hidden, hidden, dtype=torch.bfloat16)
    state["controlnet_blocks.0.bias"] = torch.zeros(hidden, dtype=torch.bfloat16)
    state["pos_embed_input.weight"] = (0.02 * torch.randn(hidden, 64, generator=gen)).bfloat16()
    state["pos_embed_input.bias"] = torch.zeros(hidden, dtype=torch.bfloat16)
    for i, (cin, cout) in enumerate([(3, 16)] + [(16, 16)] * 7):
        state[f"input_hint_block.{2 * i}.weight"] = (0.1 * torch.randn(cout, cin, 3, 3, generator=gen)).bfloat16()
        state[f"input_hint_block.{2 * i}.bias"] = torch.zeros(cout, dtype=torch.bfloat16)
    _save(state, path)


@pytest.fixture(scope="session")
def workflow_files(comfy_host, tmp_path_factory):
    """The model files and input images the workflows name, registered with folder_paths (made once)."""
    from safetensors.torch import load_file

    from dsd.tiny import (
        FULL_VAE_CONFIG,
        FULL_WIDTH_TRANSFORMER_CONFIG,
        make_tiny_dsd,
        make_tiny_lora,
        make_tiny_vae,
        write_plain_flux,
    )
    from dsd.weights.adapter import DSDAdapter, save_adapter
    from dsd.weights.lora import lora_to_state_dict

    build = script("build")
    fp = comfy_host.folder_paths
    t0 = time.perf_counter()
    root = tmp_path_factory.mktemp("workflow_models")
    dirs = {}
    for sub in ("diffusion_models", "text_encoders", "vae", "dsd", "controlnet", "loras"):
        dirs[sub] = root / sub
        dirs[sub].mkdir()
        fp.add_model_folder_path(sub, str(dirs[sub]), is_default=True)

    model = make_tiny_dsd(seed=0, config=FULL_WIDTH_TRANSFORMER_CONFIG)
    flux_path = write_plain_flux(dirs["diffusion_models"] / build.FLUX_UNET, model, layout="bfl", dtype=torch.bfloat16)
    lora = make_tiny_lora(model.transformer, rank=2, seed=0)
    for pair in lora.values():  # keep the random LoRA's delta small next to the random base weights
        pair.up.mul_(0.01)
    save_adapter(DSDAdapter(c_embedder={k: v.clone() for k, v in model.c_embedder_state_dict().items()}, lora=lora),
                 dirs["dsd"] / build.DSD_ADAPTER)
    style = make_tiny_lora(model.transformer, rank=2, seed=3)
    for pair in style.values():
        pair.up.mul_(0.01)
    _save(lora_to_state_dict(style), dirs["loras"] / build.STYLE_LORA)
    del model
    _xlabs_controlnet(load_file(str(flux_path)), dirs["controlnet"] / build.CONTROLNET)
    vae = make_tiny_vae(seed=0, config=FULL_VAE_CONFIG)
    _save({k: v.detach() for k, v in vae.state_dict().items()}, dirs["vae"] / build.FLUX_VAE)
    _random_clip_l(dirs["text_encoders"] / build.CLIP_L)
    # Validation only checks that the name is listed; the runs swap T5-XXL out (see the top).
    (dirs["text_encoders"] / build.T5XXL).write_bytes(b"")
    # A random ViT-L under the SigLIP file's name (ComfyUI detects the architecture from the keys), shared
    # with tests/comfyui/test_identity_node.py through a hard link instead of a second 580 MB write.
    from tests.eval_fixtures import CLIP_VISION_NAME, shared_clip_vision_dir

    vision = shared_clip_vision_dir(tmp_path_factory.getbasetemp())
    (root / "clip_vision").mkdir()
    (root / "clip_vision" / build.CLIP_VISION).hardlink_to(vision / CLIP_VISION_NAME)
    fp.add_model_folder_path("clip_vision", str(root / "clip_vision"), is_default=True)

    old_input, old_output, old_user = fp.get_input_directory(), fp.get_output_directory(), fp.get_user_directory()
    inputs, outputs = root / "input", root / "output"
    fp.set_user_directory(str(root / "user"))  # the prompt node's disk cache lives there
    inputs.mkdir()
    outputs.mkdir()
    gen = torch.Generator().manual_seed(1)
    ref = (torch.rand(96, 80, 3, generator=gen) * 255).byte().numpy()
    Image.fromarray(ref).save(inputs / build.REFERENCE_IMAGE)
    for i, view in enumerate(build.VIEW_IMAGES.values()):  # other pictures of "the subject" (multi-reference)
        Image.fromarray(np.roll(ref, 7 * (i + 1), axis=1)).save(inputs / view)
    ramp = torch.linspace(0, 255, 64).byte().repeat(64, 1).numpy()
    Image.fromarray(ramp).convert("RGB").save(inputs / build.HINT_IMAGE)
    fp.set_input_directory(str(inputs))
    fp.set_output_directory(str(outputs))
    TIMINGS["make tiny files"] = time.perf_counter() - t0
    yield root
    fp.set_input_directory(old_input)
    fp.set_output_directory(old_output)
    fp.set_user_directory(old_user)


@pytest.mark.slow
def test_model_files_validate(comfy_host, workflow_files):
    """Every shipped API workflow passes ComfyUI's validation with files under its names (no run)."""
    for name in NAMES:
        prompt = load(name, api=True)
        valid = comfy_host.loop.run_until_complete(comfy_host.execution.validate_prompt("v", prompt, None))
        assert valid[0], (name, valid[1], valid[3])


def for_test(prompt: dict, steps: int = 2) -> dict:
    """The substitutions documented at the top of this module."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        node.pop("_meta", None)
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "DualCLIPLoader":
            node["class_type"] = "CLIPLoader"
            node["inputs"] = {"clip_name": inputs["clip_name1"], "type": "stable_diffusion"}
        elif kind in ("DSDReferenceConditioning", "ModelSamplingFlux"):
            inputs["width"], inputs["height"] = CANVAS_W, CANVAS_H
        elif kind == "DSDMultiReferenceConditioning":
            inputs["frame_width"], inputs["height"] = CANVAS_W // 2, CANVAS_H
        elif kind in ("BasicScheduler", "KSampler"):
            inputs["steps"] = steps
    return prompt


def caption_responder(req: RecordedRequest) -> str:
    return "a noisy colourful square" if req.images else "a noisy colourful square playing soccer"


def saved_images(run, workflow_files: Path) -> list[Image.Image]:
    images = []
    for out in run.outputs.values():
        for item in (out.get("images") or []) if isinstance(out, dict) else []:
            if item.get("type") == "output":
                images.append(Image.open(workflow_files / "output" / item["subfolder"] / item["filename"]))
    return images


def run_workflow(run_prompt, name: str, prompt: dict):
    t0 = time.perf_counter()
    run = run_prompt(prompt)
    TIMINGS[name] = time.perf_counter() - t0
    assert run.ok, (name, run.error, run.node_errors, run.exec_error)
    return run


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_workflow_runs(comfy_host, run_prompt, workflow_files, monkeypatch, name):
    steps = 3 if name == "dsd_true_cfg" else 2
    prompt = for_test(load(name, api=True), steps=steps)
    splits = [k for k, v in prompt.items() if v["class_type"] == "DSDSplitCanvas"]
    for k in splits:  # the result tensors themselves, to check they are finite
        prompt[f"capture_{k}"] = {"class_type": "DSDTest_Capture", "inputs": {"label": k, "value": [k, 0]}}
    expected = {"dsd_batch": 6}.get(name, 1)
    if name == "dsd_prompt_enhance":
        monkeypatch.setenv("GEMINI_API_KEY", "gm-test-key-for-the-fake-server")
        with FakeLLMServer(responder=caption_responder) as srv:
            for node in prompt.values():
                if node["class_type"] == "DSDPromptEnhance":
                    node["inputs"]["base_url"] = srv.gemini_base_url
            run = run_workflow(run_prompt, name, prompt)
            assert len(srv.requests) == 2
        previews = [o for o in run.outputs.values() if isinstance(o, dict) and "text" in o]
        assert any("playing soccer" in json.dumps(p) for p in previews)
    else:
        scorers = [k for k, v in prompt.items() if v["class_type"] == "DSDIdentityScore"]
        for k in scorers:
            prompt[f"capture_{k}"] = {"class_type": "DSDTest_Capture", "inputs": {"label": k, "value": [k, 4]}}
        run = run_workflow(run_prompt, name, prompt)
        for k in scorers:  # best-of-N saves the candidate the score node picked
            best = run.captured.pop(k)
            (candidates,) = [run.captured[s] for s in splits]
            assert len(candidates) == 4 and 0 <= best < 4
            saved = torch.from_numpy(np.asarray(saved_images(run, workflow_files)[0], dtype=np.float32) / 255)
            torch.testing.assert_close(saved, candidates[best], atol=1 / 255, rtol=0)
    if name == "dsd_multi_reference":  # the test adapter has no dsd_train_references: trained with one reference
        (guider,) = [k for k, v in prompt.items() if v["class_type"] == "DSDGuider"]
        assert "3 references given" in run.outputs[guider]["text"][0]
    assert set(run.captured) == set(splits)
    for result in run.captured.values():
        assert result.shape[1:] == (CANVAS_H, CANVAS_W // 2, 3) and torch.isfinite(result).all()
    images = saved_images(run, workflow_files)
    assert len(images) == expected, run.outputs
    for image in images:  # frame two only (the hi-res pass: twice its size)
        assert image.size == ((CANVAS_W, 2 * CANVAS_H) if name == "dsd_hires" else (CANVAS_W // 2, CANVAS_H))


def test_report_workflow_timings(request):
    """Prints the wall time of each workflow run (after the runs in this module)."""
    if TIMINGS:
        lines = [f"{k}: {v:.1f}s" for k, v in TIMINGS.items()]
        request.config.add_cleanup(lambda: print("\nworkflow wall times: " + ", ".join(lines)))
