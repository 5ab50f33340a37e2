"""dsd.enhance: DSD prompt enhancement end to end against the fake LLM server."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from dsd.enhance import (
    CAPTION_INSTRUCTION,
    MAX_PROMPT_TOKENS,
    approx_clip_tokens,
    clean_prompt,
    enhance_prompt,
)
from dsd.providers import ProviderConfig, ProviderResponseError, make_provider
from tests.support.llm_server import FakeLLMServer, RecordedRequest

CAPTION = "A small red ceramic fox figurine with a green dot on its flank, on a wooden desk, studio light, front view"
KINDS = ["openai", "gemini"]


@pytest.fixture(autouse=True)
def api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("GEMINI_API_KEY", "gm-test")


def two_step_responder(rewrite: str):
    def respond(req: RecordedRequest) -> str:
        if req.images:
            return f"Here is the prompt:\n{CAPTION}"
        return rewrite

    return respond


def provider_for(kind: str, srv: FakeLLMServer, **extra):
    base = srv.openai_base_url if kind == "openai" else srv.gemini_base_url
    return make_provider(ProviderConfig(kind=kind, model=f"{kind}-model", base_url=base, timeout_s=2,
                                        max_retries=1, backoff_base_s=0.01, **extra))


@pytest.fixture
def reference() -> Image.Image:
    return Image.new("RGB", (1200, 900), (180, 40, 30))


@pytest.mark.parametrize("kind", KINDS)
def test_enhance_end_to_end(kind: str, reference: Image.Image) -> None:
    answer = '"A red ceramic fox figurine with a green dot on its flank, surfing a wave at sunset"'
    with FakeLLMServer(responder=two_step_responder(answer)) as srv, provider_for(kind, srv) as provider:
        result = enhance_prompt(provider, reference, "the fox surfing a wave at sunset")
        caption_req, rewrite_req = srv.requests
    assert result.caption == CAPTION
    assert result.prompt == answer.strip('"')
    assert result.usage.requests == 2 and result.usage.input_tokens > 0
    # step 1: the VLM saw the reference (downscaled to 768 px) with the authors' instruction
    assert caption_req.prompt == CAPTION_INSTRUCTION
    assert len(caption_req.images) == 1
    assert Image.open(io.BytesIO(caption_req.images[0])).size == (768, 576)
    # step 2: the LLM got the caption and every word of the user's prompt, and no image
    assert not rewrite_req.images
    assert CAPTION in rewrite_req.prompt and "the fox surfing a wave at sunset" in rewrite_req.prompt


def test_separate_caption_provider(reference: Image.Image) -> None:
    with FakeLLMServer(responder=two_step_responder("a fox in space")) as vlm_srv, \
            FakeLLMServer(responder=two_step_responder("a red ceramic fox in space")) as llm_srv:
        with provider_for("gemini", vlm_srv) as vlm, provider_for("openai", llm_srv) as llm:
            result = enhance_prompt(llm, reference, "a fox in space", caption_model_provider=vlm)
        assert [r.api for r in vlm_srv.requests] == ["gemini"] and vlm_srv.requests[0].images
        assert [r.api for r in llm_srv.requests] == ["openai"] and not llm_srv.requests[0].images
    assert result.prompt == "a red ceramic fox in space" and result.caption == CAPTION


@pytest.mark.parametrize("kind", KINDS)
def test_enhance_is_cached(kind: str, reference: Image.Image, tmp_path: Path) -> None:
    with FakeLLMServer(responder=two_step_responder("a fox on the moon")) as srv:
        with provider_for(kind, srv, cache_dir=str(tmp_path)) as provider:
            first = enhance_prompt(provider, reference, "a fox on the moon")
        with provider_for(kind, srv, cache_dir=str(tmp_path)) as provider:
            second = enhance_prompt(provider, reference, "a fox on the moon")
            assert len(srv.requests) == 2  # nothing new went out
            third = enhance_prompt(provider, reference, "a fox under the sea")
        assert len(srv.requests) == 3  # caption reused, only the rewrite is new
    assert second.prompt == first.prompt and second.caption == first.caption
    assert second.usage.cached == 2 and second.usage.requests == 0 and second.usage.cost_usd == 0
    assert third.usage.cached == 1 and third.usage.requests == 1


def test_long_and_multiline_answers_are_cleaned(reference: Image.Image) -> None:
    long_answer = "Enhanced prompt:\n" + ", ".join(f"detail{i} word" for i in range(120))
    with FakeLLMServer(responder=two_step_responder(long_answer)) as srv, provider_for("openai", srv) as provider:
        result = enhance_prompt(provider, reference, "a fox")
    assert "\n" not in result.prompt and not result.prompt.lower().startswith("enhanced")
    assert approx_clip_tokens(result.prompt) <= MAX_PROMPT_TOKENS - 2
    assert result.prompt.startswith("detail0 word, detail1 word") and not result.prompt.endswith(",")


def test_empty_answer_after_cleaning_raises(reference: Image.Image) -> None:
    with FakeLLMServer(responder=two_step_responder('Prompt: ""')) as srv, provider_for("gemini", srv) as provider:
        with pytest.raises(ProviderResponseError, match="empty enhanced prompt"):
            enhance_prompt(provider, reference, "a fox")


def test_empty_user_prompt_is_rejected(reference: Image.Image) -> None:
    with FakeLLMServer() as srv, provider_for("openai", srv) as provider:
        with pytest.raises(ValueError, match="non-empty prompt"):
            enhance_prompt(provider, reference, "   ")
        assert srv.requests == []


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("A fox in the snow", "A fox in the snow"),
        ('Prompt: "A fox in the snow"', "A fox in the snow"),
        ("Here's the rewritten prompt:\n\nA fox\n in the snow.", "A fox in the snow."),
        ("```\ncaption: a fox, snow\n```", "a fox, snow"),
        ("“A fox”", "A fox"),
        ("", ""),
    ],
)
def test_clean_prompt(raw: str, expected: str) -> None:
    assert clean_prompt(raw) == expected


def test_clean_prompt_truncates_to_clip_budget() -> None:
    text = " ".join(["word"] * 200)
    out = clean_prompt(text)
    assert approx_clip_tokens(out) == MAX_PROMPT_TOKENS - 2
    assert clean_prompt(text, max_tokens=12) == " ".join(["word"] * 10)
