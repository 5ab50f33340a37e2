"""``python -m dsd eval`` sampling with the standalone pipeline on tiny fixtures: checkpoints, two processes,
``kill -9`` and resume of the real CLI (same final table), and the API key in no output."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dsd.eval.run import EvalConfig, run_eval
from dsd.eval.sampling import ModelSpec, SampleSettings, read_samples
from dsd.tiny import make_tiny
from tests.eval.eval_bench import judge_responder, make_bench, write_adapter
from tests.eval_fixtures import write_tiny_clip
from tests.support.llm_server import FakeLLMServer
from tests.support.tree import count_files, files_containing, wait_until

REPO = Path(__file__).resolve().parents[2]
SENTINEL = "sk-SENTINEL-eval-key-0123456789abcdef"
SAMPLING = ["--steps", "2", "--width", "128", "--height", "64", "--seeds", "0", "1", "--no-progress"]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    tiny = make_tiny(root / "tiny")
    return {"root": root, "tiny": tiny, "bench": make_bench(root / "bench"), "clip": write_tiny_clip(root / "clip")}


def _table(out: Path) -> pd.DataFrame:
    table = pd.read_parquet(out / "report" / "scores.parquet")
    table["path"] = [Path(p).relative_to(out.resolve()).as_posix() for p in table.path]
    return table


def test_checkpoints_are_systems_with_steps_and_frame_one_error(world, tmp_path):
    adapters = [write_adapter(tmp_path / f"step_{s:06d}.safetensors", seed=s) for s in (100, 200)]
    models = [ModelSpec(a.stem, world["tiny"].flux_dir, adapter=a, step=s) for a, s in zip(adapters, (100, 200), strict=True)]
    models.append(ModelSpec("release", world["tiny"].flux_dir, release=world["tiny"].release_dir))
    cfg = EvalConfig(bench=world["bench"], out=tmp_path / "out", models=models, max_prompts=2, clip=world["clip"],
                     sampling=SampleSettings(seeds=(0,), steps=2, width=128, height=64), progress=False)  # fmt: skip
    summary = run_eval(cfg)
    table = summary.table
    assert summary.sampled == 3 * 2 * 2 and len(table) == 12
    steps = table.groupby("system").step.first()
    assert steps["step_000100"] == 100 and steps["step_000200"] == 200 and pd.isna(steps["release"])
    assert table.recon_mse.between(0, 1).all() and table.clip_i.notna().all()
    # different weights draw different pictures from the same seed
    first = {s: (tmp_path / "out" / "samples" / s / "s0" / "p00_s0.png").read_bytes() for s in set(table.system)}
    assert len(set(first.values())) == 3
    view = Image.open(tmp_path / "out" / "judge_views" / "release" / "s0" / "p00_s0.jpg")  # what the judge uploads
    assert view.format == "JPEG" and view.size == (64, 64)
    assert (tmp_path / "out" / "report" / "plots" / "checkpoints.png").stat().st_size > 1000
    assert run_eval(cfg).sampled == 0  # a rerun draws nothing


@pytest.mark.slow
def test_two_processes_share_the_sampling_and_draw_what_one_draws(world, tmp_path):
    tiny = world["tiny"]
    args = ["--bench", str(world["bench"]), "--flux", str(tiny.flux_dir), "--release", f"dsd={tiny.release_dir}", *SAMPLING]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dsd", "eval",
           "--out", str(tmp_path / "two"), *args]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("== dsd eval: 12 images") == 1  # scored and reported by the main process only
    logs = sorted((tmp_path / "two" / "samples" / "dsd").glob("samples.rank*.jsonl"))
    assert [p.name for p in logs] == ["samples.rank0.jsonl", "samples.rank1.jsonl"]
    from dsd.manifest import read_records

    shares = [{r["id"] for r in read_records(p)} for p in logs]
    assert shares[0] and shares[1] and not shares[0] & shares[1] and len(shares[0] | shares[1]) == 12
    one = subprocess.run([sys.executable, "-m", "dsd", "eval", "--out", str(tmp_path / "one"), *args], cwd=REPO, env=ENV,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    # the same pictures up to CPU float rounding (a rare pixel one level apart)
    for rec in read_samples(tmp_path / "one", "dsd"):
        a, b = (np.asarray(Image.open(tmp_path / run / rec["path"]), dtype=np.int16) for run in ("one", "two"))
        assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01
    pd.testing.assert_frame_equal(_table(tmp_path / "two"), _table(tmp_path / "one"), rtol=1e-3)


@pytest.mark.slow
def test_kill_9_and_rerun_give_the_same_table_and_the_key_is_nowhere(world, tmp_path):
    tiny = world["tiny"]
    with FakeLLMServer(responder=judge_responder, api_key=SENTINEL, latency_s=0.05) as srv:
        args = ["eval", "--bench", str(world["bench"]), "--flux", str(tiny.flux_dir), "--release", f"dsd={tiny.release_dir}",
                "--clip", str(world["clip"]), "--judge", "openai", "--judge-model", "judge-model", "--judge-base-url",
                srv.openai_base_url, "--judge-repeats", "2", "--judge-concurrency", "2", *SAMPLING]  # fmt: skip
        # the judge's base_url is not api.openai.com: OPENAI_API_KEY goes there only when registered
        env = {**ENV, "OPENAI_API_KEY": SENTINEL, "DSD_ENDPOINT_KEYS": f"{srv.openai_base_url}=OPENAI_API_KEY"}
        ref = subprocess.run([sys.executable, "-m", "dsd", *args, "--out", str(tmp_path / "ref")], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert ref.returncode == 0, ref.stderr[-3000:]
        total = count_files(tmp_path / "ref")
        out, rng, kills = tmp_path / "killed", random.Random(7), 0
        for _ in range(3):
            have = count_files(out)
            if have >= total - 3:
                break
            target = have + rng.randint(1, max(1, (total - 3 - have) // 2))  # room is left for the next kill
            proc = subprocess.Popen([sys.executable, "-m", "dsd", *args, "--out", str(out)], cwd=REPO, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            # the run renames .tmp folders while it is counted: count_files takes vanished entries as gone
            wait_until(lambda n=target: count_files(out) >= n, process=proc, what=f"the eval reaching {target} files")
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
        final = subprocess.run([sys.executable, "-m", "dsd", *args, "--out", str(out)], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=300)  # fmt: skip
    assert kills == 3
    assert final.returncode == 0, final.stderr[-3000:]
    assert "judge:" in final.stdout and "report:" in final.stdout
    pd.testing.assert_frame_equal(_table(out), _table(tmp_path / "ref"))
    assert _table(out)[["clip_i", "cp", "pf", "recon_mse"]].notna().all().all()
    for run in (ref, final):
        assert SENTINEL not in run.stdout + run.stderr
    assert files_containing([out, tmp_path / "ref"], SENTINEL.encode()) == []
