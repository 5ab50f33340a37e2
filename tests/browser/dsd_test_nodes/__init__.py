"""Test-only ComfyUI nodes for the browser tests: tiny in-process models in place of the FLUX files.

Installed into the test server's ``custom_nodes/`` by tests/browser/conftest.py (never shipped). The ids
start with ``DSDBrowserTest_``; the test workflows swap them in for the stock loaders of ``dsd_basic``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[3]
if str(_REPO) not in sys.path:  # for ``dsd``; appended, so ComfyUI's top-level ``nodes`` keeps winning
    sys.path.append(str(_REPO))

from . import tiny  # noqa: E402


class TinyFlux:
    CATEGORY = "DSD/testing"
    DESCRIPTION = "ComfyUI's own FLUX at hidden size 32 (random weights the tiny DSD adapter fits)."
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return (tiny.comfy_flux(),)


class TinyVAE:
    CATEGORY = "DSD/testing"
    DESCRIPTION = "FLUX's VAE layout with random weights."
    RETURN_TYPES = ("VAE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return (tiny.comfy_vae(),)


class TextEncode:
    CATEGORY = "DSD/testing"
    DESCRIPTION = "Conditioning for the tiny FLUX, fixed by the text (stands in for CLIP Text Encode)."
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True, "tooltip": "Seeds the conditioning."})}}

    def run(self, text):
        return (tiny.text_conditioning(text),)


NODE_CLASS_MAPPINGS = {
    "DSDBrowserTest_TinyFlux": TinyFlux,
    "DSDBrowserTest_TinyVAE": TinyVAE,
    "DSDBrowserTest_TextEncode": TextEncode,
}
