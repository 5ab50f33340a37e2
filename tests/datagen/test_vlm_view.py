"""VLM views: written by the panels stage, read by curation, byte-identical to encoding on the fly; a damaged
view is never sent (rebuilt from its panel)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datagen.config import CurateConfig
from datagen.curate import encode_panel, panel_encoding
from datagen.vlm_view import UnreadableImage, ViewSpec, encode_view, view_damage, view_path


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
    # curation reads the view instead of re-encoding: a valid view is sent byte for byte, even one that
    # differs from what the panel would give (before the views were decoded, a view "marker" was sent too;
    # now bytes that are no image are never sent: see the next test)
    other = encode_view(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), ViewSpec(128, "jpeg", 60))
    view.write_bytes(other)
    assert other != fresh and encode_panel(path, *spec) == other


def test_view_names_carry_the_settings(tmp_path):
    _, path = _panel(tmp_path)
    a = view_path(path, ViewSpec(512, "jpeg", 90))
    b = view_path(path, ViewSpec(512, "jpeg", 80))
    c = view_path(path, ViewSpec(768, "png", 90))
    assert len({a, b, c}) == 3 and a.suffix == ".jpg" and c.suffix == ".png"
    assert encode_panel(path, 64, "png")[:8] == b"\x89PNG\r\n\x1a\n"  # no view with these settings: encoded now


@pytest.mark.parametrize("damage", ["marker", "empty", "truncated", "png", "oversize"])
def test_a_damaged_view_is_rebuilt_from_its_panel(tmp_path, damage, caplog):
    img, path = _panel(tmp_path)
    spec = ViewSpec(128, "jpeg", 90)
    fresh = encode_view(img, spec)
    view = view_path(path, spec)
    view.write_bytes({"marker": b"marker", "empty": b"", "truncated": fresh[: len(fresh) // 2],
                      "png": encode_view(img, ViewSpec(128, "png", 90)),
                      "oversize": encode_view(img, ViewSpec(256, "jpeg", 90))}[damage])  # fmt: skip
    assert view_damage(view.read_bytes(), spec, view)
    assert encode_panel(path, *spec) == fresh  # never the damaged bytes: the panel's, as the panels stage wrote them
    assert view.read_bytes() == fresh and view_damage(fresh, spec, view) is None  # rewritten: the next read is cheap
    assert view.name in caplog.text and "rebuilt" in caplog.text


def test_a_panel_that_cannot_be_read_names_its_files(tmp_path):
    _, path = _panel(tmp_path)
    spec = ViewSpec(128, "jpeg", 90)
    path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(UnreadableImage, match=r"unreadable image .*g_0\.png") as info:
        encode_panel(path, *spec)  # no view: the panel is read
    assert "upload view" not in str(info.value)
    view_path(path, spec).write_bytes(b"")
    with pytest.raises(UnreadableImage, match=r"g_0\.png.*upload view is damaged: g_0\.vlm128q90\.jpg is not a JPEG"):
        encode_panel(path, *spec)
