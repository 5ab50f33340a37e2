"""Panel detection on synthetic grids with known boxes, and the resumable `panels` stage."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from datagen.panels import (
    Box,
    LayoutError,
    PanelCountMismatch,
    PanelDetectionError,
    PanelsConfig,
    analyse_panels,
    cut_panels,
    detect_panels,
    make_pairs,
    parse_layout,
    run_panels,
)
from dsd.manifest import read_records


def textured(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random panel: smooth coloured blobs plus fine texture (like a photo, never flat)."""
    base = rng.integers(0, 256, size=(max(2, h // 16), max(2, w // 16), 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR)).astype(np.int16)
    img = img + rng.integers(-40, 41, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_grid(col_w, row_h, gut_x, gut_y, border=(0, 0, 0, 0), bg=(255, 255, 255), seed=0):
    """A grid image and its true panel boxes (row-major). border = (left, top, right, bottom)."""
    rng = np.random.default_rng(seed)
    left, top, right, bottom = border
    width = left + sum(col_w) + sum(gut_x) + right
    height = top + sum(row_h) + sum(gut_y) + bottom
    img = np.empty((height, width, 3), np.uint8)
    img[:] = bg
    boxes = []
    y = top
    for i, h in enumerate(row_h):
        x = left
        for j, w in enumerate(col_w):
            img[y : y + h, x : x + w] = textured(h, w, rng)
            boxes.append(Box(x, y, x + w, y + h))
            x += w + (gut_x[j] if j < len(gut_x) else 0)
        y += h + (gut_y[i] if i < len(gut_y) else 0)
    return img, boxes


def jpeg(img: np.ndarray, quality: int = 70) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def assert_boxes(got: list[Box], truth: list[Box], min_iou: float = 0.9, max_px: int = 5) -> None:
    assert len(got) == len(truth)
    for g, t in zip(got, truth, strict=True):
        assert g.iou(t) > min_iou, (g, t)
        assert max(abs(a - b) for a, b in zip(g.as_list(), t.as_list(), strict=True)) <= max_px, (g, t)


CASES = {
    "uneven gutters": (([240, 250], [250, 240], [12], [30], (10, 20, 5, 8)), 2, 2),
    "1x2": (([256, 256], [256], [10], []), 1, 2),
    "2x1": (([256], [256, 256], [], [10]), 2, 1),
    "1x3": (([200, 200, 200], [300], [6, 6], []), 1, 3),
    "3x3 black": (([300, 300, 300], [300, 300, 300], [8, 8], [8, 8], (16, 16, 16, 16), (0, 0, 0)), 3, 3),
    "3x3 uneven": (([280, 310, 300], [300, 290, 305], [6, 20], [14, 9], (3, 30, 12, 0)), 3, 3),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_boxes_match_truth(name):
    args, rows, cols = CASES[name]
    img, truth = make_grid(*args, seed=len(name))
    assert_boxes(detect_panels(img, rows, cols), truth, max_px=0)
    # the same grid after JPEG: ringing around the gutters moves edges by a pixel or two at most
    assert_boxes(detect_panels(jpeg(img, 60), rows, cols), truth)


def smooth(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A photo-like panel: smooth colour blobs, no pixel-level texture."""
    base = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC))


def test_touching_panels_are_split_at_colour_edges_with_a_confidence():
    rng = np.random.default_rng(5)
    img = np.concatenate([np.concatenate([smooth(256, 256, rng) for _ in range(2)], 1) for _ in range(2)], 0)
    truth = [Box(x, y, x + 256, y + 256) for y in (0, 256) for x in (0, 256)]
    for variant in (img, jpeg(img)):
        found = analyse_panels(variant, 2, 2)
        assert found.method == "edges" and found.confidence >= 0.4 and "confidence" in found.detail
        assert_boxes(list(found.boxes), truth, max_px=1)


def test_touching_noise_panels_are_cut_at_their_texture_seam_or_rejected_not_guessed():
    """Panels of pixel-level noise that touch: a column seam with no sharp step is cut only where the
    panels' local averages jump (the exact boxes); one noise field labelled 2x2 is never guessed."""
    img, boxes = make_grid([256, 256], [256, 256], [0], [0])
    found = analyse_panels(img, 2, 2)
    assert found.boxes == tuple(boxes) and "texture seam" in found.detail
    field = np.random.default_rng(0).integers(60, 200, size=(512, 512, 3)).astype(np.uint8)
    with pytest.raises(PanelDetectionError):
        detect_panels(field, 2, 2)


def test_an_ambiguous_edge_off_the_even_split_is_rejected_not_guessed():
    """Two touching panels split 56/44 with an object edge across 80 % of the width exactly at the
    even split: the boundary is the stronger edge but not the nearer one, so the cues disagree."""
    img = np.empty((400, 400, 3), np.uint8)
    img[:224], img[224:] = (200, 60, 60), (60, 60, 200)
    img[120:200, 40:360] = (60, 200, 60)  # its bottom edge at y = 200, the even split
    with pytest.raises(PanelDetectionError, match="rejected rather than guessed"):
        detect_panels(img, 2, 1)
    img[120:200, 40:360] = (200, 60, 60)  # without the object the boundary is clear, but the teacher
    with pytest.raises(PanelDetectionError):  # draws equal panels: a 56/44 split is no grid of it
        detect_panels(img, 2, 1)
    img[:200], img[200:] = (200, 60, 60), (60, 60, 200)  # an even split with a clear edge is cut
    assert_boxes(detect_panels(img, 2, 1), [Box(0, 0, 400, 200), Box(0, 200, 400, 400)], max_px=1)


def test_no_edge_even_splits_only_when_asked():
    img, truth = make_grid([256, 256], [256, 256], [0], [0])
    found = analyse_panels(img, 2, 2, PanelsConfig(no_edge="even"))
    assert_boxes(list(found.boxes), truth, max_px=0)
    assert found.confidence == 0.0 and "even split (panels.no_edge = even)" in found.detail


def test_touching_panels_inside_a_border_are_trimmed_then_split_at_edges():
    rng = np.random.default_rng(2)
    img = np.full((234, 636, 3), 30, np.uint8)
    img[9:209, 14:614] = np.concatenate([smooth(200, 200, rng) for _ in range(3)], 1)
    truth = [Box(14 + 200 * i, 9, 214 + 200 * i, 209) for i in range(3)]
    assert_boxes(detect_panels(img, 1, 3), truth, max_px=1)


def test_gradient_and_jpeg_noisy_border():
    img, truth = make_grid([256, 256], [256, 256], [12], [12], border=(24, 24, 24, 24))
    h, w = img.shape[:2]
    grad = np.broadcast_to(np.linspace(0, 200, h).astype(np.uint8)[:, None, None], (h, w, 3))
    img[:24], img[h - 24 :] = grad[:24], grad[h - 24 :]  # gradient border rows; the sides stay white
    img[24 : h - 24, 24 + 256 : 24 + 268] = 128  # grey vertical gutter, gradient horizontal one
    img[24 + 256 : 24 + 268, 24 : w - 24] = grad[24 + 256 : 24 + 268, 24 : w - 24]
    assert_boxes(detect_panels(img, 2, 2), truth, max_px=0)
    assert_boxes(detect_panels(jpeg(img, 60), 2, 2), truth)


def test_staggered_row_gutters_use_columns_first():
    img, truth = make_grid([250, 250], [250, 250], [10], [10], border=(8, 8, 8, 8))
    # shift the right column's horizontal gutter down by 20 px
    rng = np.random.default_rng(3)
    x0, x1 = truth[1].x0, truth[1].x1
    img[8 : 8 + 510, x0:x1] = 255
    img[8 : 8 + 270, x0:x1] = textured(270, x1 - x0, rng)
    img[8 + 280 : 8 + 510, x0:x1] = textured(230, x1 - x0, rng)
    want = [truth[0], Box(x0, 8, x1, 8 + 270), truth[2], Box(x0, 8 + 280, x1, 8 + 510)]
    assert_boxes(detect_panels(img, 2, 2), want, max_px=0)


def test_three_visible_panels_for_a_2x2_prompt_are_rejected():
    img, truth = make_grid([250, 250], [250, 250], [10], [10], border=(8, 8, 8, 8))
    img[truth[2].y0 : truth[2].y1, truth[2].x0 : truth[3].x1] = textured(250, 510, np.random.default_rng(9))
    for variant in (img, np.ascontiguousarray(img.transpose(1, 0, 2))):
        with pytest.raises(PanelCountMismatch) as info:
            detect_panels(variant, 2, 2)
        assert (info.value.expected, info.value.found) == (4, 3)
        assert "2x2 = 4 panels" in str(info.value) and "shows 3" in str(info.value)


def test_wrong_layouts_are_rejected_with_counts():
    img, _ = make_grid([200, 200, 200], [300], [6, 6], [])
    with pytest.raises(PanelCountMismatch) as info:
        detect_panels(img, 2, 2)
    assert info.value.found == 3
    img, _ = make_grid([256, 256], [256, 256], [10], [10])
    with pytest.raises(PanelCountMismatch) as info:
        detect_panels(img, 1, 2)
    assert (info.value.expected, info.value.found) == (2, 4)


def test_unequal_panels_and_blank_images_are_rejected():
    img, _ = make_grid([380, 120], [256], [10], [])
    with pytest.raises(PanelDetectionError, match="off the even split"):
        detect_panels(img, 1, 2)
    with pytest.raises(PanelDetectionError, match="blank"):
        detect_panels(np.full((256, 256, 3), 200, np.uint8), 2, 2)
    with pytest.raises(PanelDetectionError, match="too small"):
        detect_panels(textured(100, 100, np.random.default_rng(0)), 2, 2)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(1, 3),
    cols=st.integers(1, 3),
    gutter=st.one_of(st.just(0), st.integers(2, 24)),
    extra_gutter=st.integers(0, 10),
    border=st.tuples(*[st.integers(0, 16)] * 4),  # <= 20 % of the side: wider is content by design
    grey=st.integers(0, 255),
    seed=st.integers(0, 2**16),
)
def test_property_detected_boxes_match_truth(rows, cols, gutter, extra_gutter, border, grey, seed):
    if rows * cols < 2:
        return
    cfg = PanelsConfig(min_panel_size=32)
    rng = np.random.default_rng(seed)
    # touching panels (gutter 0) can only be recovered when they are equal; with gutters they may differ
    sizes = (lambda n: [96] * n) if gutter == 0 else (lambda n: [int(v) for v in rng.integers(88, 104, n)])
    gx = [gutter + (extra_gutter if i % 2 else 0) if gutter else 0 for i in range(cols - 1)]
    gy = [gutter + (extra_gutter if i % 2 == 0 else 0) if gutter else 0 for i in range(rows - 1)]
    img, truth = make_grid(sizes(cols), sizes(rows), gx, gy, border=border, bg=(grey,) * 3, seed=seed)
    if gutter == 0:  # touching noise panels: a correct cut or a rejection, never a wrong cut
        try:
            got = detect_panels(img, rows, cols, cfg)
        except PanelDetectionError:
            return
        assert_boxes(got, truth, max_px=2)
        return
    assert_boxes(detect_panels(img, rows, cols, cfg), truth, max_px=2)


def test_make_pairs_is_ordered_capped_and_deterministic():
    all_pairs = make_pairs(4, 100, 0)
    assert len(all_pairs) == 12 and all(a != b for a, b in all_pairs) and len(set(all_pairs)) == 12
    capped = make_pairs(4, 6, 7)
    assert len(capped) == 6 and set(capped) <= set(all_pairs)
    assert capped == make_pairs(4, 6, 7)
    assert len({tuple(make_pairs(9, 6, s)) for s in range(5)}) > 1
    assert make_pairs(2, 0, 0) == []


def test_cut_panels_crops_the_boxes():
    img, truth = make_grid([100, 100], [100], [8], [])
    panels = cut_panels(img, truth)
    assert [p.size for p in panels] == [(100, 100), (100, 100)]
    assert np.array_equal(np.asarray(panels[1]), img[0:100, 108:208])


def test_parse_layout():
    assert parse_layout({"layout": "2x3"}) == (2, 3)
    assert parse_layout({"rows": 1, "cols": 2, "layout": "ignored"}) == (1, 2)
    for bad in ({"layout": "four panels"}, {"rows": 0, "cols": 2}, {"layout": "1x1"}, {"rows": "2", "cols": 2}):
        with pytest.raises(LayoutError, match="unknown layout"):
            parse_layout(bad, where="prompts.jsonl")


def _write_grids(tmp: Path, grids: list[tuple[str, np.ndarray | bytes, int, int]]) -> Path:
    lines = []
    for gid, content, rows, cols in grids:
        path = tmp / "grids" / f"{gid}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            Image.fromarray(content).save(path)
        lines.append({"id": gid, "prompt_id": "p", "seed": 1, "width": 0, "height": 0, "rows": rows, "cols": cols,
                      "path": str(path), "backend": "test"})  # fmt: skip
    grids_path = tmp / "grids.jsonl"
    grids_path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return grids_path


def test_run_panels_cuts_pairs_rejects_and_resumes(tmp_path):
    good, _ = make_grid([128, 128], [128, 128], [8], [8], border=(4, 4, 4, 4))
    three, truth3 = make_grid([128, 128], [128, 128], [8], [8])
    three[truth3[2].y0 : truth3[2].y1, 0:264] = textured(128, 264, np.random.default_rng(1))
    grids_path = _write_grids(
        tmp_path / "teacher",
        [("g1", good, 2, 2), ("g2", b"\x89PNG\r\n\x1a\nthis is not an image", 2, 2), ("g3", three, 2, 2)],
    )
    out = tmp_path / "panels"
    cfg = PanelsConfig(max_pairs_per_grid=5, min_panel_size=32, seed=3)
    summary = run_panels(cfg, grids_path, out, progress=False)
    assert (summary.items_in, summary.items_out, summary.rejected) == (3, 1, 2)
    recs = {r["id"]: r for r in read_records(out / "panels.jsonl")}
    assert recs["g1"]["status"] == "ok" and len(recs["g1"]["panel_paths"]) == 4
    assert recs["g1"]["boxes"][0] == [4, 4, 132, 132]
    assert recs["g2"]["status"] == "rejected" and "unreadable image" in recs["g2"]["reason"]
    assert recs["g3"]["status"] == "rejected" and "mismatch" in recs["g3"]["reason"]
    pairs = read_records(out / "pairs.jsonl")
    assert len(pairs) == 5 and {p["grid_id"] for p in pairs} == {"g1"}
    assert all(Path(p["ref_path"]).is_file() and p["ref_index"] != p["target_index"] for p in pairs)
    with Image.open(pairs[0]["target_path"]) as im:
        assert im.size == (128, 128)
    # rerun: nothing redone, same files
    again = run_panels(cfg, grids_path, out, progress=False)
    assert (again.skipped_done, again.items_out, again.rejected) == (3, 0, 0)
    assert len(read_records(out / "pairs.jsonl")) == 5
    assert not list((out / "panels").glob(".*.tmp"))


def test_run_panels_unknown_layout_is_a_clear_error(tmp_path):
    good, _ = make_grid([128, 128], [128], [8], [])
    grids_path = _write_grids(tmp_path, [("g1", good, 1, 2)])
    record = json.loads(grids_path.read_text())
    record.pop("rows"), record.pop("cols")
    record["layout"] = "a few panels"
    grids_path.write_text(json.dumps(record) + "\n")
    with pytest.raises(LayoutError, match=r"grids\.jsonl.*'g1'.*unknown layout"):
        run_panels(PanelsConfig(), grids_path, tmp_path / "out", progress=False)
