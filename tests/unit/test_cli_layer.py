"""The one CLI layer (dsd/cli.py) as every command uses it: flags, logging, exit codes, config loading."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from datagen.cli import build_parser as datagen_parser
from datagen.cli import exit_codes as datagen_codes
from datagen.config import load_config as load_datagen
from datagen.teacher.__main__ import build_parser as teacher_parser
from datagen.teacher.__main__ import load_teacher_config
from datagen.teacher.__main__ import main as teacher_main
from datagen.teacher.config import TeacherConfig
from dsd import cli
from dsd.__main__ import build_parser as dsd_parser
from dsd.__main__ import exit_codes as dsd_codes
from dsd.config import ConfigError
from training.cli import build_parser as training_parser
from training.cli import exit_codes as training_codes
from training.config import load_config as load_training

REPO = Path(__file__).resolve().parents[2]

# The same subcommand position for each CLI, with the arguments it requires.
COMMANDS = {
    "dsd": (dsd_parser, ["make-tiny", "d"]),
    "datagen": (datagen_parser, ["captions", "--workdir", "w"]),
    "datagen.teacher": (teacher_parser, ["--out", "o"]),
    "training": (training_parser, ["estimate", "--config", "c.toml"]),
}
CODES = {"dsd": dsd_codes, "datagen": datagen_codes, "datagen.teacher": datagen_codes, "training": training_codes}


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]


def _flags_at_both_ends(build, rest: list[str], flags: list[str]) -> list[argparse.Namespace]:
    """``prog FLAGS sub ...`` and ``prog sub ... FLAGS`` (teacher has no subcommand: once)."""
    parsed = [build().parse_args([*flags, *rest])]
    if not rest[0].startswith("-"):
        parsed.append(build().parse_args([*rest, *flags]))
    return parsed


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize(("flags", "ours", "third_party", "progress"), [
    ([], logging.WARNING, logging.WARNING, True),
    (["-v"], logging.INFO, logging.WARNING, True),
    (["-vv"], logging.DEBUG, logging.INFO, True),
    (["-q"], logging.ERROR, logging.ERROR, False),
    (["--no-progress"], logging.WARNING, logging.WARNING, False),
])  # fmt: skip
def test_verbosity_flags_mean_the_same_in_every_cli(name, flags, ours, third_party, progress):
    build, rest = COMMANDS[name]
    for args in _flags_at_both_ends(build, rest, flags):
        cli.configure_logging(args)
        assert logging.getLogger().level == ours
        assert logging.getLogger("httpx").level == third_party
        assert cli.progress_enabled(args) is progress


def test_third_party_info_stays_off_the_terminal_below_vv(capsys):
    for verbose, shown in ((1, False), (2, True)):
        cli.configure_logging(argparse.Namespace(verbose=verbose, quiet=False))
        logging.getLogger("httpx2").setLevel(logging.INFO)  # a library that sets its own level
        logging.getLogger("httpx2").info("HTTP Request: POST /v1/chat")
        logging.getLogger("datagen.curate").info("ours")
        err = capsys.readouterr().err
        assert "ours" in err and ("HTTP Request" in err) is shown


def _raise(exc: BaseException):
    def handler(args):
        raise exc

    return handler


@pytest.mark.parametrize("name", sorted(CODES))
def test_exit_codes_per_cli(name, capsys):
    user, failures = CODES[name]()
    assert ValueError not in user and Exception not in user and RuntimeError not in failures
    assert ConfigError in user
    parser = argparse.ArgumentParser()
    cli.add_common_flags(parser)
    cases = [(user[-1]("bad input, fix it"), 2), (KeyboardInterrupt(), 130)]
    cases += [(failures[0]("provider down"), 1)] if failures else []
    for exc, code in cases:
        parser.set_defaults(func=_raise(exc))
        assert cli.run_cli(parser, [], user_errors=user, failures=failures) == code
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
        assert "rerun the same command to resume" in err if code == 130 else str(exc) in err
    parser.set_defaults(func=_raise(ValueError("a bug")))  # a plain ValueError is a bug, not the user's fault
    with pytest.raises(ValueError, match="a bug"):
        cli.run_cli(parser, [], user_errors=user, failures=failures)


def test_real_commands_map_errors(tmp_path, capsys):
    from datagen.cli import main as datagen_main
    from dsd.__main__ import main as dsd_main
    from training.cli import main as training_main

    bad = tmp_path / "bad.toml"
    bad.write_text("[teacher]\nstepz = 3\n")
    assert datagen_main(["captions", "--config", str(bad), "--workdir", str(tmp_path / "w"), "-q"]) == 2
    assert teacher_main(["--config", str(bad), "--out", str(tmp_path / "o"), "--prompts", str(bad)]) == 2
    assert teacher_main(["--out", str(tmp_path / "o")]) == 2  # --prompts missing
    assert training_main(["estimate", "--config", str(bad)]) == 2
    assert dsd_main(["eval", "--bench", str(tmp_path / "none"), "--out", str(tmp_path / "e"), "--list"]) == 2
    err = capsys.readouterr().err
    assert err.count("stepz") == 2 and "unknown key(s) teacher" in err and "--prompts is required" in err
    assert "benchmark folder" in err and "Traceback" not in err


# ------------------------------------------------------------------ configs


def test_paths_resolve_against_the_config_file_in_every_family(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    conf.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    dg = conf / "datagen.toml"
    dg.write_text("[captions]\nsources = ['data/c.txt', '/abs/c.txt']\n[teacher]\nmodel_dir = 'flux'\n"
                  "[vlm]\nkind = 'gemini'\nmodel = 'm'\ncache_dir = 'cache'\n")  # fmt: skip
    cfg = load_datagen(dg, ["teacher.comfyui_workflow=wf.json"])
    assert cfg.captions.sources == (str(conf / "data" / "c.txt"), "/abs/c.txt")
    assert cfg.teacher.model_dir == str(conf / "flux") and cfg.vlm.cache_dir == str(conf / "cache")
    assert cfg.teacher.comfyui_workflow == str(cwd / "wf.json")  # typed on the command line: the current folder
    assert load_datagen(None, ["teacher.model_dir=m"]).teacher.model_dir == str(cwd / "m")

    args = teacher_parser().parse_args(["--out", "o", "--config", str(dg), "--steps", "3", "--comfyui-workflow", "w.json"])
    t = load_teacher_config(args)
    assert (t.model_dir, t.comfyui_workflow, t.steps) == (str(conf / "flux"), str(cwd / "w.json"), 3)

    tr = conf / "train.toml"
    tr.write_text("[model]\nflux = '../models/flux'\n[dataset]\npaths = ['ds']\n[saving]\noutput_dir = 'out'\n")
    c = load_training(tr, ["validation.clip=clip"])
    assert c.model.flux == str(tmp_path / "models" / "flux") and c.dataset.paths == [str(conf / "ds")]
    assert c.saving.output_dir == str(conf / "out") and c.validation.clip == str(cwd / "clip")
    assert c.model.transformer == ""  # unset stays unset


def test_teacher_reads_the_teacher_table_only(tmp_path):
    flat = tmp_path / "flat.toml"
    flat.write_text("steps = 3\n")
    args = teacher_parser().parse_args(["--out", "o", "--config", str(flat)])
    with pytest.raises(ConfigError, match="unknown key.*steps.*teacher"):
        load_teacher_config(args)
    args = teacher_parser().parse_args(["--out", "o", "--set", "teacher.steps=5"])
    assert load_teacher_config(args).steps == 5


def test_teacher_flags_are_generated_from_the_config():
    parser = teacher_parser()
    dests = {a.dest for a in parser._actions}
    simple = [f.name for f in dataclasses.fields(TeacherConfig)]
    assert {f"field:{n}" for n in simple} <= dests
    args = parser.parse_args(["--out", "o", "--backend", "comfyui", "--guidance", "2.5", "--comfyui-checkpoint", "c.sft"])
    assert cli.field_overrides(args, TeacherConfig, section="teacher") == {
        "teacher.backend": "comfyui", "teacher.guidance": 2.5, "teacher.comfyui_checkpoint": "c.sft"}  # fmt: skip
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "o", "--backend", "nope"])  # Literal fields get choices

    grown = dataclasses.make_dataclass("Grown", [("new_knob", int, 3), ("shiny", bool, False)], bases=(TeacherConfig,), frozen=True)
    p = argparse.ArgumentParser()
    names = cli.add_field_flags(p, grown, section="teacher")
    assert "new_knob" in names and "shiny" in names
    args = p.parse_args(["--new-knob", "7", "--shiny"])
    assert cli.field_overrides(args, grown, section="teacher") == {"teacher.new_knob": 7, "teacher.shiny": True}


# ------------------------------------------------------------------ Ctrl-C in a real process


class SilentServer:
    """Accepts connections and never answers, so a client waits until it is interrupted."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connected = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.connected.set()

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.mark.parametrize("module", ["datagen.teacher", "datagen"])
def test_ctrl_c_exits_130_with_the_resume_hint(tmp_path, module):
    server = SilentServer()
    prompts = tmp_path / "w" / "prompts" / "prompts.jsonl"
    prompts.parent.mkdir(parents=True)
    prompts.write_text(json.dumps({"id": "p0", "prompt": "a red robot", "layout": "2x2", "rows": 2, "cols": 2}) + "\n")
    if module == "datagen":
        cfg = tmp_path / "c.toml"
        cfg.write_text(f"[teacher]\nbackend = 'comfyui'\ncomfyui_url = '{server.url}'\n")
        argv = ["teacher", "--config", str(cfg), "--workdir", str(tmp_path / "w"), "--no-progress"]
    else:
        argv = ["--prompts", str(prompts), "--out", str(tmp_path / "t"), "--backend", "comfyui", "--comfyui-url", server.url]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # A test run started in the background (`cmd &` without job control) ignores SIGINT, and a child that
    # inherits SIG_IGN never gets Python's KeyboardInterrupt handler: give it the terminal's default back.
    proc = subprocess.Popen([sys.executable, "-m", module, *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        # deadlines against a hang only: a cold start (torch, diffusers) on a loaded 2-core machine is slow
        assert server.connected.wait(240), proc.communicate(timeout=5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()
    assert proc.returncode == 130, err[-2000:]
    assert "error: interrupted; rerun the same command to resume" in err and "Traceback" not in err
