"""Template thumbnails (workflows/<name>.jpg): one per shipped workflow, small, drawn by workflows/thumbnails.py."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import pytest
from PIL import Image

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
NAMES = sorted(path.stem for path in WORKFLOWS.glob("*.json"))


def thumbnails():
    name = "dsd_workflows_thumbnails"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, WORKFLOWS / "thumbnails.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.mark.parametrize("name", NAMES)
def test_every_workflow_has_a_small_jpeg_thumbnail(name):
    path = WORKFLOWS / f"{name}.jpg"  # frontend 1.35.9 asks only for .jpg
    assert path.is_file(), f"no thumbnail for {name}: run python workflows/build.py"
    assert path.stat().st_size <= thumbnails().MAX_BYTES
    with Image.open(path) as image:
        assert image.format == "JPEG" and image.size == (thumbnails().SIZE, thumbnails().SIZE)


def test_a_new_workflow_gets_a_generic_card_that_fits():
    module = thumbnails()
    card = module.draw_card("dsd_best_of_n", "Several seeds, the best kept by a judge.")
    data = module.jpeg_bytes(card)
    assert len(data) <= module.MAX_BYTES
    assert Image.open(io.BytesIO(data)).size == (module.SIZE, module.SIZE)
    assert module.title_of("dsd_best_of_n") == "DSD best of N"
