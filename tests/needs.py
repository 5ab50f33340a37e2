"""What a test needs from outside Python (ComfyUI host, browser) and what its absence means.

Under ``CI=true`` a test that cannot find what it needs FAILS (a skip in CI is a hidden failure);
elsewhere it is skipped with a reason that names what is missing and the one command that brings it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from scripts.comfyui_host import PREPARE_COMMAND, find_comfyui, gguf_pack

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
COMFY_ROOT: Path | None = find_comfyui()
CHROMIUM_COMMAND = "apt-get install -y chromium  (then: pip install playwright; no browser download)"


def missing(what: str, command: str) -> None:
    """Stop this test because ``what`` is not there: a failure in CI, a skip naming ``command`` elsewhere."""
    message = f"{what}; bring it with: {command}"
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def require_comfyui() -> Path:
    if COMFY_ROOT is None:
        missing("no ComfyUI host found (COMFYUI_PATH, an enclosing ComfyUI, or .cache/ComfyUI)", PREPARE_COMMAND)
    return COMFY_ROOT


def require_gguf_pack() -> Path:
    pack = gguf_pack(require_comfyui())
    if pack is None:
        missing(f"ComfyUI-GGUF is not in {COMFY_ROOT}/custom_nodes", f"unset COMFYUI_PATH and run {PREPARE_COMMAND}")
    return pack


def require_chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    missing("no Chromium on PATH", CHROMIUM_COMMAND)
    raise AssertionError("unreachable")
