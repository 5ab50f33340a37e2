"""CLI smoke: `python -m dsd make-tiny | convert | generate` as real subprocesses from the repo root."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _dsd(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dsd", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"dsd {args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def cli_tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    proc = _dsd("make-tiny", root / "tiny", "--seed", "0")
    assert "DSD release" in proc.stdout
    return root


def test_convert_cli(cli_tiny):
    rel = cli_tiny / "tiny" / "dsd_release"
    out = cli_tiny / "adapter.safetensors"
    proc = _dsd("convert", "--transformer", rel / "transformer", "--lora", rel / "pytorch_lora_weights.safetensors",
                "--out", out, "--base", cli_tiny / "tiny" / "flux_bfl.safetensors", "--report", cli_tiny / "report.json",
                "--svd-rank", "4", "--no-progress")  # fmt: skip
    assert out.is_file()
    assert "IDENTICAL" in proc.stdout and "DSD adapter written" in proc.stdout
    assert json.loads((cli_tiny / "report.json").read_text())["identical"] is True
    assert not (cli_tiny / "adapter.base_delta_lora.safetensors").exists()  # nothing to extract


def test_convert_cli_errors_name_the_file(cli_tiny, tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00\x01\x02")
    rel = cli_tiny / "tiny" / "dsd_release"
    proc = _dsd("convert", "--transformer", rel / "transformer", "--lora", bad, "--out", tmp_path / "a.safetensors", check=False)
    assert proc.returncode == 2
    assert "broken.safetensors" in proc.stderr and "Traceback" not in proc.stderr
    proc = _dsd("convert", "--transformer", tmp_path, "--out", tmp_path / "a.safetensors", check=False)
    assert proc.returncode == 2 and "config.json" in proc.stderr


def test_generate_cli_release_and_adapter_agree(cli_tiny, tmp_path):
    tiny = cli_tiny / "tiny"
    adapter = cli_tiny / "adapter_for_generate.safetensors"
    _dsd("convert", "--transformer", tiny / "dsd_release" / "transformer", "--out", adapter, "--no-progress")
    ref = tmp_path / "ref.png"
    Image.new("RGB", (96, 80), (200, 40, 40)).save(ref)
    common = ["--flux", tiny / "flux", "--ref", ref, "--prompt", "a cat", "--steps", "2", "--width", "128", "--height", "64",
              "--seed", "3", "--device", "cpu", "--dtype", "float32"]  # fmt: skip
    _dsd("generate", *common, "--release", tiny / "dsd_release", "--out", tmp_path / "a", "--keep-canvas")
    _dsd("generate", *common, "--adapter", adapter, "--out", tmp_path / "b")
    img_a = Image.open(tmp_path / "a" / "frame_two_seed3.png")
    img_b = Image.open(tmp_path / "b" / "frame_two_seed3.png")
    assert img_a.size == (64, 64)
    assert img_a.tobytes() == img_b.tobytes()
    assert (tmp_path / "a" / "canvas_seed3.png").is_file()
