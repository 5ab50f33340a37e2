"""scripts/gpu_bundle.sh, the parts that run offline: the stripped host archive, and the suite running from it
with only the packages the GPU machine has plus the bundle's (its wheels need PyPI: their download and the full
bundle's size are checked by running `bash scripts/gpu_bundle.sh build`, which fails over 64 MiB)."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.needs import require_comfyui

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_bundle.sh"
# The H200 image's Python packages (this workplace's package list for that machine), as far as the suite cares:
# each comes with its own dependencies. The bundle adds BUNDLED; nothing else is there (no ComfyUI frontend,
# no openai / google-genai, no gguf).
GPU_IMAGE = ("torch", "torchvision", "accelerate", "peft", "transformers", "safetensors", "numpy", "aiohttp", "yarl",
             "einops", "scipy", "pillow", "psutil", "pyyaml", "requests", "tqdm", "sentencepiece", "tokenizers",
             "huggingface-hub", "packaging", "regex", "filelock", "zipp")  # fmt: skip
BUNDLED = ("diffusers", "torchsde", "trampoline", "av", "bitsandbytes", "importlib-metadata", "comfy-kitchen")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(names: tuple[str, ...]) -> dict[str, md.Distribution]:
    """Installed distributions of ``names`` and everything they require (extras ignored)."""
    dists = {_norm(d.metadata["Name"]): d for d in md.distributions()}
    todo, seen = [_norm(n) for n in names], {}
    while todo:
        n = todo.pop()
        if n in seen or n not in dists:
            continue
        seen[n] = dists[n]
        for req in dists[n].requires or []:
            if "extra ==" not in req:
                todo.append(_norm(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0]))
    return seen


def emulated_site(dest: Path) -> Path:
    """A folder of links to the installed files of the GPU image's packages + the bundled ones, and no others."""
    dest.mkdir()
    for dist in closure(GPU_IMAGE + BUNDLED).values():
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src = Path(str(dist.locate_file(top)))
            if src.exists() and not (dest / top).exists() and top != "__pycache__":
                (dest / top).symlink_to(src)
    return dest


def build_host(out: Path) -> Path:
    r = subprocess.run(["bash", str(SCRIPT), "build", "--host-only", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "limit 64 MiB" in r.stdout
    return out / "ComfyUI.tar.gz"


@pytest.mark.comfyui
def test_host_archive_is_small_and_has_what_imports_need(tmp_path):
    require_comfyui()
    archive = build_host(tmp_path / "bundle")
    assert archive.stat().st_size < 8 * 2**20
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"ComfyUI/nodes.py", "ComfyUI/server.py", "ComfyUI/comfy/model_base.py", "ComfyUI/comfy_extras/nodes_custom_sampler.py",
            "ComfyUI/comfy_api/latest/__init__.py", "ComfyUI/comfy_api/input/__init__.py"} <= names  # fmt: skip
    assert not any(n.startswith(("ComfyUI/tests/", "ComfyUI/.git/", "ComfyUI/comfy_api_nodes/", "ComfyUI/custom_nodes/"))
                   or n.endswith(".pyc") for n in names)  # fmt: skip


@pytest.mark.comfyui
@pytest.mark.slow
def test_suite_runs_from_the_bundle_with_only_the_gpu_images_packages(tmp_path):
    """The bundle's host + the GPU image's packages + the bundled ones: the suite imports and measures
    (sampling through ComfyUI, the trainer), with `python -S` so nothing else installed here is visible."""
    require_comfyui()
    archive = build_host(tmp_path / "bundle")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "host", filter="data")
    site = emulated_site(tmp_path / "site")
    assert not (site / "comfyui_frontend_package").exists() and not (site / "openai").exists()
    # as `gpu_bundle.sh run`: PYTHONPATH is the bundle's site only; `-m` from the repo root finds the repo's packages
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(site), "PYTHONUNBUFFERED": "1",
           "COMFYUI_PATH": str(tmp_path / "host" / "ComfyUI")}  # fmt: skip
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-S", "-m", "benchmarks.gpu_suite", "--tiny", "--out", str(out),
                        "--parts", "sampling,training,fp8_matmul"], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]
    parts = json.loads((out / "gpu_figures.json").read_text())["parts"]
    assert parts["sampling"]["status"] == "measured", parts["sampling"]
    assert parts["training"]["adamw"]["status"] == "measured", parts["training"]
    assert parts["fp8_matmul"]["fp8_fallbacks"] == 0 < parts["fp8_matmul"]["fp8_linear_calls"], parts["fp8_matmul"]
