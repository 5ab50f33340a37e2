"""Shared machinery: atomic writes, typed configs, crash-safe record logs."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import pytest
import torch

from dsd.config import ConfigError, apply_overrides, from_dict, load_toml, to_dict
from dsd.io import atomic_directory, atomic_save_safetensors, atomic_write_json, clean_stale_temporaries
from dsd.manifest import RecordLog, read_records


@dataclasses.dataclass(frozen=True)
class Inner:
    rank: int = 4
    lr: float = 1e-4
    mode: Literal["a", "b"] = "a"


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = dataclasses.field(default_factory=Inner)
    tags: tuple[str, ...] = ()
    path: Path | None = None


def test_config_round_trip_and_types():
    cfg = from_dict(Outer, {"name": "run", "inner": {"rank": 8, "lr": 1}, "tags": ["a", "b"], "path": "/x"})
    assert cfg.inner.rank == 8 and cfg.inner.lr == 1.0 and cfg.tags == ("a", "b") and cfg.path == Path("/x")
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, message",
    [
        ({"nmae": "x"}, "unknown key(s) nmae"),
        ({"inner": {"rank": "8"}}, "config.inner.rank: expected an integer"),
        ({"inner": {"rank": True}}, "expected an integer"),
        ({"inner": {"mode": "c"}}, "is not one of"),
        ({"inner": 3}, "expected a table"),
    ],
)
def test_config_rejects_bad_input(data, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_dict(Outer, data)


def test_toml_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('name = "a"\n[inner]\nrank = 2\n')
    cfg = load_toml(Outer, p)
    assert cfg.inner.rank == 2
    cfg2 = apply_overrides(cfg, ["inner.rank=16", "inner.mode=b", "name=hello world"])
    assert (cfg2.inner.rank, cfg2.inner.mode, cfg2.name) == (16, "b", "hello world")
    with pytest.raises(ConfigError, match="unknown key"):
        apply_overrides(cfg, ["inner.rnak=1"])
    p.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(Outer, p)


def test_atomic_writes_leave_old_file_on_failure(tmp_path):
    dest = tmp_path / "a.json"
    atomic_write_json(dest, {"v": 1})
    with pytest.raises(RuntimeError):
        from dsd.io import atomic_path

        with atomic_path(dest) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert json.loads(dest.read_text()) == {"v": 1}
    assert not list(tmp_path.glob(".*.tmp"))
    atomic_save_safetensors({"w": torch.ones(2)}, tmp_path / "w.safetensors", {"k": "v"})
    from safetensors import safe_open

    with safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        assert f.metadata() == {"k": "v"}


def test_atomic_directory_swaps_whole(tmp_path):
    dest = tmp_path / "ckpt"
    with atomic_directory(dest) as d:
        (d / "a").write_text("1")
    with pytest.raises(ValueError), atomic_directory(dest) as d:
        (d / "a").write_text("2")
        raise ValueError
    assert (dest / "a").read_text() == "1"
    with atomic_directory(dest) as d:
        (d / "b").write_text("3")
    assert sorted(os.listdir(dest)) == ["b"]
    (tmp_path / ".x.123.tmp").write_text("junk")
    assert clean_stale_temporaries(tmp_path) == 1


def test_record_log_resume_and_cut_line(tmp_path):
    path = tmp_path / "log.jsonl"
    with RecordLog(path) as log:
        assert log.append({"id": "a", "v": 1})
        assert log.append({"id": "b", "v": 2})
        assert not log.append({"id": "a", "v": 3})
    with open(path, "ab") as fh:
        fh.write(b'{"id": "c", "v"')  # a write cut by kill -9
    with RecordLog(path) as log:
        assert log.done_ids() == {"a", "b"}
        log.append({"id": "c", "v": 4})
    assert [r["id"] for r in read_records(path)] == ["a", "b", "c"]


def test_record_log_survives_sigkill(tmp_path):
    """A writer killed at a random moment leaves a log that reopens cleanly."""
    path = tmp_path / "log.jsonl"
    script = textwrap.dedent(
        f"""
        import os, signal
        from dsd.manifest import RecordLog
        log = RecordLog({str(path)!r})
        for i in range(100000):
            log.append({{"id": str(i), "payload": "x" * 200}})
            if i == 50:
                os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == -9
    with RecordLog(path) as log:
        assert log.done_ids() == {str(i) for i in range(51)}
