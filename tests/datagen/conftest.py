"""Shared fixtures of the datagen tests: a synthetic workdir up to the panels stage, provider configs
pointed at the local FakeLLMServer, and answers in the shapes the stages ask for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datagen.config import PromptsConfig
from datagen.prompts import template_prompt
from dsd.providers import ProviderConfig


def provider_cfg(server, kind: str = "openai", **kw) -> ProviderConfig:
    base = server.openai_base_url if kind == "openai" else server.gemini_base_url
    defaults = dict(kind=kind, model="test-model", base_url=base, timeout_s=5.0, max_retries=3,
                    backoff_base_s=0.01, backoff_max_s=0.05, max_malformed_retries=0, max_concurrency=4)
    defaults.update(kw)
    return ProviderConfig(**defaults)


def schema_props(req) -> set[str]:
    return set((req.json_schema or {}).get("properties", {}))


def smart_responder(same: bool = True, confidence: float = 0.9):
    """Answers every datagen request kind with a valid, content-dependent object."""

    def respond(req):
        props = schema_props(req)
        if "same_identity" in props:
            return {"subject": "a red ball", "description_a": "a red rubber ball", "description_b": "a red rubber ball",
                    "same_identity": same, "confidence": confidence, "reason": "identical shape and colour",
                    "caption": "a red rubber ball on grass"}
        if "panels" in props:
            caption = req.prompt.split("\n", 1)[0].removeprefix("Caption: ")
            words = caption.split()
            return {"subject": " ".join(words[:4]), "subject_kind": "object", "layout": "2x2",
                    "panels": [{"expression": "", "pose": f"view {i} of {words[-1]}", "lighting": f"light {i}",
                                "setting": f"{words[i % len(words)]} place {i}"} for i in range(4)]}
        if "results" in props:
            n = sum(1 for line in req.prompt.splitlines() if line[:1].isdigit())
            return {"results": [{"index": i, "keep": "blurry" not in line, "subject": "thing"}
                                for i, line in enumerate(x for x in req.prompt.splitlines() if x[:1].isdigit())][:n]}
        return "ok"

    return respond


def write_panel(path: Path, seed: int, size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype("uint8")
    Image.fromarray(arr).save(path)


def make_pairs_workdir(w: Path, n_grids: int = 3, pairs_per_grid: int = 2) -> list[dict]:
    """A workdir as the prompts/teacher/panels stages would leave it (contract formats)."""
    (w / "prompts").mkdir(parents=True, exist_ok=True)
    (w / "teacher").mkdir(parents=True, exist_ok=True)
    (w / "panels").mkdir(parents=True, exist_ok=True)
    pairs = []
    with open(w / "prompts" / "prompts.jsonl", "w") as fp, open(w / "teacher" / "grids.jsonl", "w") as fg, \
            open(w / "panels" / "pairs.jsonl", "w") as fpairs:
        for g in range(n_grids):
            prompt = template_prompt({"id": f"cap{g}", "caption": f"a blue teapot number {g} on a table"},
                                     PromptsConfig())
            fp.write(json.dumps(prompt) + "\n")
            gid = f"grid{g:03d}"
            fg.write(json.dumps({"id": gid, "prompt_id": prompt["id"], "seed": 100 + g, "width": 128, "height": 128,
                                 "rows": 2, "cols": 2, "path": f"teacher/grids/{gid}.png", "backend": "test"}) + "\n")
            paths = []
            for k in range(4):
                p = w / "panels" / "panels" / f"{gid}_{k}.png"
                write_panel(p, seed=g * 10 + k)
                paths.append(str(p))
            for ref, target in [(0, 1), (2, 3), (1, 0), (3, 2)][:pairs_per_grid]:
                pair = {"id": f"{gid}_{ref}_{target}", "grid_id": gid, "ref_path": paths[ref],
                        "target_path": paths[target], "ref_index": ref, "target_index": target}
                fpairs.write(json.dumps(pair) + "\n")
                pairs.append(pair)
    return pairs


@pytest.fixture
def pairs_workdir(tmp_path: Path) -> Path:
    w = tmp_path / "work"
    make_pairs_workdir(w)
    return w


@pytest.fixture
def dg():
    """The helpers above, for tests (conftest is not importable as a module under importlib mode)."""
    import types

    return types.SimpleNamespace(provider_cfg=provider_cfg, smart_responder=smart_responder, schema_props=schema_props,
                                 write_panel=write_panel, make_pairs_workdir=make_pairs_workdir)
