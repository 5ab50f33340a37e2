"""Template thumbnails (workflows/<name>.jpg): one per shipped workflow, small, drawn by scripts/workflow_thumbnails.py."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from tests.support.workflow_files import script

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
NAMES = sorted(path.stem for path in WORKFLOWS.glob("*.json"))


@pytest.mark.parametrize("name", NAMES)
def test_every_workflow_has_a_small_jpeg_thumbnail(name):
    path = WORKFLOWS / f"{name}.jpg"  # frontend 1.35.9 asks only for .jpg
    assert path.is_file(), f"no thumbnail for {name}: run python scripts/build_workflows.py"
    assert path.stat().st_size <= script("thumbnails").MAX_BYTES
    with Image.open(path) as image:
        assert image.format == "JPEG" and image.size == (script("thumbnails").SIZE, script("thumbnails").SIZE)


def test_a_new_workflow_gets_a_generic_card_that_fits():
    module = script("thumbnails")
    card = module.draw_card("dsd_best_of_n", "Several seeds, the best kept by a judge.")
    data = module.jpeg_bytes(card)
    assert len(data) <= module.MAX_BYTES
    assert Image.open(io.BytesIO(data)).size == (module.SIZE, module.SIZE)
    assert module.title_of("dsd_best_of_n") == "DSD best of N"
