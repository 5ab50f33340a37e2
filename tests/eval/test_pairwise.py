"""Pairwise A/B judging through the real openai client against the local protocol server: known answers,
both orders, position bias, agreement with pointwise, resume; and the statistics under it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dsd.eval import stats
from dsd.eval.pairwise import CRITERIA, PAIR_LOG
from dsd.eval.run import EvalConfig, JudgeSettings, run_eval
from dsd.eval.stages import ImageSource
from dsd.eval.tables import differences
from tests.eval.eval_bench import make_bench
from tests.eval_fixtures import degrade
from tests.support.llm_server import FakeLLMServer

AMOUNT = {"close": 0.05, "medium": 0.5, "far": 1.0}


def write_systems(root, bench, names=("close", "medium", "far")):
    for name in names:
        for ref in sorted((bench / "subjects").glob("*/ref.png")):
            image = Image.open(ref).convert("RGB")
            for k in range(3):
                (root / name / ref.parent.name).mkdir(parents=True, exist_ok=True)
                degrade(image, AMOUNT[name], seed=k).save(root / name / ref.parent.name / f"p{k:02d}.png")
    return [ImageSource(n, root / n) for n in names]


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32)), dtype=float)


def _distance(req, k: int) -> float:
    return float(np.abs(_pixels(req.images[0]) - _pixels(req.images[k])).mean())


def seeing_judge(req) -> dict:
    """Answers by looking: the output closer to the reference keeps the identity better (pointwise: a higher CP);
    prompt following is a tie (pointwise: the same PF)."""
    props = set(req.json_schema["properties"])
    text = {p: "looked" for p in props}
    if "identity" in props:
        a, b = _distance(req, 1), _distance(req, 2)
        return {**text, "identity": "A" if a < b else "B", "prompt": "tie"}
    if "reference_features" in props:
        return {**text, "score": int(np.clip(4 - _distance(req, 1) / 15, 0, 4))}
    return {**text, "score": 2}


def first_shown_judge(req) -> dict:
    """A judge with total position bias: the first-shown output always wins."""
    props = set(req.json_schema["properties"])
    if "identity" in props:
        return {**{p: "first" for p in props}, "identity": "A", "prompt": "A"}
    return {**{p: "x" for p in props}, "score": 2}


def config(tmp_path, url, sources, bench) -> EvalConfig:
    return EvalConfig(bench=bench, out=tmp_path / "out", sources=sources, pairwise=True, progress=False,
                      judge=JudgeSettings("openai", "judge-model", url, concurrency=4))  # fmt: skip


def test_pairwise_ranks_known_answers_in_both_orders_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    bench = make_bench(tmp_path / "bench")
    sources = write_systems(tmp_path, bench)
    with FakeLLMServer(responder=seeing_judge) as srv:
        summary = run_eval(config(tmp_path, srv.openai_base_url, sources, bench))
        pair_requests = [r for r in srv.requests if "identity" in (r.json_schema or {}).get("properties", {})]
        assert len(pair_requests) == 3 * 6 * 2  # 3 pairs x 6 items x 2 orders
        assert all(len(r.images) == 3 for r in pair_requests)  # reference, A, B
        assert sum("riding a dragon" in r.prompt for r in pair_requests) == 3 * 2 * 2  # the prompt is shown
        asked = len(srv.requests)
        again = run_eval(config(tmp_path, srv.openai_base_url, sources, bench))
        assert len(srv.requests) == asked
        assert again.pair_judged == 0 and again.judged == 0  # everything from the logs
    assert summary.pair_judged == 18 and summary.pair_usage["requests"] == 36
    identity = summary.pairwise["criteria"]["identity"]
    assert identity.ranking == ["close", "medium", "far"]
    assert identity.lo[0] > identity.hi[2]  # close vs far: intervals apart
    assert identity.position_bias == 0.0 and identity.first_shown_wins == pytest.approx(0.5)
    assert identity.agreement == 1.0 and identity.pointwise_metric == "cp" and identity.agreement_items > 0
    assert identity.rank_agreement == 1.0  # the same order as mean CP
    win = identity.win_rate
    assert win[0][2] == 1.0 and win[2][0] == 0.0  # close always beat far
    prompt = summary.pairwise["criteria"]["prompt"]
    assert prompt.ties == prompt.games == 36 and max(abs(s) for s in prompt.strength) < 1e-6
    assert summary.pairwise["usage"]["requests"] == 36
    assert again.pairwise["criteria"]["identity"].strength == identity.strength  # same records, same figures
    html = (tmp_path / "out" / "report" / "index.html").read_text()
    assert "Pairwise A/B judge" in html and "plots/pairwise.png" in html and "Position bias" in html


def test_position_bias_is_measured_and_cancels(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    bench = make_bench(tmp_path / "bench")
    sources = write_systems(tmp_path, bench, ("close", "far"))
    with FakeLLMServer(responder=first_shown_judge) as srv:
        summary = run_eval(config(tmp_path, srv.openai_base_url, sources, bench))
    for criterion in CRITERIA:
        c = summary.pairwise["criteria"][criterion]
        assert c.position_bias == 1.0 and c.first_shown_wins == 1.0
        assert c.win_rate[0][1] == 0.5 and abs(c.strength[0]) < 1e-6  # both orders: each system won once per item
        assert c.lo[0] <= 0 <= c.hi[0]


def test_refused_order_is_named_and_the_other_order_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    bench = make_bench(tmp_path / "bench", subjects=1, prompts=[{"prompt": "a toy"}])

    def refuse_reversed(req):
        props = set(req.json_schema["properties"])
        if "identity" in props and _distance(req, 1) > _distance(req, 2):
            return ("refusal",)  # the order that shows the far output first
        return seeing_judge(req)

    sources = write_systems(tmp_path, bench, ("close", "far"))
    with FakeLLMServer(responder=refuse_reversed) as srv:
        summary = run_eval(config(tmp_path, srv.openai_base_url, sources, bench))
    from dsd.manifest import read_records

    (rec,) = read_records(tmp_path / "out" / "scores" / PAIR_LOG)
    assert rec["answers"]["ba"] == {"identity": None, "prompt": None} and "refused" in rec["failures"][0]
    assert summary.pairwise["criteria"]["identity"].games == 1


def test_bradley_terry_and_bootstrap_known_answers():
    wins = np.array([[0, 8, 9], [2, 0, 6], [1, 4, 0]], float)
    s = stats.bradley_terry(wins, prior=0.0)
    p01 = 1 / (1 + np.exp(s[1] - s[0]))
    # MM fixed point: each system's expected wins equal its observed wins
    expected = [sum((wins[i, j] + wins[j, i]) / (1 + np.exp(s[j] - s[i])) for j in range(3) if j != i) for i in range(3)]
    np.testing.assert_allclose(expected, wins.sum(1), rtol=1e-6)
    assert 0.5 < p01 < 0.9 and abs(s.sum()) < 1e-9
    values = np.arange(20, dtype=float).reshape(-1, 1)
    point, lo, hi, _ = stats.mean_interval(values, np.repeat(np.arange(5), 4))
    assert point[0] == 9.5 and lo[0] < 9.5 < hi[0]
    assert np.array_equal(stats.mean_interval(values, np.repeat(np.arange(5), 4))[1], lo)  # same seed, same interval


def test_differences_say_when_they_are_not_significant():
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for subject in range(12):
        base = rng.normal(0.5, 0.1)
        for prompt in range(4):
            noise = rng.normal(0, 0.05)
            rows += [{"system": "a", "subject": f"s{subject}", "prompt_id": f"p{prompt}", "clip_i": base + noise + 0.1},
                     {"system": "b", "subject": f"s{subject}", "prompt_id": f"p{prompt}", "clip_i": base + noise + 0.001},
                     {"system": "c", "subject": f"s{subject}", "prompt_id": f"p{prompt}", "clip_i": base + rng.normal(0, 0.05)}]
    diffs = differences(pd.DataFrame(rows)).set_index(["a", "b"])
    assert diffs.loc[("a", "b")].significant and diffs.loc[("a", "b")]["diff"] == pytest.approx(0.099)
    assert not diffs.loc[("b", "c")].significant  # 0.001 apart plus noise: the interval holds 0


def test_cli_pairwise_needs_a_judge_and_two_systems_and_prints_the_verdicts(tmp_path, monkeypatch, capsys):
    from dsd.__main__ import main

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    bench = make_bench(tmp_path / "bench")
    write_systems(tmp_path, bench, ("close", "far"))
    base = ["eval", "--bench", str(bench), "--out", str(tmp_path / "out"), "--images", f"close={tmp_path / 'close'}",
            "--no-progress"]  # fmt: skip
    assert main([*base, "--pairwise"]) == 2
    assert "--pairwise compares systems with the judge" in capsys.readouterr().err
    with FakeLLMServer(responder=seeing_judge) as srv:
        code = main([*base, "--images", f"far={tmp_path / 'far'}", "--judge", "openai", "--judge-model", "m",
                     "--judge-base-url", srv.openai_base_url, "--pairwise"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "systems ranked by cp_x_pf" in out and "A/B cp: close ahead of far" in out
    assert "pairwise identity: close +" in out and "pairwise judge: 6 pair(s) judged, 12 requests" in out
