"""The multi-reference canvas (issue 20): a row of k + 1 frames, k = 1 exactly today's two-frame canvas."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from dsd.canvas import (
    CanvasLayout,
    ReferenceImageError,
    compose_canvas,
    fit_reference,
    split_canvas,
    split_frames,
    to_rgb01,
)
from dsd.tokens import CanvasSizeError
from dsd.weights.adapter import (
    DSDAdapter,
    check_reference_count,
    load_adapter,
    references_metadata,
    save_adapter,
    trained_references,
)


def _todays_compose(reference, layout: CanvasLayout) -> torch.Tensor:
    """compose_canvas as it was before multi-reference DSD (commit efdfba9), transcribed."""
    ref01 = to_rgb01(reference)
    frame = fit_reference(ref01, layout.height, layout.width // 2, layout.fit, layout.pad_value)
    canvas = torch.full((ref01.shape[0], 3, layout.height, layout.width), -1.0, dtype=torch.float32)
    canvas[..., : layout.width // 2] = frame * 2.0 - 1.0
    return canvas


def _picture(seed: int, w: int = 90, h: int = 70) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("fit", ["crop", "pad", "stretch"])
def test_one_reference_is_bit_identical_to_todays_canvas(fit):
    layout = CanvasLayout(height=64, width=128, fit=fit)
    assert layout == CanvasLayout(height=64, width=128, fit=fit, references=1)
    for reference in (_picture(0), torch.rand(3, 50, 80, 3), np.zeros((40, 40), np.uint8)):
        assert torch.equal(compose_canvas(reference, layout), _todays_compose(reference, layout))
    assert torch.equal(compose_canvas([_picture(1)], layout), _todays_compose(_picture(1), layout))


def test_old_layout_dicts_and_split_are_unchanged():
    old = {"height": 64, "width": 128, "fit": "crop", "pad_value": 1.0}
    layout = CanvasLayout.from_dict(old)
    assert layout.references == 1 and layout.frames == 2 and layout.frame_width == 64
    assert layout.to_dict() == {**old, "references": 1}
    canvas = torch.rand(2, 3, 64, 130)  # an odd frame split keeps today's rule: half = width // 2
    one, two = split_canvas(canvas, layout)
    assert torch.equal(one, canvas[..., :65]) and torch.equal(two, canvas[..., 65:])
    latent = torch.rand(1, 16, 8, 16)
    assert [f.shape[-1] for f in split_canvas(latent, layout)] == [8, 8]


def test_k_references_fill_frames_in_order_and_target_is_black():
    refs = [_picture(i, 80 + 10 * i, 60) for i in range(3)]
    layout = CanvasLayout.from_frame(64, 64, references=3)
    assert (layout.width, layout.frames, layout.frame_width, layout.token_count) == (256, 4, 64, 64)
    canvas = compose_canvas(refs, layout)
    assert canvas.shape == (1, 3, 64, 256)
    frames = split_frames(canvas, layout.frames)
    for ref, frame in zip(refs, frames[:3], strict=True):  # each frame is the one-reference canvas's frame one
        assert torch.equal(frame, split_canvas(compose_canvas(ref, CanvasLayout(64, 128)))[0])
    assert torch.equal(frames[3], torch.full_like(frames[3], -1.0))
    first, target = split_canvas(canvas, layout)
    assert torch.equal(first, frames[0]) and torch.equal(target, frames[3])


def test_reference_batches_broadcast():
    batch = torch.rand(2, 48, 48, 3)
    layout = CanvasLayout.from_frame(32, 32, references=2)
    canvas = compose_canvas([batch, _picture(3)], layout)
    assert canvas.shape == (2, 3, 32, 96)
    assert torch.equal(canvas[0, :, :, 32:64], canvas[1, :, :, 32:64])
    with pytest.raises(ReferenceImageError, match="batch of 1 or of 3"):
        compose_canvas([batch, torch.rand(3, 48, 48, 3)], layout)


def test_wrong_reference_count_and_sizes_are_clear_errors():
    layout = CanvasLayout.from_frame(32, 32, references=2)
    with pytest.raises(ReferenceImageError, match="2 reference frame"):
        compose_canvas(_picture(0), layout)
    with pytest.raises(ReferenceImageError, match="3 reference image"):
        compose_canvas([_picture(0)] * 3, layout)
    with pytest.raises(CanvasSizeError, match="multiple of 48"):
        CanvasLayout(height=32, width=64, references=2)
    for bad in (0, 9, 1.5, True, "2"):
        with pytest.raises(ValueError, match="references"):
            CanvasLayout(height=32, width=96, references=bad)
    with pytest.raises(CanvasSizeError, match="3 equal frames"):
        split_frames(torch.zeros(1, 3, 8, 10), 3)


def test_split_frames_channels_last_and_latents():
    layout = CanvasLayout.from_frame(32, 48, references=2)
    pixels = torch.rand(1, 32, layout.width, 3)  # ComfyUI IMAGE
    frames = split_frames(pixels, 3, channels_last=True)
    assert [f.shape for f in frames] == [(1, 32, 48, 3)] * 3
    first, target = split_canvas(pixels, layout, channels_last=True)
    assert torch.equal(target, pixels[:, :, 96:])
    latent = torch.rand(1, 16, 4, layout.width // 8)
    assert torch.equal(split_canvas(latent, layout)[1], latent[..., 12:])


def _adapter(metadata: dict[str, str]) -> DSDAdapter:
    return DSDAdapter(c_embedder={"c_embedder.weight": torch.zeros(8, 64), "c_embedder.bias": torch.zeros(8)}, lora={},
                      metadata=metadata)  # fmt: skip


def test_trained_references_metadata(tmp_path, caplog):
    assert trained_references(_adapter({})) == [1]  # every adapter before multi-reference DSD
    path = save_adapter(_adapter({}), tmp_path / "a.safetensors", references_metadata([3, 1, 2, 1]))
    assert load_adapter(path).metadata["dsd_train_references"] == "[1, 2, 3]"
    assert trained_references(path) == [1, 2, 3] == trained_references(load_adapter(path))
    with caplog.at_level(logging.WARNING):
        assert trained_references({"dsd_train_references": "[0, x"}) == [1]
    assert "not a list of reference counts" in caplog.text


def test_more_references_than_trained_warns(caplog):
    assert check_reference_count(2, [1, 2]) is None
    with caplog.at_level(logging.WARNING):
        message = check_reference_count(3, [1], "dsd.safetensors")
    assert message is not None and "trained with at most 1" in message and message in caplog.text
