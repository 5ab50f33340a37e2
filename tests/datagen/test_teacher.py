"""Teacher stage with the tiny diffusers FLUX (dsd.tiny): grids, seeds, resume, sharding over ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from datagen.panels import LayoutError
from datagen.teacher import TeacherConfig, merge_teacher_logs, run_teacher
from datagen.teacher.diffusers_backend import DiffusersTeacher, TeacherModelError
from datagen.teacher.sharding import ShardingError, rank_log_path, resolve_rank, shard_of
from datagen.teacher.stage import build_work_list, derive_seed, grid_id_for
from dsd.manifest import read_records

REPO = Path(__file__).resolve().parents[2]


def write_prompts(path: Path, n: int, layout: str = "2x2") -> Path:
    rows, cols = (int(v) for v in layout.split("x")) if "x" in layout else (None, None)
    with open(path, "w") as fh:
        for i in range(n):
            rec = {"id": f"prompt{i:02d}", "prompt": f"a grid of 4 images of the same red robot, view {i}",
                   "layout": layout, "rows": rows, "cols": cols}  # fmt: skip
            fh.write(json.dumps(rec) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory) -> Path:
    from dsd.tiny import make_tiny_pipeline

    return make_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "flux", seed=0)


@pytest.fixture(scope="module")
def cfg(tiny_flux) -> TeacherConfig:
    return TeacherConfig(model_dir=str(tiny_flux), width=64, height=48, steps=1, dtype="float32", device="cpu",
                         batch_size=3, seeds_per_prompt=2, base_seed=11)  # fmt: skip


@pytest.fixture(scope="module")
def teacher(cfg) -> DiffusersTeacher:
    return DiffusersTeacher(cfg)


def test_work_list_ids_and_seeds_are_stable(tmp_path):
    cfg = TeacherConfig(seeds_per_prompt=2, base_seed=11)
    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    items = build_work_list(prompts, cfg)
    assert len(items) == 6 and [i.grid_id for i in items] == sorted(i.grid_id for i in items)
    assert items == build_work_list(prompts, cfg)
    lines = prompts.read_text().splitlines()
    prompts.write_text("\n".join(reversed(lines)) + "\n")  # the order of the file does not matter
    assert items == build_work_list(prompts, cfg)
    it = items[0]
    assert it.seed in {derive_seed(11, it.prompt_id, k) for k in range(2)}
    assert it.grid_id == grid_id_for(it.prompt_id, it.seed) and (it.rows, it.cols) == (2, 2)


def test_draws_grids_records_seeds_and_matches_a_direct_pipeline_call(tmp_path, cfg, teacher):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 2)
    out = tmp_path / "teacher"
    summary = run_teacher(cfg, prompts, out, rank=0, world_size=1, progress=False, backend=teacher)
    assert (summary.items_in, summary.items_out, summary.extra["drawn"]) == (4, 4, 4)
    records = read_records(out / "grids.jsonl")
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)
    for r in records:
        assert r["backend"] == "diffusers" and (r["width"], r["height"], r["rows"], r["cols"]) == (64, 48, 2, 2)
        with Image.open(r["path"]) as im:
            assert im.size == (64, 48) and im.info["dsd_seed"] == str(r["seed"])
    # an image depends on its own seed only, not on its batch neighbours
    r = records[-1]
    alone = teacher.generate([r["prompt"]], [r["seed"]])[0]
    with Image.open(r["path"]) as im:
        diff = max(abs(a - b) for a, b in zip(im.convert("RGB").tobytes(), alone.tobytes(), strict=True))
    assert diff <= 2


def test_resume_draws_no_item_twice(tmp_path, cfg, teacher):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    out = tmp_path / "teacher"
    first = run_teacher(cfg, prompts, out, rank=0, world_size=1, progress=False, backend=teacher, limit=3)
    assert first.extra["drawn"] == 3
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "grids").glob("*.png")}
    # a crash after the PNG but before its record: the PNG is adopted, not drawn again
    log = rank_log_path(out, 0)
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:2]) + lines[2][:17])  # drop one record, leave a cut-off line
    (out / "grids.jsonl").unlink()
    second = run_teacher(cfg, prompts, out, rank=0, world_size=1, progress=False, backend=teacher)
    assert (second.skipped_done, second.extra["adopted_after_crash"], second.extra["drawn"]) == (2, 1, 3)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "grids").glob("*.png") if p.name in stamps} == stamps
    ids = [json.loads(line)["id"] for line in log.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 6
    third = run_teacher(cfg, prompts, out, rank=0, world_size=1, progress=False, backend=teacher)
    assert (third.skipped_done, third.items_out) == (6, 0)
    assert len(read_records(out / "grids.jsonl")) == 6


def test_rerun_with_another_world_size_skips_work_of_other_ranks(tmp_path, cfg, teacher):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 4)
    out = tmp_path / "teacher"
    run_teacher(cfg, prompts, out, rank=1, world_size=2, progress=False, backend=teacher)
    done_by_1 = {r["id"] for r in read_records(rank_log_path(out, 1))}
    summary = run_teacher(cfg, prompts, out, rank=0, world_size=1, progress=False, backend=teacher)
    assert summary.skipped_done == len(done_by_1) and summary.extra["drawn"] == 8 - len(done_by_1)
    assert {r["id"] for r in read_records(out / "grids.jsonl")} == {i.grid_id for i in build_work_list(prompts, cfg)}


def test_bad_inputs_are_clear_errors(tmp_path, cfg):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 1, layout="a collage")
    with pytest.raises(LayoutError, match="unknown layout"):
        run_teacher(cfg, prompts, tmp_path / "t", progress=False)
    with pytest.raises(TeacherModelError, match="model_index.json"):
        DiffusersTeacher(TeacherConfig(model_dir=str(tmp_path)))
    with pytest.raises(TeacherModelError, match="model_dir is not set"):
        DiffusersTeacher(TeacherConfig())
    with pytest.raises(ShardingError):
        resolve_rank(2, 2)


def test_rank_from_env_and_stable_shards(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_rank() == (3, 4)
    assert resolve_rank(0, 1) == (0, 1)
    ids = [f"grid{i}" for i in range(200)]
    shards = [shard_of(i, 4) for i in ids]
    assert set(shards) == {0, 1, 2, 3} and shards == [shard_of(i, 4) for i in ids]


def test_merge_is_deterministic_and_deduplicates(tmp_path):
    out = tmp_path / "t"
    out.mkdir()
    (out / "grids.rank1.jsonl").write_text('{"id": "b", "r": 1}\n{"id": "a", "r": 1}\n')
    (out / "grids.rank0.jsonl").write_text('{"id": "c", "r": 0}\n{"id": "a", "r": 0}\n{"id": "d"')
    first = merge_teacher_logs(out).read_text()
    assert [json.loads(x)["id"] for x in first.splitlines()] == ["a", "b", "c"]
    assert json.loads(first.splitlines()[0])["r"] == 0
    assert merge_teacher_logs(out).read_text() == first


@pytest.mark.slow
def test_two_ranks_as_two_processes_cover_the_list_exactly_once(tmp_path, tiny_flux):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 5)
    out = tmp_path / "teacher"
    cmd = [sys.executable, "-m", "datagen.teacher", "--prompts", str(prompts), "--out", str(out),
           "--backend", "diffusers", "--model-dir", str(tiny_flux), "--width", "32", "--height", "32",
           "--steps", "1", "--dtype", "float32", "--device", "cpu", "--seeds-per-prompt", "2", "--no-progress"]  # fmt: skip
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr.decode()[-2000:]
        assert b"rank" in stdout
    expected = {i.grid_id for i in build_work_list(prompts, TeacherConfig(seeds_per_prompt=2))}
    per_rank = [{r["id"] for r in read_records(rank_log_path(out, k))} for k in range(2)]
    assert per_rank[0] and per_rank[1] and not per_rank[0] & per_rank[1]
    assert per_rank[0] | per_rank[1] == expected
    assert all(shard_of(i, 2) == k for k in range(2) for i in per_rank[k])
    merged = read_records(out / "grids.jsonl")
    assert [r["id"] for r in merged] == sorted(expected)
    assert sorted(p.stem for p in (out / "grids").glob("*.png")) == sorted(expected)
