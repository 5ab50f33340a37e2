"""Issue 20: tuple verdicts (k references -> 1 target) on the toy domain, both ways, kill -9 and resume,
one bad tuple its own reject, and the dataset's tuples (shards, index, export) with pairs unchanged."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from benchmarks.datagen_tuples import toy_config, tuple_scores
from benchmarks.toy_loop import KEY_ENV
from datagen.cli import main as datagen_main
from datagen.config import ConfigError, load_config
from datagen.tuples import grid_tuples, read_tuple_verdicts
from dsd.manifest import read_records
from tests.support.llm_server import FakeLLMServer
from tests.support.toy_judge import toy_responder
from tests.support.tree import wait_until

REPO = Path(__file__).resolve().parents[2]
KEEP = ("id", "accepted", "verdict", "k", "ref_indices", "target_index", "caption", "reason", "confidence", "reject_reason")


@pytest.fixture(scope="module")
def toy_panels(tmp_path_factory) -> tuple[Path, Path]:
    """A toy workdir cut into panels (12 identities, 2x2 / 1x3 / 3x3 grids): (workdir, config)."""
    root = tmp_path_factory.mktemp("toy_tuples")
    cfg = toy_config(root, 12, "http://127.0.0.1:9/v1", "2x2,1x3,3x3")
    for stage in ("captions", "prompts", "teacher", "panels"):
        assert datagen_main([stage, "--config", str(cfg), "--workdir", str(root / "w"), "--no-progress", "-q"]) == 0
    return root / "w", cfg


def _copy(toy_panels, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the module's workdir whose records name the copy's panels (the stages write absolute paths)."""
    work, cfg = toy_panels
    w = tmp_path / "w"
    shutil.copytree(work, w)
    for log in (w / "panels" / "panels.jsonl", w / "panels" / "pairs.jsonl"):
        log.write_text(log.read_text().replace(json.dumps(str(work))[1:-1], json.dumps(str(w))[1:-1]))
    return w, cfg


def _flags(w: Path, cfg: Path, srv, mode: str) -> list[str]:
    return ["--config", str(cfg), "--workdir", str(w), "--no-progress", "-q", "--set", f"vlm.base_url={srv.openai_base_url}",
            "--set", f"curate.tuple_verdicts={mode}"]  # fmt: skip


def _kept(records: list[dict]) -> dict[str, dict]:
    return {r["id"]: {k: r.get(k) for k in KEEP} for r in records}


def test_grid_tuples_cover_k_2_and_3_and_are_capped() -> None:
    grid = {"id": "g", "panel_paths": [f"p{i}.png" for i in range(4)]}
    every = grid_tuples(grid, 3, 100)
    assert sum(t["k"] == 2 for t in every) == 12 and sum(t["k"] == 3 for t in every) == 4
    assert {"id": "g_0-1_2", "grid_id": "g", "k": 2, "ref_indices": [0, 1], "target_index": 2,
            "ref_paths": ["p0.png", "p1.png"], "target_path": "p2.png"} in every  # fmt: skip
    capped = grid_tuples(grid, 3, 5)
    assert [t["k"] for t in capped].count(2) == 5 and capped == grid_tuples(grid, 3, 5)  # seeded, stable
    assert grid_tuples(grid, 2, 100) == [t for t in every if t["k"] == 2]
    assert grid_tuples({"id": "h", "panel_paths": ["a", "b"]}, 3, 100) == []  # two panels: pairs only


def test_derived_verdict_needs_every_pair_inside_the_tuple(tmp_path: Path) -> None:
    from datagen.tuples import PairVerdicts, derived_record

    def pair(r: int, t: int, accepted: bool = True) -> dict:
        return {"id": f"g_{r}_{t}", "grid_id": "g", "ref_index": r, "target_index": t, "accepted": accepted,
                "caption": f"panel {t}", "confidence": 0.8 + r / 100, "subject": "a cup", "reject_reason": "different identity"}  # fmt: skip

    (tmp_path / "curate").mkdir()
    verdicts = [pair(0, 2), pair(1, 2), pair(0, 1), pair(1, 0, accepted=False), pair(3, 2)]
    (tmp_path / "curate" / "verdicts.jsonl").write_text("".join(json.dumps(v) + "\n" for v in verdicts))
    pairs = [*verdicts, pair(0, 3)]  # g_0_3 was paired but is not decided yet
    pv = PairVerdicts(tmp_path, pairs)
    item = grid_tuples({"id": "g", "panel_paths": list("abcd")}, 2, 100)
    by_id = {t["id"]: t for t in item}
    rec = derived_record(by_id["g_0-1_2"], pv)
    assert not rec["accepted"] and rec["reason"] == "pair g_1_0 rejected: different identity"
    (tmp_path / "curate" / "verdicts.jsonl").write_text("".join(json.dumps(v) + "\n" for v in verdicts if v["id"] != "g_1_0"))
    pv = PairVerdicts(tmp_path, [p for p in pairs if p["id"] != "g_1_0"])
    rec = derived_record(by_id["g_0-1_2"], pv)
    assert rec["accepted"] and rec["caption"] == "panel 2" and rec["confidence"] == 0.8
    assert rec["pairs"] == ["g_0_1", "g_0_2", "g_1_2"] and rec["verdict"] == "derived"
    assert derived_record(by_id["g_0-3_2"], pv) is None  # g_0_3 undecided: the rerun derives it
    missing = derived_record(by_id["g_1-3_2"], pv)  # panels 1 and 3 never paired
    assert not missing["accepted"] and missing["reject_reason"] == "pair not judged"


@pytest.mark.parametrize("mode", ["derived", "vlm"])
def test_tuple_verdicts_agree_with_the_toy_truth(toy_panels, tmp_path: Path, monkeypatch, mode: str) -> None:
    w, cfg = _copy(toy_panels, tmp_path)
    monkeypatch.setenv(KEY_ENV, "toy")
    with FakeLLMServer(responder=toy_responder) as srv:
        assert datagen_main(["curate", *_flags(w, cfg, srv, mode)]) == 0
        tuple_requests = [r for r in srv.requests if len(r.images) > 2]
    scores = tuple_scores(w, mode)
    assert scores["all"]["tuples"] > 0 and scores["all"]["consistent"] < scores["all"]["tuples"]  # some odd panels
    assert scores["k=2"]["tuples"] and scores["k=3"]["tuples"]
    assert scores["all"]["precision"] == 1.0 and scores["all"]["recall"] >= 0.9
    assert len(tuple_requests) == (scores["all"]["tuples"] if mode == "vlm" else 0)
    if mode == "vlm":
        assert "ALL" in tuple_requests[0].prompt and tuple_requests[0].json_schema["properties"]["descriptions"]
        summary = json.loads((w / "curate" / "summary.json").read_text())
        assert summary["extra"]["tuple requests"].startswith(f"{len(tuple_requests)} (0 cached)")
    summary = json.loads((w / "curate" / "summary.json").read_text())
    assert summary["extra"]["tuple verdicts"] == mode
    assert summary["extra"]["tuples accepted (k > 1)"] + summary["extra"]["tuples rejected (k > 1)"] == scores["all"]["tuples"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["derived", "vlm"])
def test_tuple_verdicts_survive_kill_9_and_resume(toy_panels, tmp_path: Path, monkeypatch, mode: str) -> None:
    """SIGKILL the curate CLI (pairs, then tuples) at random points of its record logs, then finish: the tuple
    verdicts equal an uninterrupted run's."""
    import time

    def slow(request):  # a little latency per answer, so the kills land mid-stage
        time.sleep(0.02)
        return toy_responder(request)

    ref, cfg = _copy(toy_panels, tmp_path / "ref")
    w, _ = _copy(toy_panels, tmp_path / "killed")
    monkeypatch.setenv(KEY_ENV, "toy")
    with FakeLLMServer(responder=toy_responder) as srv:
        assert datagen_main(["curate", *_flags(ref, cfg, srv, mode), "--set", "vlm.max_concurrency=2"]) == 0
    expected = _kept(read_tuple_verdicts(ref, mode))
    with FakeLLMServer(responder=slow) as srv:
        total = len(read_records(ref / "curate" / "verdicts.jsonl")) + len(expected)
        env = {**os.environ, "PYTHONPATH": str(REPO), KEY_ENV: "toy"}
        cmd = [sys.executable, "-m", "datagen", "curate", *_flags(w, cfg, srv, mode), "--set", "vlm.max_concurrency=2",
               "--set", "vlm.cache_dir=" + str(tmp_path / "no_shared_cache")]  # fmt: skip

        def logged() -> int:
            return sum(len(_lines(w / "curate" / n)) for n in ("verdicts.jsonl", f"tuples.{mode}.jsonl"))

        pairs = total - len(expected)
        rng, kills = random.Random(7), 0
        for attempt in range(3):
            have = logged()
            if have >= total - 2:
                break
            # the first kill among the pairs; with vlm verdicts the next ones among the tuples (the derived
            # ones are written in a moment, so their kills land among the pairs too)
            low, high = (have, pairs // 2) if attempt == 0 or mode == "derived" else (max(have, pairs), total - 2)
            target = low + rng.randint(1, max(1, (high - low) // 2))
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_until(lambda n=target: logged() >= n, process=proc, what=f"curate logging {target} verdicts")
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
        assert kills >= 2
        if mode == "vlm":
            assert 0 < len(_lines(w / "curate" / "tuples.vlm.jsonl")) < len(expected)  # a kill landed among the tuples
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    assert _kept(read_tuple_verdicts(w, mode)) == expected


def _lines(path: Path) -> list[bytes]:
    try:
        return [line for line in path.read_bytes().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def test_one_bad_tuple_is_its_reject_and_the_stage_goes_on(toy_panels, tmp_path: Path, monkeypatch) -> None:
    """vlm: a tuple whose verdict parsing raises, tuples with an unreadable panel, and a damaged upload view of a
    good panel; derived: one whose derivation raises. A raising tuple is a recorded reject with its reason; one
    with the unreadable panel is a reject of the run but stays undone (nothing sent), as do the pairs with that
    panel and so the derived tuples over them; the damaged view is rebuilt. The others are decided; a rerun asks
    nothing again, and after the panel is repaired asks only the items that have it."""
    from datagen import tuples
    from datagen.summary import UNREADABLE

    w, cfg = _copy(toy_panels, tmp_path)
    monkeypatch.setenv(KEY_ENV, "toy")
    items = tuples.candidate_tuples(w, 3, 6)
    bad_verdict, bad_derive = items[0]["id"], items[1]["id"]
    broken = next(t for t in items if t["k"] == 3 and t["grid_id"] not in (items[0]["grid_id"], items[1]["grid_id"]))
    panel = Path(broken["target_path"])
    good_panel = panel.read_bytes()
    panel.write_bytes(b"\x89PNG broken")
    for view in panel.parent.glob(panel.stem + ".vlm*"):
        view.unlink()  # no upload view: curation reads the panel itself
    damaged = next(panel.parent.glob(Path(broken["ref_paths"][0]).stem + ".vlm*"))
    view_bytes = damaged.read_bytes()
    damaged.write_bytes(view_bytes[: len(view_bytes) // 3])  # cut short: rebuilt from its (good) panel
    with_panel = {t["id"] for t in items if str(panel) in (*t["ref_paths"], t["target_path"])}
    pairs_with_panel = {p["id"] for p in read_records(w / "panels" / "pairs.jsonl") if str(panel) in (p["ref_path"], p["target_path"])}
    real_verdict, real_derived = tuples.tuple_verdict, tuples.derived_record

    def verdict(item, *args):
        if item["id"] == bad_verdict:
            raise RuntimeError("parser bug")
        return real_verdict(item, *args)

    def derived(item, pv):
        if item["id"] == bad_derive:
            raise KeyError("confidence")
        return real_derived(item, pv)

    monkeypatch.setattr(tuples, "tuple_verdict", verdict)
    monkeypatch.setattr(tuples, "derived_record", derived)
    with FakeLLMServer(responder=toy_responder) as srv:
        assert datagen_main(["curate", *_flags(w, cfg, srv, "vlm")]) == 0
        vlm = {r["id"]: r for r in read_tuple_verdicts(w, "vlm")}
        tuple_summary = json.loads((w / "curate" / "tuples_summary.json").read_text())
        assert datagen_main(["curate", *_flags(w, cfg, srv, "derived")]) == 0
        asked = len(srv.requests)
        assert datagen_main(["curate", *_flags(w, cfg, srv, "vlm")]) == 0
        assert len(srv.requests) == asked  # every readable item decided: nothing asked again
        derived_recs = {r["id"]: r for r in read_tuple_verdicts(w, "derived")}
        pair_ids = {r["id"] for r in read_records(w / "curate" / "verdicts.jsonl")}
        panel.write_bytes(good_panel)  # repaired: the rerun asks the items that have this panel, and only them
        assert datagen_main(["curate", *_flags(w, cfg, srv, "vlm")]) == 0
        assert len(srv.requests) == asked + len(pairs_with_panel) + len(with_panel)
        assert datagen_main(["curate", *_flags(w, cfg, srv, "derived")]) == 0
    assert broken["id"] in with_panel and pairs_with_panel and set(vlm) == {t["id"] for t in items} - with_panel
    assert pairs_with_panel.isdisjoint(pair_ids) and len(derived_recs) < len(items)  # waiting for those pairs
    assert vlm[bad_verdict]["reject_reason"] == "verdict failed (RuntimeError)" and not vlm[bad_verdict]["accepted"]
    assert tuple_summary["reject_reasons"][UNREADABLE] == len(with_panel)
    assert panel.name in tuple_summary["extra"]["first unreadable image"]
    assert tuple_summary["reject_reasons"]["verdict failed (RuntimeError)"] == 1
    assert damaged.read_bytes() == view_bytes  # the damaged view rebuilt byte for byte
    vlm = {r["id"]: r for r in read_tuple_verdicts(w, "vlm")}
    derived_recs = {r["id"]: r for r in read_tuple_verdicts(w, "derived")}
    assert len(vlm) == len(items) == len(derived_recs)
    assert derived_recs[bad_derive]["reason"] == "derive failed (KeyError): 'confidence'"
    assert sum(r["accepted"] for r in vlm.values()) > len(items) // 2
    assert vlm[broken["id"]]["verdict"] == "vlm"


def _curated(toy_panels, tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    w, cfg = _copy(toy_panels, tmp_path)
    monkeypatch.setenv(KEY_ENV, "toy")
    with FakeLLMServer(responder=toy_responder) as srv:
        assert datagen_main(["curate", *_flags(w, cfg, srv, "derived")]) == 0
    return w, cfg


def _dataset(w: Path, cfg: Path, refs: int) -> dict[str, bytes]:
    args = ["dataset", "--config", str(cfg), "--workdir", str(w), "--no-progress", "-q", "--set", "dataset.shard_size=64",
            "--set", f"dataset.max_references={refs}", "--set", "curate.tuple_verdicts=derived"]  # fmt: skip
    assert datagen_main(args) == 0
    return {p.name: p.read_bytes() for p in sorted((w / "dataset").glob("shard-*.tar"))}


def test_dataset_tuples_round_trip_and_pairs_unchanged(toy_panels, tmp_path: Path, monkeypatch) -> None:
    from datagen.dataset import export_authors, iter_samples

    w, cfg = _curated(toy_panels, tmp_path, monkeypatch)
    pairs_only = _dataset(w, cfg, 1)
    pairs_index = pq.read_table(w / "dataset" / "index.parquet")
    assert "k" not in pairs_index.column_names  # max_references = 1: the dataset as before issue 20
    with_tuples = _dataset(w, cfg, 3)
    index = pq.read_table(w / "dataset" / "index.parquet").to_pylist()
    accepted = {r["id"]: r for r in read_tuple_verdicts(w, "derived") if r["accepted"]}
    assert sorted(r["key"] for r in index if r["k"] > 1) == sorted(accepted)
    assert {r["k"] for r in index} == {1, 2, 3} and len(index) == pairs_index.num_rows + len(accepted)
    samples = {s["__key__"]: s for s in wds.WebDataset([str(w / "dataset" / n) for n in with_tuples], shardshuffle=False)}
    key3 = next(r["key"] for r in index if r["k"] == 3)
    s3, meta = samples[key3], json.loads(samples[key3]["json"])
    assert {"ref.png", "ref_2.png", "ref_3.png", "target.png"} <= set(s3) and "ref_4.png" not in s3
    assert meta["k"] == 3 and meta["caption"] == accepted[key3]["caption"] and len(meta["ref_indices"]) == 3
    panels = Path(next(t for t in read_records(w / "panels" / "panels.jsonl") if t["id"] == meta["grid_id"])["panel_paths"][0]).parent
    assert s3["ref_2.png"] == (panels / f"{meta['grid_id']}_{meta['ref_indices'][1]}.png").read_bytes()
    assert Image.open(io.BytesIO(s3["target.png"])).size == Image.open(io.BytesIO(s3["ref.png"])).size
    got = {key: (len(refs), meta["k"] if "k" in meta else 1) for key, refs, _, meta in iter_samples(w / "dataset")}
    assert all(n == k for n, k in got.values()) and len(got) == len(index)
    pair = next(r["key"] for r in index if r["k"] == 1)
    assert "k" not in json.loads(samples[pair]["json"])  # a pair's json is unchanged
    assert export_authors(w, tmp_path / "a.parquet", progress=False) == pairs_index.num_rows  # pairs only
    assert _dataset(w, cfg, 1) == pairs_only  # back to pairs only: the same bytes
    assert pq.read_table(w / "dataset" / "index.parquet").equals(pairs_index)


def test_max_references_and_tuple_settings_are_validated() -> None:
    assert load_config(None).dataset.max_references == 1 and load_config(None).curate.tuple_verdicts == "vlm"
    assert load_config(None, ["dataset.max_references=3"]).dataset.max_references == 3
    with pytest.raises(ConfigError, match=r"dataset.max_references must be an integer from 1 \(pairs only\) to 3, got 4"):
        load_config(None, ["dataset.max_references=4"])
    with pytest.raises(ConfigError, match="max_references"):
        load_config(None, ["dataset.max_references=0"])
    with pytest.raises(ConfigError, match="max_references"):
        load_config(None, values={"dataset.max_references": "2"})
    with pytest.raises(ConfigError, match="tuple_verdicts"):
        load_config(None, ["curate.tuple_verdicts=both"])
    with pytest.raises(ConfigError, match="max_tuples_per_grid must be >= 1"):
        load_config(None, ["curate.max_tuples_per_grid=0"])
