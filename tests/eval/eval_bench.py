"""Test helpers of the eval tests: a tiny benchmark in our layout and a judge that answers like a VLM."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.eval_fixtures import smooth_image

PROMPTS = [
    {"prompt": "the subject on a beach at sunset", "category": "photorealistic"},
    {"prompt": "the subject as a watercolour painting", "category": "stylized"},
    {"prompt": "the subject riding a dragon above the clouds", "category": "imaginative"},
]


def make_bench(root: Path, subjects: int = 2, prompts: list[dict] | None = None) -> Path:
    """``subjects`` subjects (s0, s1, ...) with one smooth reference each, and the prompts for all of them."""
    for k in range(subjects):
        folder = root / "subjects" / f"s{k}"
        folder.mkdir(parents=True, exist_ok=True)
        smooth_image(seed=10 + k, size=64).save(folder / "ref.png")
        (folder / "subject.json").write_text(json.dumps({"name": f"thing {k}", "category": "object" if k % 2 else "animal"}))
    lines = [json.dumps(p) for p in (prompts or PROMPTS)]
    (root / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _digest(req) -> int:
    """From the prompt and each image's coarse brightness: a pixel one level apart (CPU float rounding
    between processes) does not change the judgement, a different picture usually does."""
    import io

    import numpy as np
    from PIL import Image

    h = hashlib.sha256(req.prompt.encode())
    for image in req.images:
        h.update(str(int(np.asarray(Image.open(io.BytesIO(image)), dtype=np.float32).mean() // 4)).encode())
    return int(h.hexdigest()[:8], 16)


def judge_responder(req) -> dict:
    """A schema-fitting judgement whose score depends on the request's content (deterministic)."""
    props = set((req.json_schema or {}).get("properties", {}))
    answer = {name: f"{name} of the image" for name in props if name != "score"}
    answer["score"] = _digest(req) % 5
    return answer


def write_adapter(path: Path, seed: int) -> Path:
    """A tiny random DSD adapter (embedder + rank-2 LoRA), as a training checkpoint would be exported."""
    from dsd.tiny import make_tiny_dsd, make_tiny_lora
    from dsd.weights.adapter import DSDAdapter, save_adapter

    model = make_tiny_dsd(seed)
    embedder = {f"c_embedder.{k}": v.detach().clone() for k, v in model.c_embedder.state_dict().items()}
    return save_adapter(DSDAdapter(embedder, make_tiny_lora(model.transformer, rank=2, seed=seed)), path)
