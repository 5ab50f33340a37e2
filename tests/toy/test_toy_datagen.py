"""The toy teacher through the real datagen stages (issue 19): template prompts -> toy grids -> the panels
stage cuts them -> curation asks the toy judge over the OpenAI protocol -> the inconsistent grids' pairs
are the rejects, and the dataset holds the rest."""

from __future__ import annotations

import json

import pandas as pd

from datagen.cli import main as datagen_main
from dsd.manifest import read_records
from tests.support.llm_server import FakeLLMServer
from tests.support.toy_judge import curation_scores, toy_responder


def test_inconsistent_grids_reach_curation_as_rejects(tmp_path, monkeypatch):
    from benchmarks.toy_loop import KEY_ENV, write_datagen_config

    monkeypatch.setenv(KEY_ENV, "toy")
    with FakeLLMServer(responder=toy_responder) as srv:
        cfg = write_datagen_config(tmp_path, 24, srv.openai_base_url)
        assert datagen_main(["run", "--config", str(cfg), "--workdir", str(tmp_path / "datagen"), "--no-progress", "-q"]) == 0
    scores = curation_scores(tmp_path / "datagen")
    assert scores["grids"] == 24 and scores["pairs"] == 24 * 12  # every grid cut into its 4 panels
    assert scores["inconsistent_grids"] >= 2  # the teacher's seeded ~20% share
    assert scores["rejected_inconsistent"] == scores["inconsistent_pairs"] > 0
    assert scores["precision"] == 1.0 and scores["recall"] >= 0.95
    # the "curation off" ablation (benchmarks/toy_ablations.py): the same verdicts, every pair in the dataset
    from benchmarks.toy_ablations import uncurated_dataset
    from benchmarks.toy_loop import loop_env

    def count(dataset) -> int:
        return len(pd.read_parquet(dataset / "index.parquet"))

    uncurated = uncurated_dataset(tmp_path, loop_env())
    accepted = sum(bool(v.get("accepted")) for v in read_records(tmp_path / "datagen" / "curate" / "verdicts.jsonl"))
    assert count(tmp_path / "datagen" / "dataset") == accepted < count(uncurated) == scores["pairs"]
    # the "no jitter" ablation: the same prompts drawn again with every object exactly in place, through curation
    from benchmarks.toy_ablations import unjittered_dataset

    with FakeLLMServer(responder=toy_responder) as srv:
        exact = unjittered_dataset(tmp_path, loop_env(), srv.openai_base_url)
    resolved = json.loads((tmp_path / "datagen_no_jitter" / "config.resolved.json").read_text())
    assert resolved["teacher"]["toy_jitter"] == 0.0 and count(exact) == accepted
