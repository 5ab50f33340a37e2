"""The real CLI in subprocesses: a 2-step run, kill -9 during a save, clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from training_fixtures import REPO, TINY_TOML, tiny_overrides

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=REPO, env=env or ENV, capture_output=True,
                          text=True, timeout=300, **kw)  # fmt: skip


def _sets(overrides: list[str]) -> list[str]:
    out = []
    for o in overrides:
        out += ["--set", o]
    return out


@pytest.mark.slow
def test_two_step_cli_run_writes_adapter(tiny_flux, wds_dataset, tmp_path):
    sets = _sets(tiny_overrides(tiny_flux, wds_dataset, tmp_path, "training.steps=2", "saving.save_every=1"))
    r = cli("cache", "--config", str(TINY_TOML), "--no-progress", *sets)
    assert r.returncode == 0, r.stderr
    assert "samples written" in r.stdout
    r = cli("train", "--config", str(TINY_TOML), "--no-progress", *sets)
    assert r.returncode == 0, r.stderr
    assert "steps" in r.stdout and "0 -> 2" in r.stdout
    adapter = tmp_path / "out" / "dsd_adapter.safetensors"
    from safetensors import safe_open

    with safe_open(str(adapter), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert {"c_embedder.weight", "c_embedder.bias"} <= keys
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in keys
    assert "transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight" in keys
    assert "transformer.transformer_blocks.0.attn.to_q.alpha" in keys
    lora_modules = {k.split(".lora_")[0] for k in keys if ".lora_" in k}
    assert len(lora_modules) == 8 + 4 + 5  # 12 double-block + 5 single-block linears
    assert meta["dsd_format"] == "dsd-adapter" and meta["dsd_rank"] == "4" and meta["dsd_train_steps"] == "2"
    assert "api_key" not in meta["dsd_train_config"]
    assert [p.name for p in sorted((tmp_path / "out" / "checkpoints").iterdir())] == ["step-000001", "step-000002"]
    assert list((tmp_path / "out" / "logs").glob("events.out.tfevents.*"))
    # export subcommand from the latest checkpoint gives the same tensors
    r = cli("export", "--config", str(TINY_TOML), "--out", str(tmp_path / "exp.safetensors"), *sets)
    assert r.returncode == 0, r.stderr
    from safetensors.torch import load_file

    a, b = load_file(str(adapter)), load_file(str(tmp_path / "exp.safetensors"))
    assert set(a) == set(b) and all((a[k] == b[k]).all() for k in a)
    assert "live" in r.stdout  # no EMA in this run: the live weights (an EMA run's export: test_validation_metrics.py)
    r = cli("export", "--config", str(TINY_TOML), "--out", str(tmp_path / "ema.safetensors"), "--ema", *sets)
    assert r.returncode != 0 and "EMA exists only with training.ema_decay > 0" in r.stderr, r.stderr
    assert not (tmp_path / "ema.safetensors").exists()
    # ComfyUI loading and sampling with it: tests/comfyui/test_training_export.py


@pytest.mark.slow
def test_kill_during_checkpoint_save_leaves_previous_loadable(tiny_flux, wds_dataset, tiny_cache, tmp_path):
    from training.checkpoint import latest_checkpoint, list_checkpoints, load_trainable, read_state
    from training.config import load_config
    from training.model import build_model, trainable_parameters

    overrides = tiny_overrides(tiny_flux, wds_dataset, tmp_path, "training.steps=4", "saving.save_every=2",
                               f"dataset.cache_dir='{tiny_cache}'", "logging.tensorboard=false")  # fmt: skip
    sets = _sets(overrides)
    runner = REPO / "tests" / "training" / "slow_save_train.py"  # the step-4 save sleeps inside its temporary folder
    proc = subprocess.Popen([sys.executable, str(runner), "4", "120", "train", "--config", str(TINY_TOML), "--no-progress",
                             *sets], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    ckpts = tmp_path / "out" / "checkpoints"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not list(ckpts.glob(".step-000004.*.tmp")):
            time.sleep(0.1)
        assert list(ckpts.glob(".step-000004.*.tmp")), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timeout"
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert [s for s, _ in list_checkpoints(tmp_path / "out")] == [2]
    # the previous checkpoint loads
    cfg = load_config(TINY_TOML, overrides)
    model = build_model(cfg.model, cfg.network)
    load_trainable(ckpts / "step-000002", trainable_parameters(model))
    assert read_state(ckpts / "step-000002")["step"] == 2
    # and the run resumes from it to the end; the torn temporary folder is cleaned up
    r = cli("train", "--config", str(TINY_TOML), "--no-progress", *sets)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "step-000002" in r.stdout and "2 -> 4" in r.stdout
    assert latest_checkpoint(tmp_path / "out").name == "step-000004"
    assert not list(ckpts.glob(".*.tmp"))


def test_cli_bad_config_errors(tmp_path, wds_dataset):
    bad = tmp_path / "bad.toml"
    bad.write_text("[network]\nrank = 4\nranc = 3\n")
    r = cli("estimate", "--config", str(bad))
    assert r.returncode == 2 and "unknown key(s) ranc" in r.stderr and "Traceback" not in r.stderr
    r = cli("estimate", "--config", str(TINY_TOML), "--set", "training.steps='x'")
    assert r.returncode == 2 and "training.steps: expected an integer" in r.stderr
    r = cli("cache", "--config", str(TINY_TOML), "--set", f"dataset.paths=['{tmp_path / 'missing'}']",
            "--set", f"dataset.cache_dir='{tmp_path / 'c'}'")  # fmt: skip
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = cli("train", "--config", str(TINY_TOML), "--set", f"dataset.cache_dir='{tmp_path / 'nocache'}'",
            "--set", f"saving.output_dir='{tmp_path / 'o'}'")  # fmt: skip
    assert r.returncode == 2 and "no finished cache" in r.stderr


def test_cli_estimate_writes_markdown(tmp_path):
    import shutil

    cfg = tmp_path / "paper.toml"
    shutil.copy(REPO / "training" / "configs" / "paper_8xh100.toml", cfg)
    r = cli("estimate", "--config", str(cfg), "--write")
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "paper.estimate.md").read_text()
    assert "hidden 3072, 19 double + 38 single blocks" in md and "per GPU, DDP" in md and "s per optimizer step" in md
