"""VLM views: written by the panels stage, read by curation, byte-identical to encoding on the fly."""

from __future__ import annotations

import numpy as np
from PIL import Image

from datagen.config import CurateConfig
from datagen.curate import encode_panel, panel_encoding
from datagen.vlm_view import ViewSpec, encode_view, view_path


def _panel(tmp_path, side=300):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
    path = tmp_path / "g_0.png"
    img.save(path)
    return img, path


def test_view_equals_fresh_encoding_and_is_preferred(tmp_path):
    img, path = _panel(tmp_path)
    spec = panel_encoding(CurateConfig(max_image_side=128))
    assert spec == ViewSpec(128, "jpeg", 90)
    fresh = encode_panel(path, *spec)
    assert fresh[:3] == b"\xff\xd8\xff" and max(Image.open(__import__("io").BytesIO(fresh)).size) == 128
    view = view_path(path, spec)
    view.write_bytes(encode_view(img, spec))  # what the panels stage writes from the in-memory panel
    assert view.read_bytes() == fresh  # same pixels, same settings, same bytes: cached answers stay valid
    view.write_bytes(b"marker")
    assert encode_panel(path, *spec) == b"marker"  # curation reads the view instead of re-encoding


def test_view_names_carry_the_settings(tmp_path):
    _, path = _panel(tmp_path)
    a = view_path(path, ViewSpec(512, "jpeg", 90))
    b = view_path(path, ViewSpec(512, "jpeg", 80))
    c = view_path(path, ViewSpec(768, "png", 90))
    assert len({a, b, c}) == 3 and a.suffix == ".jpg" and c.suffix == ".png"
    assert encode_panel(path, 64, "png")[:8] == b"\x89PNG\r\n\x1a\n"  # no view with these settings: encoded now
