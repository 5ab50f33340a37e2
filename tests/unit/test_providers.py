"""dsd.providers: the real openai / google-genai clients against tests.support.llm_server.FakeLLMServer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from dsd.providers import (
    ChatRequest,
    ProviderAuthError,
    ProviderConfig,
    ProviderError,
    ProviderRefusal,
    ProviderResponseError,
    ProviderUnavailable,
    Usage,
    image_to_png_bytes,
    make_provider,
    request_cache_key,
)
from dsd.providers.endpoints import (
    NO_KEY,
    OFFICIAL_ENDPOINTS,
    EndpointError,
    EndpointNotAllowed,
    check_allowed,
    endpoint_for,
    is_official,
)
from dsd.providers.gemini_provider import _retry_info_delay
from dsd.providers.schema import SchemaMismatch, parse_json_answer
from tests.support.llm_server import FakeLLMServer, fake_object_for_schema

KINDS = ["openai", "gemini"]
OPENAI_KEY = "sk-test-SECRET-0123456789abcdefXYZ"
GEMINI_KEY = "AIza-test-SECRET-0123456789abcdefXYZ"
SCHEMA = {
    "type": "object",
    "properties": {
        "subject": {"type": "string"},
        "identical": {"type": "boolean"},
        "score": {"type": "integer"},
    },
    "required": ["subject", "identical", "score"],
}


@pytest.fixture(autouse=True)
def api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)


@pytest.fixture
def server():
    with FakeLLMServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def png() -> bytes:
    image = Image.new("RGB", (16, 12), (200, 30, 40))
    image.putpixel((3, 4), (0, 255, 0))
    return image_to_png_bytes(image)


def make(kind: str, srv: FakeLLMServer, **overrides):
    settings = dict(
        kind=kind,
        model="test-model",
        base_url=srv.openai_base_url if kind == "openai" else srv.gemini_base_url,
        timeout_s=2.0,
        max_retries=2,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
    )
    settings.update(overrides)
    return make_provider(ProviderConfig(**settings))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", KINDS)
def test_plain_text_and_system(kind: str, server: FakeLLMServer) -> None:
    with make(kind, server) as provider:
        result = provider.complete(ChatRequest("a red fox  in snow", system="be brief", max_output_tokens=77))
    assert result.text == "Echo: a red fox in snow"
    assert result.data is None and result.cached is False
    seen = server.requests[-1]
    assert seen.prompt == "a red fox  in snow" and seen.system == "be brief"
    assert seen.model == "test-model" and seen.max_output_tokens == 77 and seen.temperature == 0.0
    assert seen.path.endswith("/chat/completions" if kind == "openai" else "/v1beta/models/test-model:generateContent")


@pytest.mark.parametrize("kind", KINDS)
def test_images_reach_the_server_byte_exact(kind: str, server: FakeLLMServer, png: bytes) -> None:
    jpeg_buf = __import__("io").BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(jpeg_buf, format="JPEG")
    with make(kind, server) as provider:
        provider.complete(ChatRequest("compare", images=(png, jpeg_buf.getvalue())))
    seen = server.requests[-1]
    assert seen.images == [png, jpeg_buf.getvalue()]
    assert seen.image_mime_types == ["image/png", "image/jpeg"]


def test_non_image_bytes_are_rejected_with_advice(server: FakeLLMServer) -> None:
    with make("openai", server) as provider, pytest.raises(ValueError, match="image_to_png_bytes"):
        provider.complete(ChatRequest("x", images=(b"not an image",)))


@pytest.mark.parametrize("kind", KINDS)
def test_structured_output(kind: str, server: FakeLLMServer, png: bytes) -> None:
    server.responder = lambda req: {"subject": "fox", "identical": False, "score": 3}
    with make(kind, server) as provider:
        result = provider.complete(ChatRequest("judge", images=(png,), json_schema=SCHEMA, schema_name="verdict"))
    assert result.data == {"subject": "fox", "identical": False, "score": 3}
    body = server.requests[-1].body
    if kind == "openai":
        fmt = body["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "verdict"
        assert fmt["json_schema"]["strict"] is True
        assert fmt["json_schema"]["schema"]["additionalProperties"] is False
        assert fmt["json_schema"]["schema"]["required"] == SCHEMA["required"]
    else:
        gen = body["generationConfig"]
        assert gen["responseMimeType"] == "application/json"
        assert gen["responseJsonSchema"] == SCHEMA


@pytest.mark.parametrize("kind", KINDS)
def test_default_responder_fits_schema(kind: str, server: FakeLLMServer) -> None:
    with make(kind, server) as provider:
        result = provider.complete(ChatRequest("judge", json_schema=SCHEMA))
    assert set(result.data) == {"subject", "identical", "score"}
    assert isinstance(result.data["identical"], bool) and isinstance(result.data["score"], int)


@pytest.mark.parametrize("kind,header", [("openai", {"retry-after": "0.4"}), ("gemini", {"retry-after-ms": "400"})])
def test_429_honours_retry_after(kind: str, header: dict, server: FakeLLMServer) -> None:
    server.queue_failures([("status", 429, header)])
    # backoff 0: any wait measured comes from the server's retry-after
    with make(kind, server, backoff_base_s=0.0) as provider:
        start = time.monotonic()
        result = provider.complete(ChatRequest("hi"))
        elapsed = time.monotonic() - start
    assert 0.38 <= elapsed < 10  # waited the 0.4 s asked for (the upper bound only catches s/ms mix-ups)
    assert result.usage.retries == 1 and result.usage.requests == 2
    gap = server.requests[1].received_at - server.requests[0].received_at
    assert gap >= 0.38


@pytest.mark.parametrize("kind", KINDS)
def test_500_then_success(kind: str, server: FakeLLMServer) -> None:
    server.queue_failures([("status", 500), ("status", 503)])
    with make(kind, server) as provider:
        result = provider.complete(ChatRequest("hi"))
    assert result.text == "Echo: hi"
    assert result.usage.retries == 2 and len(server.requests) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_timeout_then_success(kind: str, server: FakeLLMServer) -> None:
    # the server would answer after 30 s; the client gives up after 2 s (long enough for the retry on a
    # loaded machine) and asks again: far below 30 s, whatever the load
    server.queue_failures([("timeout", 30.0)])
    with make(kind, server, timeout_s=2.0) as provider:
        start = time.monotonic()
        result = provider.complete(ChatRequest("hi"))
        elapsed = time.monotonic() - start
    assert result.text == "Echo: hi" and result.usage.retries == 1
    assert 1.9 <= elapsed < 20


@pytest.mark.parametrize("kind", KINDS)
def test_retries_exhausted(kind: str, server: FakeLLMServer) -> None:
    server.queue_failures([("status", 502)] * 3)
    with make(kind, server, max_retries=2) as provider, pytest.raises(ProviderUnavailable) as info:
        provider.complete(ChatRequest("hi"))
    message = str(info.value)
    assert server.url in message and "3 tries" in message and "502" in message
    assert len(server.requests) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_json_retried_then_error(kind: str, server: FakeLLMServer) -> None:
    server.queue_failures([("malformed",)])
    with make(kind, server) as provider:
        ok = provider.complete(ChatRequest("judge", json_schema=SCHEMA))
        assert ok.data is not None and ok.usage.retries == 1
        server.queue_failures([("malformed",)] * 3)
        with pytest.raises(ProviderResponseError, match="not valid JSON"):
            provider.complete(ChatRequest("judge", json_schema=SCHEMA))
    assert len(server.requests) == 2 + 3  # 1 + max_malformed_retries(2)


@pytest.mark.parametrize("kind", KINDS)
def test_schema_mismatch_is_malformed(kind: str, server: FakeLLMServer) -> None:
    server.responder = lambda req: {"subject": "fox", "identical": "yes", "score": 1}
    with make(kind, server) as provider, pytest.raises(ProviderResponseError, match=r"\$\.identical"):
        provider.complete(ChatRequest("judge", json_schema=SCHEMA))


@pytest.mark.parametrize("kind", KINDS)
def test_broken_http_body_is_retried(kind: str, server: FakeLLMServer) -> None:
    server.queue_failures([("malformed",)])  # no schema: the HTTP body itself is broken JSON
    with make(kind, server) as provider:
        result = provider.complete(ChatRequest("hi"))
    assert result.text == "Echo: hi" and result.usage.retries == 1


@pytest.mark.parametrize("kind", KINDS)
def test_refusal_not_retried(kind: str, server: FakeLLMServer) -> None:
    server.queue_failures([("refusal",)])
    with make(kind, server) as provider, pytest.raises(ProviderRefusal):
        provider.complete(ChatRequest("something"))
    assert len(server.requests) == 1


def sent_secrets(srv: FakeLLMServer) -> list[str]:
    """The header values of every recorded request that carry one of the environment's keys."""
    return [v for r in srv.requests for v in r.headers.values() if OPENAI_KEY in v or GEMINI_KEY in v]


@pytest.mark.parametrize("kind", KINDS)
def test_environment_keys_never_reach_another_endpoint(kind: str, server: FakeLLMServer) -> None:
    """OPENAI_API_KEY / GEMINI_API_KEY are set, base_url is a listener on 127.0.0.1: it gets no key."""
    with make(kind, server) as provider:
        assert provider.complete(ChatRequest("hi")).text == "Echo: hi"
    headers = server.requests[0].headers
    assert sent_secrets(server) == []
    if kind == "openai":
        assert "Authorization" not in headers
    else:  # google-genai cannot run without a key: the placeholder, which is no secret
        assert headers.get("x-goog-api-key") == NO_KEY


@pytest.mark.parametrize("kind", KINDS)
def test_401_without_a_key_says_none_was_sent(kind: str) -> None:
    with FakeLLMServer(api_key="the-right-key") as srv, make(kind, srv) as provider:
        with pytest.raises(ProviderAuthError) as info:
            provider.complete(ChatRequest("hi"))
        assert len(srv.requests) == 0  # rejected before reaching the model
    message = str(info.value)
    assert "401" in message and "no API key was sent" in message and "DSD_ENDPOINT_KEYS" in message
    assert srv.url in message and OFFICIAL_ENDPOINTS[kind] in message
    assert OPENAI_KEY not in message and GEMINI_KEY not in message


@pytest.mark.parametrize("kind", KINDS)
def test_registered_endpoint_gets_exactly_its_key(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeLLMServer(api_key="gateway-key-0123") as srv, FakeLLMServer() as other:
        url = srv.openai_base_url if kind == "openai" else srv.gemini_base_url
        # Registered in another spelling (scheme in capitals, trailing slash): the normal form matches.
        spelled = url.replace("http://", "HTTP://") + "/"
        monkeypatch.setenv("DSD_ENDPOINT_KEYS", f"http://unused.example:1/v1=UNUSED, {spelled}=GATEWAY_KEY")
        monkeypatch.setenv("GATEWAY_KEY", "gateway-key-0123")
        with make(kind, srv) as provider:
            assert provider.complete(ChatRequest("hi")).text == "Echo: hi"
        with make(kind, other) as provider:  # same host, another port: not registered
            provider.complete(ChatRequest("hi"))
    assert len(srv.requests) == 1 and sent_secrets(srv) == []
    assert "gateway-key-0123" not in json.dumps([r.headers for r in other.requests])
    monkeypatch.setenv("GATEWAY_KEY", "a-wrong-one")
    with FakeLLMServer(api_key="gateway-key-0123") as srv:
        monkeypatch.setenv("DSD_ENDPOINT_KEYS", f"{srv.openai_base_url if kind == 'openai' else srv.url}=GATEWAY_KEY")
        with make(kind, srv) as provider, pytest.raises(ProviderAuthError, match="rejected the API key"):
            provider.complete(ChatRequest("hi"))


@pytest.mark.parametrize("value", ["http://h:1/v1=sk-the-key-itself-!", "no-equals-sign", "ftp://h/v1=NAME"])
def test_bad_endpoint_registration_is_a_clear_error(value: str, monkeypatch: pytest.MonkeyPatch,
                                                    server: FakeLLMServer) -> None:
    monkeypatch.setenv("DSD_ENDPOINT_KEYS", value)
    with make("openai", server) as provider, pytest.raises(ValueError, match="DSD_ENDPOINT_KEYS entry 1"):
        provider.complete(ChatRequest("hi"))
    assert server.requests == []


def test_official_endpoints_are_exact_scheme_and_host() -> None:
    assert is_official("openai", endpoint_for("openai", None))
    assert is_official("openai", endpoint_for("openai", "HTTPS://api.openai.com:443/v1/"))
    assert is_official("gemini", endpoint_for("gemini", "https://generativelanguage.googleapis.com/"))
    for kind, url in [("openai", "http://api.openai.com/v1"), ("openai", "https://api.openai.com.evil.test/v1"),
                      ("openai", "https://api.openai.com:8443/v1"), ("openai", "https://generativelanguage.googleapis.com"),
                      ("gemini", "https://evil.test/generativelanguage.googleapis.com")]:
        assert not is_official(kind, endpoint_for(kind, url)), url


def test_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    local = endpoint_for("openai", "http://127.0.0.1:8000/v1")
    check_allowed("openai", local)  # unset: any http(s) endpoint (it gets no key of the server's)
    monkeypatch.setenv("DSD_ALLOWED_BASE_URLS", "HTTP://127.0.0.1:8000/v1/,\nhttp://10.0.0.5/v1")
    check_allowed("openai", local)
    check_allowed("openai", endpoint_for("openai", None))  # the official endpoints stay allowed
    for url in ("http://127.0.0.1:8001/v1", "http://127.0.0.1:8000/v2", "https://127.0.0.1:8000/v1"):
        with pytest.raises(EndpointNotAllowed, match="DSD_ALLOWED_BASE_URLS"):
            check_allowed("openai", endpoint_for("openai", url))
    monkeypatch.setenv("DSD_ALLOWED_BASE_URLS", "127.0.0.1:8000")
    with pytest.raises(EndpointError, match="DSD_ALLOWED_BASE_URLS: base_url '127.0.0.1:8000'"):
        check_allowed("openai", local)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/v1", "127.0.0.1:8000/v1", "not a url",
                                 "http://127.0.0.1:8000/admin/users?x=", "http://user:pw@127.0.0.1/v1",
                                 "http://127.0.0.1:99999/v1", "gopher://h"])
def test_bad_base_url_is_an_input_error_before_any_request(url: str) -> None:
    with pytest.raises(ValueError, match="base_url") as info:
        ProviderConfig(kind="openai", model="m", base_url=url)
    assert "pw" not in str(info.value)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("code", [404, 500])
def test_error_pages_of_other_servers_are_not_echoed(kind: str, code: int, server: FakeLLMServer) -> None:
    page = "<html><body>internal admin: user list alice bob</body></html>"
    server.queue_failures([("html", code, page)] * (3 if code == 500 else 1))
    with make(kind, server) as provider, pytest.raises(ProviderError) as info:
        provider.complete(ChatRequest("hi"))
    assert f"HTTP {code}" in str(info.value)
    assert "alice" not in str(info.value) and "internal admin" not in str(info.value)
    # The provider's own JSON error message still comes through.
    server.queue_failures([("status", 400)])
    with make(kind, server) as provider, pytest.raises(ProviderError, match="injected HTTP 400"):
        provider.complete(ChatRequest("hi"))


def test_missing_key_names_env_var(monkeypatch: pytest.MonkeyPatch, server: FakeLLMServer) -> None:
    monkeypatch.delenv("GEMINI_API_KEY")
    with pytest.raises(ProviderAuthError, match="GEMINI_API_KEY or GOOGLE_API_KEY"):
        make("gemini", server, base_url=None).complete(ChatRequest("hi"))
    with pytest.raises(ProviderAuthError, match="MY_KEY"):
        make("openai", server, api_key_env="MY_KEY").complete(ChatRequest("hi"))


def test_correct_key_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "k-123")
    with FakeLLMServer(api_key="k-123") as srv:
        for kind in KINDS:
            with make(kind, srv, api_key_env="MY_KEY") as provider:
                assert provider.complete(ChatRequest("hi")).text == "Echo: hi"


@pytest.mark.parametrize("kind", KINDS)
def test_server_down_fails_fast(kind: str) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}" + ("/v1" if kind == "openai" else "")
    provider = make_provider(ProviderConfig(kind=kind, model="m", base_url=base, timeout_s=10.0, max_retries=2,
                                            backoff_base_s=0.05))
    start = time.monotonic()
    with provider, pytest.raises(ProviderUnavailable) as info:
        provider.complete(ChatRequest("hi"))
    assert time.monotonic() - start < 10.0  # refused at once, not 3 timeouts of 10 s (a margin for a loaded machine)
    assert f"127.0.0.1:{port}" in str(info.value) and "3 tries" in str(info.value)
    # A closed port, an open port that speaks no HTTP and a silent one read alike.
    assert "could not connect" in str(info.value) and "Errno" not in str(info.value)


@pytest.mark.parametrize("kind", KINDS)
def test_open_port_without_http_reads_like_a_closed_one(kind: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        base = f"http://127.0.0.1:{listener.getsockname()[1]}" + ("/v1" if kind == "openai" else "")
        stop = threading.Event()

        def hang_up() -> None:  # accept and close at once: no HTTP answer
            listener.settimeout(0.2)
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    listener.accept()[0].close()

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        provider = make_provider(ProviderConfig(kind=kind, model="m", base_url=base, timeout_s=1.0, max_retries=1,
                                                backoff_base_s=0.01))
        try:
            with provider, pytest.raises(ProviderUnavailable) as info:
                provider.complete(ChatRequest("hi"))
        finally:
            stop.set()
            thread.join(5)
    assert "could not connect, or no answer within 1s" in str(info.value)


@pytest.mark.parametrize("kind", KINDS)
def test_cache_hit_makes_no_request(kind: str, server: FakeLLMServer, png: bytes, tmp_path: Path) -> None:
    request = ChatRequest("judge", images=(png,), json_schema=SCHEMA)
    with make(kind, server, cache_dir=str(tmp_path)) as provider:
        first = provider.complete(request)
        second = provider.complete(request)
        assert len(server.requests) == 1
        assert first.cached is False and second.cached is True
        assert second.data == first.data and second.text == first.text
        assert second.usage == Usage(cached=1)
        assert provider.usage.cached == 1 and provider.usage.requests == 1
    key = request_cache_key(provider.config, request)
    assert (tmp_path / key[:2] / key[2:4] / f"{key}.json").is_file()
    # a fresh provider (another process) reuses the same files
    with make(kind, server, cache_dir=str(tmp_path)) as again:
        assert again.complete(request).cached is True
    assert len(server.requests) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_cache_is_per_endpoint(kind: str, png: bytes, tmp_path: Path) -> None:
    """Server A's answer (say, a poisoned caption) is never served for the same request to server B."""
    request = ChatRequest("caption this", images=(png,))
    with FakeLLMServer(responder=lambda r: "answer of A") as a, FakeLLMServer(responder=lambda r: "answer of B") as b:
        with make(kind, a, cache_dir=str(tmp_path)) as provider:
            assert provider.complete(request).text == "answer of A"
        with make(kind, b, cache_dir=str(tmp_path)) as provider:
            result = provider.complete(request)
        assert (result.text, result.cached) == ("answer of B", False)
        assert len(a.requests) == 1 and len(b.requests) == 1


def test_cache_key_covers_what_changes_the_answer(png: bytes) -> None:
    cfg = ProviderConfig(kind="openai", model="a")
    base = ChatRequest("p", system="s", images=(png,), json_schema=SCHEMA)
    key = request_cache_key(cfg, base)
    assert key == request_cache_key(cfg, ChatRequest("p", system="s", images=(png,), json_schema=dict(SCHEMA)))
    variants = [
        (ProviderConfig(kind="gemini", model="a"), base),
        (ProviderConfig(kind="openai", model="a", base_url="http://127.0.0.1:8000/v1"), base),
        (ProviderConfig(kind="openai", model="a", base_url="http://127.0.0.1:8001/v1"), base),
        (ProviderConfig(kind="openai", model="b"), base),
        (cfg, ChatRequest("q", system="s", images=(png,), json_schema=SCHEMA)),
        (cfg, ChatRequest("p", system=None, images=(png,), json_schema=SCHEMA)),
        (cfg, ChatRequest("p", system="s", images=(png + b"x",), json_schema=SCHEMA)),
        (cfg, ChatRequest("p", system="s", images=(png,), json_schema=None)),
        (cfg, ChatRequest("p", system="s", images=(png,), json_schema=SCHEMA, temperature=0.7)),
    ]
    keys = {request_cache_key(c, r) for c, r in variants}
    assert len(keys) == len(variants) and key not in keys


@pytest.mark.parametrize("kind", KINDS)
def test_usage_and_cost(kind: str, server: FakeLLMServer, png: bytes) -> None:
    server.queue_failures([("status", 500)])
    with make(kind, server, input_usd_per_mtok=2.0, output_usd_per_mtok=10.0) as provider:
        a = provider.complete(ChatRequest("one two three", images=(png,)))
        b = provider.complete(ChatRequest("four"))
        total = provider.usage
    # the fake server bills words + 258 tokens per image
    assert (a.usage.input_tokens, a.usage.output_tokens) == (3 + 258, 6)  # "Echo: one two three [1 image(s)]"
    assert (b.usage.input_tokens, b.usage.output_tokens) == (1, 2)
    assert a.usage.cost_usd == pytest.approx((261 * 2.0 + 6 * 10.0) / 1e6)
    assert total.requests == 3 and total.retries == 1
    assert total.input_tokens == 262 and total.output_tokens == 8
    assert total.cost_usd == pytest.approx(a.usage.cost_usd + b.usage.cost_usd)
    assert (a.usage + b.usage).input_tokens == 262


@pytest.mark.parametrize("kind", KINDS)
def test_api_key_never_in_errors_or_logs(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    with FakeLLMServer(api_key="other") as srv, make(kind, srv) as provider:
        try:
            provider.complete(ChatRequest("hi"))
        except ProviderError as exc:
            errors.append(exc)
    with FakeLLMServer() as srv, make(kind, srv) as provider:
        srv.queue_failures([("status", 500)] * 3 + [("refusal",)] + [("malformed",)] * 3)
        for request in (ChatRequest("a"), ChatRequest("b"), ChatRequest("c", json_schema=SCHEMA)):
            try:
                provider.complete(request)
            except ProviderError as exc:
                errors.append(exc)
    with make(kind, srv) as provider:  # server now stopped: connection errors
        try:
            provider.complete(ChatRequest("d"))
        except ProviderError as exc:
            errors.append(exc)
    assert [type(e) for e in errors] == [ProviderAuthError, ProviderUnavailable, ProviderRefusal,
                                         ProviderResponseError, ProviderUnavailable]
    texts = [repr(e) for e in errors] + [str(e.__cause__) for e in errors] + [str(e.__context__) for e in errors]
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert any("retrying" in t for t in texts)  # the retry logs really were captured
    for secret in (OPENAI_KEY, GEMINI_KEY, "SECRET"):
        assert not any(secret in t for t in texts)


@pytest.mark.parametrize("kind", KINDS)
def test_map_bounds_concurrency_and_reports_errors(kind: str) -> None:
    # latency well above a loaded machine's scheduling stalls, so the bound is reached, not just respected
    with FakeLLMServer(latency_s=0.5) as srv, make(kind, srv) as provider:
        srv.queue_failures([("refusal",)])
        progress: list[tuple[int, int]] = []
        requests = [ChatRequest(f"item {i}") for i in range(12)]
        out = dict(provider.map(requests, concurrency=3, progress=lambda d, t: progress.append((d, t))))
        assert srv.max_in_flight == 3
    assert sorted(out) == list(range(12))
    errors = [i for i, r in out.items() if isinstance(r, ProviderError)]
    assert len(errors) == 1 and isinstance(out[errors[0]], ProviderRefusal)
    for i, r in out.items():
        if i not in errors:
            assert r.text == f"Echo: item {i}"
    assert progress[-1] == (12, 12) and len(progress) == 12


def test_map_default_concurrency_is_max_concurrency_and_early_stop() -> None:
    with FakeLLMServer(latency_s=0.5) as srv, make("openai", srv, max_concurrency=4) as provider:  # see above
        out = list(provider.map(ChatRequest(f"x{i}") for i in range(10)))
        assert len(out) == 10 and srv.max_in_flight == 4
        srv.reset()
        it = provider.map([ChatRequest(f"y{i}") for i in range(40)], concurrency=2)
        next(it)
        it.close()  # abandoning the iterator cancels what is pending
        time.sleep(0.3)
        assert len(srv.requests) < 10


@pytest.mark.parametrize("kind", KINDS)
def test_acomplete_from_user_event_loop(kind: str) -> None:
    async def main(provider):
        return await asyncio.gather(*(provider.acomplete(ChatRequest(f"n{i}")) for i in range(6)))

    with FakeLLMServer(latency_s=0.5) as srv, make(kind, srv, max_concurrency=2) as provider:  # see above
        results = asyncio.run(main(provider))
        assert srv.max_in_flight == 2
        # the sync API still works next to it (its own loop, its own client)
        assert provider.complete(ChatRequest("sync")).text == "Echo: sync"
    assert [r.text for r in results] == [f"Echo: n{i}" for i in range(6)]


def test_batch_api_round_trip(server: FakeLLMServer, png: bytes, tmp_path: Path) -> None:
    server.responder = lambda req: (
        {"subject": req.prompt, "identical": True, "score": 4} if req.json_schema else f"plain {req.prompt}"
    )
    requests = {
        "a": ChatRequest("pair a", images=(png,), json_schema=SCHEMA),
        "b": ChatRequest("pair b", json_schema=SCHEMA),
        "c": ChatRequest("text c"),
        "d": ChatRequest("bad d"),
    }
    with make("openai", server, use_batch_api=True, cache_dir=str(tmp_path), input_usd_per_mtok=1.0) as provider:
        server.queue_failures([("timeout", 0.01)] * 3 + [("refusal",)])  # batch lines ignore timeouts
        batch_id = provider.submit_batch(requests)
        assert batch_id.startswith("batch_")
        assert provider.batch_status(batch_id) == "in_progress"
        results = provider.collect_batch(batch_id, requests=requests, poll_interval_s=0.01, timeout_s=5)
        # answers are cached: an online call for the same request makes no request
        n_before = len(server.requests)
        assert provider.complete(requests["a"]).cached is True
        assert len(server.requests) == n_before
    assert set(results) == {"a", "b", "c", "d"}
    assert results["b"].data == {"subject": "pair b", "identical": True, "score": 4}
    assert results["a"].data == {"subject": "pair a", "identical": True, "score": 4}
    assert results["c"].text == "plain text c" and results["c"].data is None
    assert isinstance(results["d"], ProviderRefusal)
    lines = [r for r in server.requests if r.api == "openai-batch"]
    assert [r.prompt for r in lines] == ["pair a", "pair b", "text c", "bad d"]
    assert lines[0].images == [png]
    assert results["a"].usage.cost_usd == pytest.approx(results["a"].usage.input_tokens * 1.0 / 1e6 * 0.5)


def test_batch_api_line_failures() -> None:
    with FakeLLMServer(batch_polls_before_done=0) as srv, make("openai", srv) as provider:
        srv.queue_failures([("refusal",), ("status", 500), ("malformed",)])
        batch_id = provider.submit_batch([ChatRequest("r"), ChatRequest("s"), ChatRequest("m", json_schema=SCHEMA),
                                          ChatRequest("ok")])
        results = provider.collect_batch(batch_id, requests=[ChatRequest("r"), ChatRequest("s"),
                                                             ChatRequest("m", json_schema=SCHEMA), ChatRequest("ok")],
                                         poll_interval_s=0.01)
    assert isinstance(results["0"], ProviderRefusal)
    assert isinstance(results["1"], ProviderError) and "500" in str(results["1"])
    assert isinstance(results["2"], ProviderResponseError)
    assert results["3"].text == "Echo: ok"


def test_batch_only_for_openai(server: FakeLLMServer) -> None:
    with pytest.raises(ValueError, match="use_batch_api"):
        ProviderConfig(kind="gemini", model="m", use_batch_api=True)
    with make("gemini", server) as provider, pytest.raises(ProviderError, match="kind='openai'"):
        provider.submit_batch([ChatRequest("x")])


def test_config_from_dict() -> None:
    cfg = ProviderConfig.from_dict({"kind": "openai", "model": "gpt-4o-mini", "timeout_s": 5, "cache_dir": None})
    assert cfg.timeout_s == 5.0 and isinstance(cfg.timeout_s, float)
    with pytest.raises(ValueError, match=r"unknown provider config key\(s\) \['modle'\]"):
        ProviderConfig.from_dict({"kind": "openai", "modle": "x"})
    with pytest.raises(ValueError, match="max_retries"):
        ProviderConfig.from_dict({"kind": "openai", "model": "x", "max_retries": "3"})
    with pytest.raises(ValueError, match="one of"):
        ProviderConfig.from_dict({"kind": "anthropic", "model": "x"})
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        ProviderConfig(kind="openai", model="x", api_key_env="sk-abc-123.456")


def test_schema_helpers() -> None:
    assert parse_json_answer('```json\n{"subject": "a", "identical": true, "score": 2}\n```', SCHEMA)["score"] == 2
    with pytest.raises(SchemaMismatch, match="missing required key 'score'"):
        parse_json_answer('{"subject": "a", "identical": true}', SCHEMA)
    with pytest.raises(SchemaMismatch, match="expected integer"):
        parse_json_answer('{"subject": "a", "identical": true, "score": true}', SCHEMA)
    nested = {"type": "object", "properties": {"items": {"type": "array", "minItems": 2,
              "items": {"type": "object", "properties": {"k": {"enum": ["x", "y"]}}, "required": ["k"]}}},
              "required": ["items"]}
    obj = fake_object_for_schema(nested, "seed")
    assert obj == {"items": [{"k": "x"}, {"k": "x"}]}
    assert _retry_info_delay({"error": {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                                     "retryDelay": "7s"}]}}) == 7.0
