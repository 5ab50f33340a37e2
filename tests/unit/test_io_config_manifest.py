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

from dsd.config import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_config_file,
    load_toml,
    path_field,
    resolve_paths,
    to_dict,
)
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


@dataclasses.dataclass(frozen=True)
class Files:
    data: str = path_field("")
    many: list[str] = path_field([])
    weights: Path | None = path_field(None)
    label: str = "not/a/path"


@dataclasses.dataclass(frozen=True)
class WithFiles:
    files: Files = dataclasses.field(default_factory=Files)
    extra: Files | None = None


def test_one_path_rule_file_relative_then_command_line_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg").mkdir()
    p = tmp_path / "cfg" / "c.toml"
    p.write_text("[files]\ndata = 'd'\nmany = ['a', '/abs', '../up']\nweights = '~/w'\nlabel = 'x/y'\n")
    cfg = load_config_file(WithFiles, p, ["extra.data=here"])
    f = cfg.files
    assert (f.data, f.many) == (str(tmp_path / "cfg" / "d"), [str(tmp_path / "cfg" / "a"), "/abs", str(tmp_path / "up")])
    assert f.weights == Path("~/w").expanduser() and f.label == "x/y"  # only fields marked as paths move
    assert cfg.extra is not None and cfg.extra.data == str(tmp_path / "here")  # a --set: the current folder
    assert resolve_paths(WithFiles(), tmp_path) == WithFiles()  # unset (empty) paths stay unset
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        load_config_file(WithFiles, p, ["extra.nope=1"])


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


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after)."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)])
def test_written_files_get_the_umask_mode(tmp_path, umask, mask, file_mode, dir_mode):
    from safetensors.torch import save_file

    from dsd.io import atomic_path, atomic_write_text

    umask(mask)
    atomic_write_json(tmp_path / "a.json", {"v": 1})
    atomic_write_text(tmp_path / "b.txt", "x")
    atomic_save_safetensors({"w": torch.ones(2)}, tmp_path / "w.safetensors")
    with atomic_path(tmp_path / "c.png", suffix=".png") as tmp:
        tmp.write_bytes(b"png")
    with atomic_directory(tmp_path / "ckpt") as d:
        (d / "state.json").write_text("{}")
        (d / "sub").mkdir()
        save_file({"w": torch.ones(2)}, str(d / "sub" / "model.safetensors"))  # a 0600 file of its own
    for name in ("a.json", "b.txt", "w.safetensors", "c.png", "ckpt/state.json", "ckpt/sub/model.safetensors"):
        assert oct((tmp_path / name).stat().st_mode & 0o777) == oct(file_mode), name
    for name in ("ckpt", "ckpt/sub"):
        assert oct((tmp_path / name).stat().st_mode & 0o777) == oct(dir_mode), name


# The child dies by SIGKILL at one point of atomic_directory's swap; the hook wraps the child's own
# os.replace / shutil.rmtree (test-side only: the shipped code has no hook and no sleeps).
_KILL_DURING_SWAP = """
import os, shutil, signal, sys
from pathlib import Path
from dsd.io import atomic_directory

dest, when = Path(sys.argv[1]), sys.argv[2]
real_replace, real_rmtree = os.replace, shutil.rmtree

def replace(src, dst):
    real_replace(src, dst)
    if when == "moved-aside" and str(dst).endswith(".old"):
        os.kill(os.getpid(), signal.SIGKILL)

def rmtree(path, *args, **kwargs):
    if when == "swapped" and str(path).endswith(".old"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_rmtree(path, *args, **kwargs)

os.replace, shutil.rmtree = replace, rmtree
with atomic_directory(dest) as tmp:
    (tmp / "state.txt").write_text("new")
"""


@pytest.mark.parametrize("when,survivor", [("moved-aside", "old"), ("swapped", "new")])
@pytest.mark.parametrize("recover_by", ["clean_stale_temporaries", "atomic_directory"])
def test_kill_while_replacing_a_folder_is_recovered(tmp_path, when, survivor, recover_by):
    dest = tmp_path / "checkpoint-100"
    with atomic_directory(dest) as d:
        (d / "state.txt").write_text("old")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _KILL_DURING_SWAP, str(dest), when], cwd=root, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(root)})  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    old = tmp_path / ".checkpoint-100.old"
    assert old.is_dir() and dest.exists() == (when == "swapped")
    if recover_by == "clean_stale_temporaries":  # what resumable stages run on start
        assert clean_stale_temporaries(tmp_path) >= 1
        assert (dest / "state.txt").read_text() == survivor
    else:  # the next save of the same folder recovers first, then replaces a complete folder
        with atomic_directory(dest) as d:
            assert (dest / "state.txt").read_text() == survivor
            (d / "state.txt").write_text("next")
        assert (dest / "state.txt").read_text() == "next"
        clean_stale_temporaries(tmp_path)  # the killed writer's .tmp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-100"]


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
