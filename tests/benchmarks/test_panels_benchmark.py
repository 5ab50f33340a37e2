"""benchmarks.datagen_panels --real --photos: the real-picture panel benchmark built from a folder of the
user's own pictures (a held-out check of the detector), run at its smallest size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.datagen.real_grids import photos, use_photos

REPO = Path(__file__).resolve().parents[2]


def test_real_grids_from_a_folder_of_pictures(tmp_path) -> None:
    folder = tmp_path / "pictures"
    folder.mkdir()
    own = photos()
    for name in ("chelsea.png", "coffee.png", "moon.png"):
        Image.fromarray(np.ascontiguousarray(own[name][::-1])).save(folder / name.replace(".png", ".jpg"))
    (folder / "notes.txt").write_text("not a picture")
    try:
        use_photos(folder)
        assert sorted(photos()) == ["chelsea.jpg", "coffee.jpg", "moon.jpg"]
    finally:
        use_photos(None)
    assert "astronaut.png" in photos()
    out = subprocess.run([sys.executable, "-m", "benchmarks.datagen_panels", "--real", "--per-kind", "1", "--sizes", "512",
                          "--photos", str(folder)], cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"the pictures in {folder}" in out.stdout and "| mismatch | 0 / 1 / 0 |" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "benchmarks.datagen_panels", "--real", "--photos", str(tmp_path / "none")],
                         cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert bad.returncode == 2 and "not a folder" in bad.stderr
