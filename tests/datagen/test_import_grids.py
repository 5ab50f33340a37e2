"""`python -m datagen import-grids`: grids made elsewhere, through panels -> curate -> dataset; kill -9
and resume with a VLM that refuses some requests; a default-level run that logs nothing per request."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from datagen.cli import main
from dsd.manifest import read_records
from tests.datagen.synthetic_grids import make_grid
from tests.support.llm_server import FakeLLMServer
from tests.support.tree import wait_until

REPO = Path(__file__).resolve().parents[2]


def write_grids(folder: Path, specs: list[tuple[str, str, tuple[int, int], tuple[int, int]]]) -> dict[str, object]:
    """PNG grids from the synthetic generator: (name, style, labelled layout, drawn layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i, (name, style, layout, drawn) in enumerate(specs):
        grid = make_grid(style, layout, seed=100 + i, size=256, drawn=drawn)
        Image.fromarray(grid.image).save(folder / f"{name}.png")
        truth[name] = grid
    return truth


def test_import_folder_and_manifest_then_panels(tmp_path: Path, capsys) -> None:
    src = tmp_path / "grids"
    truth = write_grids(src, [("a", "flat", (2, 2), (2, 2)), ("b", "textured", (2, 2), (2, 2))])
    w = tmp_path / "w"
    assert main(["import-grids", str(src), "--layout", "2x2", "--workdir", str(w), "--no-progress"]) == 0
    assert "run --from panels" in capsys.readouterr().out
    grids = read_records(w / "teacher" / "grids.jsonl")
    assert [(g["rows"], g["cols"], g["backend"]) for g in grids] == [(2, 2, "import")] * 2
    # rerun: nothing appended; a new file is added on its own
    write_grids(src, [("c", "photo", (1, 2), (1, 2))])
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,layout,prompt\ngrids/c.png,1x2,a red ball in two views\n")
    assert main(["import-grids", str(src), "--layout", "2x2", "--workdir", str(w), "--no-progress"]) == 0
    assert len(read_records(w / "teacher" / "grids.jsonl")) == 3  # c.png came in as 2x2 from the folder
    w2 = tmp_path / "w2"
    assert main(["import-grids", str(manifest), "--workdir", str(w2), "--no-progress"]) == 0
    (rec,) = read_records(w2 / "teacher" / "grids.jsonl")
    assert rec["layout"] == "1x2" and rec["prompt"] == "a red ball in two views" and Path(rec["path"]).is_file()
    assert main(["run", "--from", "panels", "--workdir", str(w), "--no-progress",
                 "--set", "panels.min_panel_size=48"]) == 0  # fmt: skip
    panels = {r["id"]: r for r in read_records(w / "panels" / "panels.jsonl")}
    by_name = {r["id"].rsplit("-", 1)[0]: r for r in panels.values()}
    assert by_name["a"]["status"] == by_name["b"]["status"] == "ok"
    assert by_name["a"]["boxes"] == [b.as_list() for b in truth["a"].boxes]
    assert by_name["c"]["status"] == "rejected" and "the image shows 2 (1x2" in by_name["c"]["reason"]
    assert pq.read_table(w / "dataset" / "index.parquet").num_rows > 0


def test_import_errors_are_clear(tmp_path: Path, capsys) -> None:
    src = tmp_path / "grids"
    write_grids(src, [("a", "flat", (2, 2), (2, 2))])
    assert main(["import-grids", str(src), "--workdir", str(tmp_path / "w")]) == 2
    assert "--layout" in capsys.readouterr().err
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": "grids/a.png", "layout": "four"}) + "\n")
    assert main(["import-grids", str(manifest), "--workdir", str(tmp_path / "w")]) == 2
    assert "unknown layout" in capsys.readouterr().err


def test_a_grid_that_is_no_image_is_a_reject_and_the_run_goes_on(tmp_path: Path, capsys) -> None:
    """Through the CLI: a text file named .png is rejected at import (its header), a truncated PNG
    at the panels stage (its pixels); the good grids go through every stage."""
    src = tmp_path / "grids"
    write_grids(src, [("a", "flat", (2, 2), (2, 2)), ("b", "textured", (2, 2), (2, 2)), ("c", "photo", (2, 2), (2, 2))])
    (src / "notes.png").write_text("not a picture")
    data = (src / "c.png").read_bytes()
    (src / "c.png").write_bytes(data[: len(data) // 2])
    w = tmp_path / "w"
    assert main(["import-grids", str(src), "--layout", "2x2", "--workdir", str(w), "--no-progress"]) == 0
    summary = json.loads((w / "teacher" / "import_summary.json").read_text())
    assert (summary["items_out"], summary["reject_reasons"]) == (3, {"not an image": 1})
    assert "notes.png is not an image" in capsys.readouterr().err
    assert main(["run", "--from", "panels", "--workdir", str(w), "--no-progress",
                 "--set", "panels.min_panel_size=48"]) == 0  # fmt: skip
    panels = json.loads((w / "panels" / "summary.json").read_text())
    assert panels["items_out"] == 2 and panels["rejected"] == 1
    assert pq.read_table(w / "dataset" / "index.parquet").num_rows > 0
    # the rerun of the import checks the rejected file again (nothing recorded it) and adds nothing
    assert main(["import-grids", str(src), "--layout", "2x2", "--workdir", str(w), "--no-progress"]) == 0
    again = json.loads((w / "teacher" / "import_summary.json").read_text())
    assert (again["skipped_done"], again["rejected"]) == (3, 1)


# ---------------------------------------------------------------- the real CLI against the local VLM server
def _digest(req) -> int:
    return int(hashlib.sha1(b"".join(req.images)).hexdigest()[:8], 16)


def refusing_vlm(req):
    """Deterministic in the request: some pairs are refused when first asked and answered when
    rephrased, some are refused however they are asked, the rest answered (some 'different')."""
    d = _digest(req)
    rephrased = not req.prompt.startswith("Image A is the first image")
    if d % 7 == 0 or (d % 3 == 0 and not rephrased):
        return ("refusal",)
    same = d % 5 != 0
    return {"subject": "a thing", "description_a": "it", "description_b": "it", "same_identity": same,
            "confidence": 0.9, "reason": "looks the same" if same else "differs", "caption": f"caption {d % 1000}"}


def _vlm_args(srv: FakeLLMServer) -> list[str]:
    sets = {"vlm.kind": "openai", "vlm.model": "test-model", "vlm.base_url": srv.openai_base_url,
            "vlm.max_concurrency": 4, "vlm.max_retries": 0, "vlm.backoff_base_s": 0.01,
            "curate.refusal_retries": 1, "panels.min_panel_size": 48, "dataset.shard_size": 4}  # fmt: skip
    return [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENAI_API_KEY": "sk-test"}
    return subprocess.Popen([sys.executable, "-m", "datagen", *args], cwd=REPO, env=env, text=True, **kw)


def _dataset(w: Path) -> tuple[list[dict], dict[str, bytes]]:
    index = pq.read_table(w / "dataset" / "index.parquet").to_pylist()
    return index, {p.name: p.read_bytes() for p in sorted((w / "dataset").glob("shard-*.tar"))}


def _lines(path: Path) -> int:
    """Whole lines in ``path`` now (0 before it exists)."""
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.endswith(b"\n"))
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_kill_and_resume_with_refusals_equals_uninterrupted_and_logs_stay_quiet(tmp_path: Path) -> None:
    src = tmp_path / "grids"
    styles = ["flat", "textured", "photo", "lineart", "dark", "noisy_jpeg"]
    write_grids(src, [(f"g{i}", s, (2, 2), (2, 2)) for i, s in enumerate(styles)])
    with FakeLLMServer(responder=refusing_vlm, latency_s=0.1) as srv:
        run = ["run", "--from", "panels", *_vlm_args(srv)]
        ref = tmp_path / "ref"
        assert main(["import-grids", str(src), "--layout", "2x2", "--workdir", str(ref), "--no-progress"]) == 0
        proc = _cli([*run, "--workdir", str(ref)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        # default level: progress bars and summaries only, not one line per request
        per_request = [ln for ln in re.split(r"[\r\n]", err) if re.search(r"INFO|HTTP Request|POST |/v1/", ln)]
        assert per_request == [], per_request[:5]
        assert "== datagen stage: curate ==" in out
        verdicts = read_records(ref / "curate" / "verdicts.jsonl")
        refused = [v for v in verdicts if v["verdict"] == "refused"]
        retried = [v for v in verdicts if v["verdict"] == "vlm" and v["attempts"] == 2]
        assert refused and retried, "the scripted server must refuse some pairs for good and some only once"
        assert all(v["reject_reason"].startswith("refused 2 time(s)") for v in refused)
        ref_state = _dataset(ref)
        assert len(ref_state[0]) > 0

        w = tmp_path / "killed"
        assert main(["import-grids", str(src), "--layout", "2x2", "--workdir", str(w), "--no-progress"]) == 0
        rng, kills = random.Random(7), 0
        total = len(verdicts)
        for _ in range(3):
            have = _lines(w / "curate" / "verdicts.jsonl")
            if have >= total - 2:
                break
            target = rng.randint(have + 1, total - 2)
            proc = _cli([*run, "--workdir", str(w), "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_until(lambda n=target: _lines(w / "curate" / "verdicts.jsonl") >= n, process=proc,
                       what=f"curation reaching {target} verdicts")
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
        assert kills >= 1
        proc = _cli([*run, "--workdir", str(w), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    assert _dataset(w) == ref_state
    keep = ("id", "accepted", "verdict", "reject_reason", "attempts", "caption")
    strip = lambda vs: sorted(({k: v.get(k) for k in keep} for v in vs), key=lambda r: r["id"])  # noqa: E731
    assert strip(read_records(w / "curate" / "verdicts.jsonl")) == strip(verdicts)
