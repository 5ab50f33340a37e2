from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from datagen.cli import main
from datagen.config import DatagenConfig, load_config
from tests.support.llm_server import FakeLLMServer
from tests.support.tree import count_files, files_containing, wait_until

REPO = Path(__file__).resolve().parents[2]
SENTINEL = "sk-SENTINEL-test-key-0123456789abcdef"


def run_cli(args: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "datagen", *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def dataset_state(w: Path) -> tuple[list[dict], dict[str, bytes]]:
    index = pq.read_table(w / "dataset" / "index.parquet").to_pylist()
    shards = {p.name: p.read_bytes() for p in sorted((w / "dataset").glob("shard-*.tar"))}
    return index, shards


def test_config_errors_and_overrides(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[captions]\nsources = ['x.txt']\ncolumn_name = 'TEXT'\n")
    assert main(["captions", "--config", str(cfg), "--workdir", str(tmp_path / "w"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "c.toml" in err and "column_name" in err and "known keys" in err
    cfg.write_text("[captions]\nsources = ['missing.txt']\n")
    assert main(["captions", "--config", str(cfg), "--workdir", str(tmp_path / "w"), "--no-progress"]) == 2
    assert "missing.txt does not exist" in capsys.readouterr().err
    c = load_config(None, ["prompts.seed=5", "curate.min_confidence=0.9", "vlm.kind=gemini", "vlm.model=gemini-x"])
    assert isinstance(c, DatagenConfig) and c.prompts.seed == 5 and c.curate.min_confidence == 0.9
    assert c.vlm is not None and c.vlm.kind == "gemini"
    with pytest.raises(ValueError, match="unknown key"):
        load_config(None, ["prompts.nope=1"])


def test_captions_and_prompts_subcommands(tmp_path: Path, capsys) -> None:
    src = tmp_path / "c.jsonl"
    src.write_text('{"caption": "A ceramic teapot with blue flowers on a table"}\n'
                   '{"caption": "An orange tabby cat sleeping on a windowsill"}\n')
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[captions]\nsources = ['{src.name}']\n")
    w = tmp_path / "w"
    assert main(["captions", "--config", str(cfg), "--workdir", str(w), "--no-progress"]) == 0
    assert main(["prompts", "--config", str(cfg), "--workdir", str(w), "--no-progress",
                 "--set", "prompts.layouts=['1x3']"]) == 0
    out = capsys.readouterr().out
    assert "== datagen stage: captions ==" in out and "== datagen stage: prompts ==" in out
    assert (w / "prompts" / "summary.json").is_file() and (w / "config.resolved.json").is_file()


@pytest.mark.slow
def test_toy_run_and_kill_resume_equals_uninterrupted(tmp_path: Path) -> None:
    """SIGKILL the real CLI at random points of progress (every stage writes files), then finish:
    the dataset equals an uninterrupted run's byte for byte."""
    ref = tmp_path / "ref"
    extra = ["--set", "dataset.shard_size=2"]
    done = run_cli(["run", "--toy", "--workdir", str(ref), "--no-progress", *extra])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TOY RUN" in done.stdout and "== datagen stage: dataset ==" in done.stdout
    ref_index, ref_shards = dataset_state(ref)
    assert len(ref_index) > 0 and len({r["key"] for r in ref_index}) == len(ref_index)
    total_files = count_files(ref)

    w = tmp_path / "killed"
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    kills = 0
    for _ in range(4):
        # Kill once the run has produced a random share of its files: the kill lands mid-run
        # whatever the machine's speed, in whichever stage that share falls.
        have = count_files(w)
        if have >= total_files - 2:
            break
        target = have + rng.randint(1, max(1, (total_files - 2 - have) // 2))  # room is left for the next kill
        proc = subprocess.Popen([sys.executable, "-m", "datagen", "run", "--toy", "--workdir", str(w), "--no-progress",
                                 *extra], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # The child renames .tmp folders while we count: count_files takes vanished entries as gone.
        wait_until(lambda n=target: count_files(w) >= n, process=proc, what=f"the toy run reaching {target} files")
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3
    final = run_cli(["run", "--toy", "--workdir", str(w), "--no-progress", *extra])
    assert final.returncode == 0, final.stderr[-3000:]
    index, shards = dataset_state(w)
    assert [r["key"] for r in index] == [r["key"] for r in ref_index]
    assert index == ref_index
    assert shards == ref_shards


@pytest.mark.slow
def test_api_key_never_lands_in_files_or_logs(tmp_path: Path, dg) -> None:
    w = tmp_path / "w"
    with FakeLLMServer(responder=dg.smart_responder(), api_key=SENTINEL) as srv:
        sets = []
        for section in ("llm", "vlm"):
            sets += ["--set", f"{section}.kind=openai", "--set", f"{section}.model=test-model",
                     "--set", f"{section}.base_url={srv.openai_base_url}", "--set", f"{section}.api_key_env=OPENAI_API_KEY",
                     "--set", f"{section}.backoff_base_s=0.01"]
        sets += ["--set", "prompts.mode=llm", "--set", "captions.llm_filter=true", "--set", "prompts.layouts=['2x2']"]
        res = run_cli(["run", "--toy", "--workdir", str(w), "-v", *sets], env={"OPENAI_API_KEY": SENTINEL})
        assert res.returncode == 0, res.stderr[-3000:]
        assert any(r.system and "curate" in r.system for r in srv.requests)
        assert srv.requests[-1].headers.get("Authorization", "").endswith(SENTINEL)
    assert list((w / "panels" / "panels").glob("*.vlm512q90.jpg"))  # views written for curation
    verdicts = (w / "curate" / "verdicts.jsonl").read_text()
    assert '"verdict": "vlm"' in verdicts
    assert SENTINEL not in res.stdout and SENTINEL not in res.stderr
    assert files_containing(w, SENTINEL.encode()) == []
