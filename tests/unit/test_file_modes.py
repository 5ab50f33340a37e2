"""Files the toolkit writes for the user follow the umask (dsd/io.py's rule), also those written by libraries
(diffusers/transformers ``save_pretrained`` creates 0600 safetensors of its own)."""

from __future__ import annotations

import os

from dsd.tiny import make_tiny_pipeline


def test_tiny_pipeline_files_get_the_umask_mode(tmp_path):
    saved = os.umask(0o022)
    try:
        out = make_tiny_pipeline(tmp_path / "pipe", seed=0, release=True)
    finally:
        os.umask(saved)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "diffusion_pytorch_model.safetensors" for p in files)
    wrong = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in files if p.stat().st_mode & 0o777 != 0o644}
    assert not wrong, f"files not 0644 under umask 022: {wrong}"
    dirs = [p for p in [out, *out.rglob("*")] if p.is_dir()]
    assert all(p.stat().st_mode & 0o777 == 0o755 for p in dirs)
