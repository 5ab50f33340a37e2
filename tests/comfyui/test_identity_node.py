"""DSDIdentityScore in the real ComfyUI host, on a CLIP vision file loaded by the stock CLIPVisionLoader.

ComfyUI detects CLIP vision architectures from fixed key/shape checks (comfy/clip_vision.py); the
smallest it accepts from a file is ViT-L/14 (303 M parameters), so the file is full width with
random weights (tests/eval_fixtures.py). ComfyUI runs it in fp16 weights on the CPU at 224 px, about
2 s per image here, so these tests encode as few images as the assertions need.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from tests.eval_fixtures import CLIP_VISION_NAME, shared_clip_vision_dir, smooth_image

_LISTS: dict[str, list] = {}


@pytest.fixture(scope="session")
def clip_vision(comfy_host, tmp_path_factory):
    """The file registered under models/clip_vision and loaded once through the stock loader."""
    folder = shared_clip_vision_dir(tmp_path_factory.getbasetemp())
    comfy_host.folder_paths.add_model_folder_path("clip_vision", str(folder))
    return comfy_host.call("CLIPVisionLoader", clip_name=CLIP_VISION_NAME)[0]


@pytest.fixture(scope="session")
def capture_list(comfy_host):
    """A test node that receives a whole list output at once (INPUT_IS_LIST), unlike DSDTest_Capture."""

    class CaptureList:
        CATEGORY = "DSD/testing"
        RETURN_TYPES = ()
        FUNCTION = "run"
        OUTPUT_NODE = True
        INPUT_IS_LIST = True

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"label": ("STRING", {"default": "out"}), "value": ("*",)}}

        @classmethod
        def VALIDATE_INPUTS(cls, input_types):
            return True

        def run(self, label, value):
            _LISTS[label[0]] = list(value)
            return {}

    comfy_host.nodes.NODE_CLASS_MAPPINGS["DSDTest_CaptureList"] = CaptureList
    return _LISTS


def _smooth(seed: int, size: int = 96) -> torch.Tensor:
    return torch.from_numpy(np.asarray(smooth_image(seed, size), dtype=np.float32) / 255)


def test_schema_category_tooltips_and_list_output(comfy_host):
    info = comfy_host.object_info()["DSDIdentityScore"]
    assert info["category"] == "DSD/eval"
    for section in ("required", "optional"):
        for name, spec in (info["input"].get(section) or {}).items():
            assert spec[1].get("tooltip"), f"input {name} has no tooltip"
    assert info["output"] == ["FLOAT", "STRING", "IMAGE", "IMAGE", "INT"]
    assert info["output_is_list"] == [True, False, False, False, False]
    assert all(info["output_tooltips"])


@pytest.mark.slow
def test_ranks_candidates_through_the_executor(comfy_host, run_prompt, clip_vision, capture_list):
    """Reference vs [blank, noise, the reference itself]: identical first, list output arrives whole."""
    prompt = {
        "1": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": CLIP_VISION_NAME}},
        "2": {"class_type": "DSDTest_Image", "inputs": {"batch": 1, "height": 96, "width": 96, "seed": 3}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 96, "batch_size": 1, "color": 0}},
        "4": {"class_type": "DSDTest_Image", "inputs": {"batch": 1, "height": 96, "width": 96, "seed": 4}},
        "5": {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["4", 0]}},
        "6": {"class_type": "ImageBatch", "inputs": {"image1": ["5", 0], "image2": ["2", 0]}},
        "7": {"class_type": "DSDIdentityScore", "inputs": {"clip_vision": ["1", 0], "reference": ["2", 0],
              "candidates": ["6", 0], "embedding": "image_embeds", "center_crop": True}},
        "8": {"class_type": "DSDTest_CaptureList", "inputs": {"label": "scores", "value": ["7", 0]}},
        "9": {"class_type": "DSDTest_Capture", "inputs": {"label": "summary", "value": ["7", 1]}},
        "10": {"class_type": "DSDTest_Capture", "inputs": {"label": "best", "value": ["7", 2]}},
        "11": {"class_type": "DSDTest_Capture", "inputs": {"label": "sorted", "value": ["7", 3]}},
        "12": {"class_type": "DSDTest_Capture", "inputs": {"label": "best_index", "value": ["7", 4]}},
        "13": {"class_type": "DSDTest_Capture", "inputs": {"label": "candidates", "value": ["6", 0]}},
    }  # fmt: skip
    run = run_prompt(prompt)
    assert run.ok, (run.error, run.node_errors, run.exec_error)
    scores = capture_list["scores"]
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    assert scores[2] == pytest.approx(1.0, abs=2e-3)
    assert scores[2] > scores[1] and scores[2] > scores[0]
    cands, best, ranked = run.captured["candidates"], run.captured["best"], run.captured["sorted"]
    assert run.captured["best_index"] == 2
    torch.testing.assert_close(best, cands[2:3])
    order = sorted(range(3), key=lambda i: -scores[i])
    torch.testing.assert_close(ranked, cands[order])
    lines = run.captured["summary"].splitlines()
    assert lines[0].startswith("3 candidates") and lines[1] == f"1. candidate 2: {scores[2]:.4f}"


@pytest.mark.slow
def test_penultimate_mean_and_several_references(comfy_host, clip_vision):
    ref = _smooth(1)
    references = torch.stack([ref, ref])
    candidates = torch.stack([torch.zeros_like(ref), ref])
    scores, summary, best, ranked, index = comfy_host.call(
        "DSDIdentityScore", clip_vision=clip_vision, reference=references, candidates=candidates,
        embedding="penultimate_mean", center_crop=False,
    )  # fmt: skip
    assert index == 1 and scores[1] == pytest.approx(1.0, abs=2e-3) and scores[0] < scores[1] - 0.01
    torch.testing.assert_close(best, candidates[1:2])
    torch.testing.assert_close(ranked, candidates.flip(0))
    assert "penultimate_mean" in summary


def test_rank_and_summary_known_answers(comfy_host):
    module = sys.modules[f"{comfy_host.pack.__name__}.nodes.eval"]
    ref = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    cands = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    scores, order = module.rank(ref, cands)
    assert scores == pytest.approx([0.0, 1.0, 2**-0.5, 2**-0.5])
    assert order == [1, 2, 3, 0]  # ties keep the candidates' order
    text = module.summary(scores, order, "image_embeds")
    assert text.splitlines()[1] == "1. candidate 1: 1.0000" and text.splitlines()[-1] == "spread best - worst: 1.0000"
    with pytest.raises(module.DSDNodeError, match="embedding must be one of"):
        module.DSDIdentityScore.execute(None, torch.zeros(1, 8, 8, 3), torch.zeros(1, 8, 8, 3), embedding="x")
