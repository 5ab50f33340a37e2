"""The shipped workflows' LoadImage files reach ComfyUI's input folder: copied at load when absent, never replaced."""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "example_inputs").glob("*.png"))
VIEWS = ["dsd_reference_back.png", "dsd_reference_side.png"]  # dsd_multi_reference's other pictures of the robot


def test_the_pack_entry_copied_them_when_comfyui_loaded_it(comfy_host):
    assert {p.name for p in SHIPPED} == {"dsd_reference.png", "dsd_depth_hint.png", *VIEWS}
    for example in SHIPPED:
        assert (comfy_host.root / "input" / example.name).is_file(), f"{example.name} is not in ComfyUI's input folder"


def test_copies_missing_files_only_and_never_replaces_a_users_file(comfy_host, tmp_path, caplog):
    install = importlib.import_module(f"{comfy_host.pack.__name__}.nodes.example_inputs").install
    target = tmp_path / "input"
    target.mkdir()
    (target / "dsd_depth_hint.png").write_bytes(b"the user's own picture")
    saved = os.umask(0o022)
    try:
        with caplog.at_level(logging.INFO):
            copied = install(target)
    finally:
        os.umask(saved)
    assert [p.name for p in copied] == ["dsd_reference.png", *VIEWS]
    assert (target / "dsd_reference.png").read_bytes() == (REPO / "example_inputs" / "dsd_reference.png").read_bytes()
    assert (target / "dsd_reference.png").stat().st_mode & 0o777 == 0o644
    assert (target / "dsd_depth_hint.png").read_bytes() == b"the user's own picture"
    assert any("copied the example input dsd_reference.png" in r.getMessage() for r in caplog.records)
    assert install(target) == [] and sorted(p.name for p in target.iterdir()) == ["dsd_depth_hint.png", "dsd_reference.png",
                                                                                 *VIEWS]
