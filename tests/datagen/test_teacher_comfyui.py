"""Teacher through a running ComfyUI server's HTTP API (real server, skipped when none is found)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from datagen.teacher import TeacherConfig, run_teacher
from datagen.teacher.__main__ import main as teacher_main
from datagen.teacher.comfyui_backend import (
    CHECKPOINT_TEMPLATE,
    DEFAULT_TEMPLATE,
    ComfyUITeacher,
    ComfyUIUnreachable,
    ComfyUIWorkflowError,
    WorkflowTemplateError,
    fill_workflow,
    load_workflow,
)
from dsd.manifest import read_records
from dsd.tiny import make_tiny_comfyui_files
from tests.needs import require_comfyui

# A model-free workflow: a solid image whose size comes from the config; the prompt and seed ride
# in (unconnected) primitive nodes, which ComfyUI keeps in /history, so the test can check them.
SOLID_WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": 1,
                                                 "color": 0x3366CC}},  # fmt: skip
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "dsd/{{filename_prefix}}"}},
    "3": {"class_type": "PrimitiveString", "inputs": {"value": "{{prompt}}"}},
    "4": {"class_type": "PrimitiveInt", "inputs": {"value": "{{seed}}"}},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"grid {i}", "layout": "2x2"}) + "\n" for i in range(n)))
    return path


def write_workflow(path: Path, workflow: dict) -> str:
    path.write_text(json.dumps(workflow))
    return str(path)


# ----------------------------------------------------------------------------------------------
# templates (no server)


def test_fill_workflow_types_whole_markers_and_substitutes_inside_strings():
    wf = {"1": {"class_type": "X", "inputs": {"seed": "{{seed}}", "text": "A {{prompt}}!", "g": "{{ guidance }}",
                                              "keep": "{{unknown_but_unused}}", "link": ["2", 0]}}}  # fmt: skip
    out = fill_workflow(wf, {"seed": 7, "prompt": 'a "quoted" cat', "guidance": 3.5})
    assert out["1"]["inputs"] == {"seed": 7, "text": 'A a "quoted" cat!', "g": 3.5,
                                  "keep": "{{unknown_but_unused}}", "link": ["2", 0]}  # fmt: skip
    assert wf["1"]["inputs"]["seed"] == "{{seed}}"  # the template is not modified


def test_shipped_templates_load(tmp_path):
    for path, loaders in ((DEFAULT_TEMPLATE, {"UNETLoader", "DualCLIPLoader", "VAELoader"}),
                          (CHECKPOINT_TEMPLATE, {"CheckpointLoaderSimple"})):  # fmt: skip
        wf = load_workflow(path)
        kinds = {n["class_type"] for n in wf.values()}
        assert loaders | {"CLIPTextEncode", "FluxGuidance", "EmptySD3LatentImage", "KSampler", "VAEDecode",
                          "SaveImage"} <= kinds  # fmt: skip


def test_bad_workflow_files_are_explained(tmp_path):
    with pytest.raises(WorkflowTemplateError, match="Export \\(API\\)"):
        load_workflow(write_workflow(tmp_path / "ui.json", {"nodes": [], "links": []}))
    no_seed = {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}"}}}
    with pytest.raises(WorkflowTemplateError, match=r"no \{\{seed\}\} marker"):
        load_workflow(write_workflow(tmp_path / "a.json", no_seed))
    typo = {"1": {"class_type": "KSampler", "inputs": {"seed": "{{seed}}", "text": "{{promt}}"}}}
    with pytest.raises(WorkflowTemplateError, match="unknown marker.*promt"):
        load_workflow(write_workflow(tmp_path / "b.json", typo))
    with pytest.raises(WorkflowTemplateError, match="does not exist"):
        load_workflow(tmp_path / "missing.json")


def test_unreachable_server_is_a_clear_error(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ComfyUIUnreachable, match=f"cannot reach ComfyUI at {url}.*comfyui_url"):
        ComfyUITeacher(TeacherConfig(backend="comfyui", comfyui_url=url, timeout_s=5))
    prompts = write_prompts(tmp_path / "prompts.jsonl", 1)
    rc = teacher_main(["--prompts", str(prompts), "--out", str(tmp_path / "t"), "--backend", "comfyui",
                       "--comfyui-url", url, "--no-progress"])  # fmt: skip
    assert rc == 1 and "cannot reach ComfyUI" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# real server


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    root = require_comfyui()
    base = tmp_path_factory.mktemp("comfy_base")
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (base / sub).mkdir()
    tiny = make_tiny_comfyui_files(base / "models")
    port = free_port()
    log = open(base / "server.log", "wb")  # noqa: SIM115 - closed in the teardown
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
         "--base-directory", str(base)],
        cwd=root, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # cold imports of torch + ComfyUI on a loaded 2-core machine
        while True:
            if proc.poll() is not None:
                tail = (base / "server.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"ComfyUI at {root} did not start (exit {proc.returncode}):\n{tail}")
            try:
                with urllib.request.urlopen(url + "/system_stats", timeout=10):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("ComfyUI did not answer /system_stats within 240 s")
                time.sleep(0.5)
        yield {"url": url, "base": base, "tiny": tiny}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
@pytest.mark.comfyui
def test_stage_through_a_real_server(comfy, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    cfg = TeacherConfig(backend="comfyui", comfyui_url=comfy["url"], width=48, height=32, batch_size=2,
                        comfyui_workflow=write_workflow(tmp_path / "wf.json", SOLID_WORKFLOW), timeout_s=300)  # fmt: skip
    out = tmp_path / "teacher"
    summary = run_teacher(cfg, prompts, out, rank=0, world_size=1, progress=False)
    assert summary.items_out == 3
    records = read_records(out / "grids.jsonl")
    assert len(records) == 3 and all(r["backend"] == "comfyui" for r in records)
    for r in records:
        with Image.open(r["path"]) as im:
            assert im.size == (48, 32)
            assert im.convert("RGB").getpixel((5, 5)) == (0x33, 0x66, 0xCC)
    with urllib.request.urlopen(comfy["url"] + "/history?max_items=64") as resp:
        history = json.load(resp)
    sent = {(h["prompt"][2]["3"]["inputs"]["value"], h["prompt"][2]["4"]["inputs"]["value"]) for h in history.values()}
    assert {(r["prompt"], r["seed"]) for r in records} <= sent
    again = run_teacher(cfg, prompts, out, rank=0, world_size=1, progress=False)
    assert again.skipped_done == 3 and again.items_out == 0


@pytest.mark.slow
@pytest.mark.comfyui
def test_validation_error_quotes_comfyui(comfy):
    # the shipped FLUX template against a server with no such model files
    teacher = ComfyUITeacher(TeacherConfig(backend="comfyui", comfyui_url=comfy["url"], comfyui_unet="nope.safetensors"))
    with pytest.raises(ComfyUIWorkflowError) as info:
        teacher.generate(["a grid"], [1])
    text = str(info.value)
    assert "rejected the workflow" in text and "Prompt outputs failed validation" in text
    assert "node 1 (UNETLoader): Value not in list: unet_name: 'nope.safetensors'" in text


@pytest.mark.slow
@pytest.mark.comfyui
def test_execution_error_quotes_comfyui(comfy, tmp_path):
    wf = json.loads(json.dumps(SOLID_WORKFLOW))
    wf["2"]["inputs"]["filename_prefix"] = "../../outside_{{filename_prefix}}"
    teacher = ComfyUITeacher(TeacherConfig(backend="comfyui", comfyui_url=comfy["url"], width=16, height=16,
                                           comfyui_workflow=write_workflow(tmp_path / "wf.json", wf), timeout_s=300))  # fmt: skip
    with pytest.raises(ComfyUIWorkflowError, match=r"node 2 \(SaveImage\) failed: .*outside the output folder"):
        teacher.generate(["a grid"], [1])


def _tiny_flux_workflow(models: Path) -> dict:
    def one(*folders: str) -> list[str]:
        for folder in folders:
            files = sorted(p.name for p in (models / folder).glob("*.safetensors")) if (models / folder).is_dir() else []
            if files:
                return files
        return []

    unet, vae, text = one("diffusion_models", "unet"), one("vae"), one("text_encoders", "clip")
    if not (unet and vae and text):
        pytest.fail(f"dsd.tiny.make_tiny_comfyui_files wrote no diffusion model / VAE / text encoder under {models}")
    wf = load_workflow(DEFAULT_TEMPLATE)
    if len(text) == 1:  # one CLIP-L: a FLUX whose context dim is 768 (see shared host notes)
        wf["2"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": text[0], "type": "stable_diffusion"}}
    else:
        wf["2"]["inputs"].update(clip_name1=text[0], clip_name2=text[1])
    wf["1"]["inputs"]["unet_name"], wf["3"]["inputs"]["vae_name"] = unet[0], vae[0]
    return wf


@pytest.mark.slow
@pytest.mark.comfyui
def test_tiny_flux_job(comfy, tmp_path):
    wf = _tiny_flux_workflow(comfy["base"] / "models")
    cfg = TeacherConfig(backend="comfyui", comfyui_url=comfy["url"], width=64, height=64, steps=1, timeout_s=300,
                        comfyui_workflow=write_workflow(tmp_path / "flux.json", wf))  # fmt: skip
    image = ComfyUITeacher(cfg).generate(["a grid of 4 images of a red robot"], [42])[0]
    assert image.size == (64, 64)
