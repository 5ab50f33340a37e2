"""A 2-subject, 3-prompt A/B run over folders of images made elsewhere: metrics, table, report folder."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dsd.eval.report import aggregate
from dsd.eval.run import EvalConfig, JudgeSettings, run_eval
from dsd.eval.stages import ImageSource
from tests.eval.eval_bench import judge_responder, make_bench
from tests.eval_fixtures import degrade, write_tiny_clip, write_tiny_dino
from tests.support.llm_server import FakeLLMServer


@pytest.fixture(scope="module")
def embed_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed_models")
    return write_tiny_clip(root / "clip"), write_tiny_dino(root / "dino")


def write_system(folder: Path, bench: Path, kind: str) -> None:
    """``close``: the reference lightly degraded; ``blank``: flat grey (identity lost)."""
    for ref in sorted((bench / "subjects").glob("*/ref.png")):
        image = Image.open(ref).convert("RGB")
        for k in range(3):
            out = degrade(image, 0.05, seed=k) if kind == "close" else Image.new("RGB", image.size, (120 + 8 * k,) * 3)
            (folder / ref.parent.name).mkdir(parents=True, exist_ok=True)
            out.save(folder / ref.parent.name / f"p{k:02d}.png")


def ab_config(tmp_path, embed_folders, judge_url=None, steps=(None, None)) -> EvalConfig:
    bench = make_bench(tmp_path / "bench")
    write_system(tmp_path / "close", bench, "close")
    write_system(tmp_path / "blank", bench, "blank")
    judge = JudgeSettings("openai", "judge-model", judge_url, repeats=2, concurrency=4) if judge_url else None
    return EvalConfig(bench=bench, out=tmp_path / "out", sources=[ImageSource("close", tmp_path / "close", steps[0]),
                      ImageSource("blank", tmp_path / "blank", steps[1])], clip=embed_folders[0], dino=embed_folders[1],
                      judge=judge, progress=False)  # fmt: skip


def test_ab_run_scores_table_and_report(tmp_path, embed_folders, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeLLMServer(responder=judge_responder) as srv:
        summary = run_eval(ab_config(tmp_path, embed_folders, srv.openai_base_url))
        # images x (CP, PF) x repeats, less the blank system's PF requests that are the same for both subjects
        # (same grey image, same prompt): those are answered once and then from the cache
        assert len({(r.prompt, tuple(r.images)) for r in srv.requests}) == 12 * 2 * 2 - 3 * 2
    table = summary.table
    assert len(table) == 12 and summary.embedded == 12 and summary.judged == 12
    assert table.id.is_monotonic_increasing and set(table.system) == {"close", "blank"}
    assert table[["clip_i", "clip_t", "dino", "cp", "pf", "cp_std", "pf_std"]].notna().all().all()
    # identity kept scores above identity lost, per subject, for both embeddings
    means = table.groupby(["system", "subject"])[["clip_i", "dino"]].mean()
    for subject in ("s0", "s1"):
        assert (means.loc[("close", subject)] > means.loc[("blank", subject)]).all()
    report = tmp_path / "out" / "report"
    assert summary.report == report / "index.html"
    from_parquet = pd.read_parquet(report / "scores.parquet")
    pd.testing.assert_frame_equal(from_parquet, table)
    assert pd.read_csv(report / "scores.csv").id.tolist() == table.id.tolist()
    _check_html(report, n_sheets=4)
    assert not (report / "plots" / "checkpoints.png").exists()  # no steps given


def _check_html(report: Path, n_sheets: int) -> None:
    html = (report / "index.html").read_text()
    sources = re.findall(r"<img (?:class='wide' )?src='([^']+)'", html)
    assert {"plots/per_subject.png", "plots/plane.png"} <= set(sources)
    assert len({s for s in sources if s.startswith("sheets/ref__")}) == 2  # one reference per subject
    assert len([s for s in sources if s.startswith("sheets/") and "ref__" not in s]) == n_sheets * 3
    for src in sources:  # relative, inside the report folder, real pictures
        assert not src.startswith(("/", "..")) and (report / src).stat().st_size > 500
        assert Image.open(report / src).format in ("PNG", "JPEG")
    assert html.index("Systems ranked") < html.index("plots/plane.png") < html.index("Settings") < html.index("<details>")
    assert "not significant" in html or "significant" in html
    assert str(report.parent.parent) not in html  # names, not the machine's paths


def test_aggregates_are_means_and_cp_x_pf_is_the_product_of_means():
    frame = pd.DataFrame({
        "id": list("abcd"), "system": ["x"] * 4, "step": pd.array([None] * 4, dtype="Int64"), "subject": ["s0", "s0", "s1", "s1"],
        "subject_category": ["animal", "animal", "object", "object"], "prompt_category": ["p", "q", "p", "q"],
        "clip_i": [1.0, 0.5, 0.0, 0.5], "clip_t": np.nan, "dino": [0.2] * 4, "cp": [1.0, 0.0, 0.5, 0.5],
        "pf": [0.0, 1.0, 1.0, 1.0], "recon_mse": np.nan,
    })  # fmt: skip
    agg = aggregate(frame).set_index(["level", "group"])
    overall = agg.loc[("overall", "all")]
    assert overall.images == 4 and overall.clip_i == pytest.approx(0.5)
    assert overall.cp_x_pf == pytest.approx(0.5 * 0.75)  # not the mean of per-image products (0.25)
    assert agg.loc[("subject", "s0")].cp == pytest.approx(0.5) and agg.loc[("subject_category", "object")].pf == 1.0
    assert agg.loc[("prompt_category", "q")].clip_i == pytest.approx(0.5)


def test_checkpoint_curves_and_resume_of_scores(tmp_path, embed_folders):
    cfg = ab_config(tmp_path, embed_folders, steps=(200, 100))
    first = run_eval(cfg)
    assert (tmp_path / "out" / "report" / "plots" / "checkpoints.png").stat().st_size > 1000
    again = run_eval(cfg)  # everything is in the logs: nothing recomputed, same table
    assert again.embedded == 0
    pd.testing.assert_frame_equal(first.table, again.table)
    assert first.table.step.tolist() == [100] * 6 + [200] * 6  # "blank" sorts first
