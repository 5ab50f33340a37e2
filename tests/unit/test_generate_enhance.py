"""`dsd generate --enhance`: the authors' prompt enhancement in the standalone sampler, through the
real openai client against a local OpenAI-protocol server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.support.llm_server import FakeLLMServer

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _generate(tiny, ref: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    args = ["--flux", tiny.flux_dir, "--release", tiny.release_dir, "--ref", ref, "--prompt", "the toy on a beach",
            "--out", out, "--steps", "1", "--width", "64", "--height", "32", "--device", "cpu", "--dtype", "float32", *extra]  # fmt: skip
    return subprocess.run([sys.executable, "-m", "dsd", "generate", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})  # fmt: skip


def test_enhanced_prompt_is_used_and_recorded(tiny_files, tmp_path):
    ref = tmp_path / "ref.png"
    Image.new("RGB", (64, 64), (30, 160, 90)).save(ref)
    answers = iter(["A green plush toy, front view, soft light", "The green plush toy on a sunny beach, soft light"])
    with FakeLLMServer(responder=lambda req: next(answers)) as srv:
        proc = _generate(tiny_files, ref, tmp_path / "out", "--enhance", "openai", "--enhance-model", "m",
                         "--enhance-base-url", srv.openai_base_url, env={"OPENAI_API_KEY": "sk-test-secret"})  # fmt: skip
        requests = list(srv.requests)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(requests) == 2 and len(requests[0].images) == 1  # caption the reference, then merge
    assert "the toy on a beach" in requests[1].prompt
    settings = json.loads((tmp_path / "out" / "settings_seed0.json").read_text())
    assert settings["prompt_used"] == "The green plush toy on a sunny beach, soft light"
    assert "enhanced prompt: The green plush toy" in proc.stdout
    assert "sk-test-secret" not in json.dumps(settings) + proc.stdout + proc.stderr


def test_enhancement_offline_is_a_clear_error(tiny_files, tmp_path):
    ref = tmp_path / "ref.png"
    Image.new("RGB", (64, 64), (30, 160, 90)).save(ref)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _generate(tiny_files, ref, tmp_path / "out", "--enhance", "openai", "--enhance-base-url",
                     f"http://127.0.0.1:{port}/v1")  # fmt: skip
    assert proc.returncode == 1  # a provider failure, not bad input (dsd.cli: 2 = input/config, 1 = failure)
    assert "prompt enhancement failed" in proc.stderr and "without --enhance" in proc.stderr
    assert "Traceback" not in proc.stderr
