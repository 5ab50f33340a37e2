"""The shipped workflows/ folder as the tests read it: JSON graphs, and the two scripts that write it.

``workflows/`` is a folder ComfyUI serves as templates; its scripts live in ``scripts/`` and are loaded by path.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
SCRIPTS = {"build": "build_workflows.py", "thumbnails": "workflow_thumbnails.py"}


def script(stem: str) -> ModuleType:
    """``scripts/build_workflows.py`` (``build``) or ``scripts/workflow_thumbnails.py`` (``thumbnails``), loaded once."""
    name = f"dsd_workflows_{stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, WORKFLOWS.parent / "scripts" / SCRIPTS[stem])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules[name]


def load(name: str, api: bool = False) -> dict:
    """A shipped workflow: UI format, or API format with ``api=True``."""
    path = WORKFLOWS / ("api" if api else "") / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8"))
