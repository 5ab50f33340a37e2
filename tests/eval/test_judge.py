"""The VLM judge through the real openai / google-genai clients against the local protocol server."""

from __future__ import annotations

import asyncio
import re

import pytest
from PIL import Image

from dsd.eval.judge import CP_SCHEMA, PF_SCHEMA, Judge, JudgeConfigError, JudgeUnavailable
from dsd.providers import ProviderConfig, make_provider
from tests.support.llm_server import FakeLLMServer

REF = Image.new("RGB", (96, 64), (200, 40, 40))
OUT = Image.new("RGB", (600, 300), (40, 40, 200))  # larger than max_image_side: sent downscaled


def cfg(server, kind="openai", **kw) -> ProviderConfig:
    base = server.openai_base_url if kind == "openai" else server.gemini_base_url
    defaults = dict(kind=kind, model="judge-model", base_url=base, timeout_s=5.0, max_retries=2, backoff_base_s=0.01,
                    backoff_max_s=0.02, max_malformed_retries=0, max_concurrency=4)  # fmt: skip
    defaults.update(kw)
    return ProviderConfig(**defaults)


def rubric(cp: list[int], pf: list[int]):
    """CP / PF answers whose score depends on the repeat ("judgement k of n") of the request."""

    def respond(req):
        props = set(req.json_schema["properties"])
        k = int(m.group(1)) - 1 if (m := re.search(r"judgement (\d+) of", req.prompt)) else 0
        score = (cp if "reference_features" in props else pf)[k]
        return {**{p: "because" for p in props if p != "score"}, "score": score}

    return respond


@pytest.mark.parametrize("kind", ["openai", "gemini"])
def test_scores_are_the_rubric_over_four_averaged_over_repeats(kind):
    with FakeLLMServer(responder=rubric(cp=[4, 2, 3], pf=[1, 1, 1])) as srv, make_provider(cfg(srv, kind)) as provider:
        score = Judge(provider, repeats=3).score_sync(REF, OUT, "a blue box on a table")
        requests = srv.requests
    assert score.cp_runs == [2, 3, 4] and score.pf_runs == [1, 1, 1]
    assert score.cp == pytest.approx(0.75) and score.pf == pytest.approx(0.25)
    assert score.cp_std == pytest.approx(((0.25**2 + 0 + 0.25**2) / 3) ** 0.5) and score.pf_std == 0.0
    assert score.cp_x_pf == pytest.approx(0.1875) and score.failures == []
    cp_reqs = [r for r in requests if "reference_features" in r.json_schema["properties"]]
    pf_reqs = [r for r in requests if "prompt_elements" in r.json_schema["properties"]]
    assert len(cp_reqs) == len(pf_reqs) == 3
    assert all(len(r.images) == 2 for r in cp_reqs) and all(len(r.images) == 1 for r in pf_reqs)  # PF never sees the reference
    assert all("a blue box on a table" in r.prompt for r in pf_reqs)
    assert max(Image.open(__import__("io").BytesIO(pf_reqs[0].images[0])).size) == 512
    assert all(r.temperature == pytest.approx(0.7) for r in requests)
    assert score.usage.requests == 6 and score.usage.input_tokens > 0


def test_schema_puts_the_reasoning_before_the_score():
    for schema in (CP_SCHEMA, PF_SCHEMA):
        assert list(schema["properties"])[-1] == "score" and schema["properties"]["score"]["enum"] == [0, 1, 2, 3, 4]


def test_refused_and_malformed_runs_are_dropped_and_named():
    with FakeLLMServer(responder=rubric(cp=[4, 4], pf=[2, 2])) as srv, make_provider(cfg(srv, max_concurrency=1)) as provider:
        srv.queue_failures([("refusal",), ("malformed",)])  # the first two requests: both CP runs
        score = Judge(provider, repeats=2).score_sync(REF, OUT, "p")
    assert score.cp is None and score.cp_std is None and score.cp_x_pf is None
    assert score.pf == pytest.approx(0.5)
    assert len(score.failures) == 2
    assert any("refused" in f for f in score.failures) and any("malformed" in f for f in score.failures)


def test_out_of_rubric_score_is_malformed():
    with FakeLLMServer(responder=lambda req: {p: "x" for p in req.json_schema["properties"]} | {"score": 7}) as srv:
        with make_provider(cfg(srv)) as provider:
            score = Judge(provider).score_sync(REF, OUT, "p")
    assert score.cp is None and score.pf is None and len(score.failures) == 2 and "not one of" in score.failures[0]


@pytest.mark.parametrize("kind", ["openai", "gemini"])
def test_429_and_500_are_retried(kind):
    with FakeLLMServer(responder=rubric(cp=[3], pf=[4])) as srv, make_provider(cfg(srv, kind, max_concurrency=1)) as provider:
        srv.queue_failures([("status", 429, {"retry-after": "0.05"}), ("status", 500)])
        score = Judge(provider).score_sync(REF, OUT, "p")
    assert (score.cp, score.pf) == (0.75, 1.0) and score.usage.retries == 2 and score.failures == []


def test_server_down_is_unavailable_and_a_bad_key_is_a_config_error():
    with FakeLLMServer(responder=rubric(cp=[3], pf=[4])) as srv, make_provider(cfg(srv, max_retries=1)) as provider:
        srv.queue_failures([("status", 503)] * 4)
        with pytest.raises(JudgeUnavailable, match="503|unavailable|failed"):
            Judge(provider).score_sync(REF, OUT, "p")
    with FakeLLMServer(api_key="right-key") as srv:
        with make_provider(cfg(srv, api_key_env="DSD_TEST_JUDGE_KEY"), api_key="wrong-key") as provider:
            with pytest.raises(JudgeConfigError):
                Judge(provider).score_sync(REF, OUT, "p")


def test_cache_by_content_hash_and_repeats_are_distinct_entries(tmp_path):
    with FakeLLMServer(responder=rubric(cp=[1, 3], pf=[2, 4])) as srv:
        with make_provider(cfg(srv, cache_dir=str(tmp_path / "cache"))) as provider:
            first = Judge(provider, repeats=2).score_sync(REF, OUT, "p")
        assert len(srv.requests) == 4
        with make_provider(cfg(srv, cache_dir=str(tmp_path / "cache"))) as provider:
            again = Judge(provider, repeats=2).score_sync(REF, OUT, "p")
            assert len(srv.requests) == 4 and provider.usage.cached == 4
            other = Judge(provider, repeats=2).score_sync(REF, OUT, "another prompt")  # PF misses, CP hits
            assert len(srv.requests) == 6
    assert (first.cp, first.pf, first.cp_runs) == (again.cp, again.pf, again.cp_runs) == (0.5, 0.75, [1, 3])
    assert other.cp == first.cp


def test_async_score_on_the_callers_loop_and_score_many():
    with FakeLLMServer(responder=rubric(cp=[2], pf=[3]), latency_s=0.05) as srv, make_provider(cfg(srv)) as provider:
        judge = Judge(provider)

        async def both():
            return await asyncio.gather(judge.score(REF, OUT, "p"), judge.score(OUT, REF, "q"))

        scores = asyncio.run(both())
        assert [(s.cp, s.pf) for s in scores] == [(0.5, 0.75)] * 2
    with FakeLLMServer(responder=rubric(cp=[2], pf=[3])) as srv, make_provider(cfg(srv, max_concurrency=1)) as provider:
        srv.queue_failures([("status", 503)] * 3)  # item 0's first run exhausts its 1 + 2 retries
        items = [(REF, OUT, f"prompt {i}") for i in range(5)]
        results = dict(Judge(provider).score_many(items, chunk=2))
    assert sorted(results) == list(range(5))
    assert isinstance(results[0], JudgeUnavailable)
    assert all(results[i].cp == 0.5 and results[i].pf == 0.75 for i in range(1, 5))


def test_small_jpeg_files_are_sent_as_they_are_others_are_encoded(tmp_path):
    from dsd.eval.judge import encode_image

    small, big, png = tmp_path / "v.jpg", tmp_path / "big.jpg", tmp_path / "p.png"
    REF.save(small, quality=80)
    OUT.save(big, quality=80)
    REF.save(png)
    assert encode_image(small) == small.read_bytes()  # a judge view: no decode, no re-encode
    for path in (big, png):
        with Image.open(__import__("io").BytesIO(encode_image(path))) as im:
            assert im.format == "JPEG" and max(im.size) <= 512
    assert encode_image(small, image_format="png")[:4] == b"\x89PNG"


def test_debiased_judge_penalises_copying_in_cp_only():
    with FakeLLMServer(responder=rubric(cp=[2], pf=[4])) as srv, make_provider(cfg(srv)) as provider:
        Judge(provider, debiased=True).score_sync(REF, OUT, "p")
        Judge(provider).score_sync(REF, OUT, "p")
        cp = [r.prompt for r in srv.requests if "reference_features" in r.json_schema["properties"]]
        pf = [r.prompt for r in srv.requests if "prompt_elements" in r.json_schema["properties"]]
    assert sum("Do not reward copying" in p for p in cp) == 1 and not any("copying" in p for p in pf)
    assert all(r.temperature == 0.0 for r in srv.requests)  # one judgement: deterministic
