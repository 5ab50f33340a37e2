"""DSDPipeline: the authors' release and the converted adapter give the same images."""

from __future__ import annotations

import pytest
import torch

from dsd.canvas import CanvasLayout
from dsd.convert import convert_release
from dsd.pipeline import DSDPipeline
from dsd.sampler import GuidanceConfig


@pytest.mark.slow
def test_release_and_adapter_routes_identical(tiny_files, tmp_path):
    adapter = tmp_path / "dsd_adapter.safetensors"
    convert_release(tiny_files.release_dir / "transformer", adapter, progress=False)
    a = DSDPipeline.from_local(tiny_files.flux_dir, release=tiny_files.release_dir)
    b = DSDPipeline.from_local(tiny_files.flux_dir, adapter=adapter)
    ref = torch.rand(1, 80, 72, 3, generator=torch.Generator().manual_seed(0))
    kw = dict(layout=CanvasLayout(height=64, width=128), steps=3, seed=5, progress=False,
              guidance=GuidanceConfig(image_guidance=2.0, text_guidance=1.5))  # fmt: skip
    ra = a.generate(ref, "a red fox", **kw)
    rb = b.generate(ref, "a red fox", **kw)
    assert ra.stats.predictions_per_step == [1, 1, 3]
    assert torch.equal(ra.tokens, rb.tokens)
    assert torch.equal(ra.frame_two, rb.frame_two)
    assert ra.frame_two.shape == (1, 3, 64, 64)
    # the weights really are DSD's: embedder and merged LoRA both present
    assert a.model.c_embedder.weight.abs().sum() > 0
    for (ka, va), (kb, vb) in zip(a.model.transformer.state_dict().items(), b.model.transformer.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
