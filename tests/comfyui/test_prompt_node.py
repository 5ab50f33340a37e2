"""DSDPromptEnhance in a real ComfyUI host, with the real openai / google-genai clients talking to
tests.support.llm_server.FakeLLMServer on 127.0.0.1 (no mocks, no network)."""

from __future__ import annotations

import inspect
import json
import logging
import socket
import sys
import threading
import time

import pytest
import torch

from tests.support.llm_server import FakeLLMServer, RecordedRequest
from tests.support.tree import files_containing

OPENAI_KEY = "sk-dsd-test-SECRET-0123456789abcdef"
GEMINI_KEY = "AIza-dsd-test-SECRET-0123456789abcdef"
CAPTION = "a small red ceramic fox figurine with a green dot on its flank, studio light"
ENHANCED = "a small red ceramic fox figurine with a green dot on its flank surfing a big wave at sunset"
PROVIDERS = ["gemini", "openai-compatible"]


def responder(req: RecordedRequest) -> str:
    # Step 1 (caption) carries the image, step 2 (merge) is text only.
    return f"Caption: {CAPTION}" if req.images else f'"{ENHANCED}"'


@pytest.fixture(scope="module")
def prompt_module(comfy_host):
    """The node's module as ComfyUI loaded it (inside the pack package)."""
    name = f"{comfy_host.pack.__name__}.nodes.prompt"
    return sys.modules[name]


@pytest.fixture(scope="module")
def keys_module(comfy_host):
    return sys.modules[f"{comfy_host.pack.__name__}.nodes.keys"]


@pytest.fixture
def host_env(private_user_and_keys, prompt_module, monkeypatch):
    """A private ComfyUI user dir (settings + disk cache), a private key store, no keys in the
    environment, empty caches."""
    # Fast backoff: the retry policy is the provider layer's, the tests only need it to happen.
    monkeypatch.setattr(prompt_module, "BACKOFF_BASE_S", 0.05)
    prompt_module.clear_caches()
    yield private_user_and_keys / "user"
    prompt_module.clear_caches()


@pytest.fixture
def llm():
    with FakeLLMServer(responder=responder) as srv:
        yield srv


def base_url(provider: str, srv: FakeLLMServer) -> str:
    return srv.gemini_base_url if provider == "gemini" else srv.openai_base_url


def set_env_key(monkeypatch, provider: str) -> str:
    name, key = ("GEMINI_API_KEY", GEMINI_KEY) if provider == "gemini" else ("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv(name, key)
    return key


def graph(provider: str, url: str, prompt: str = "the figurine surfing a big wave", enabled: bool = True,
          seed: int = 3) -> dict:
    return {
        "1": {"class_type": "DSDTest_Image", "inputs": {"batch": 1, "height": 48, "width": 64, "seed": seed}},
        "2": {
            "class_type": "DSDPromptEnhance",
            "inputs": {"image": ["1", 0], "prompt": prompt, "provider": provider, "model": "vision-model",
                       "base_url": url, "enabled": enabled},
        },
        "3": {"class_type": "DSDTest_Capture", "inputs": {"label": "prompt", "value": ["2", 0]}},
        "4": {"class_type": "DSDTest_Capture", "inputs": {"label": "caption", "value": ["2", 1]}},
    }


def image(seed: int = 3) -> torch.Tensor:
    return torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(seed))


def test_schema_has_tooltips_and_no_key_input(comfy_host):
    cls = comfy_host.node_class("DSDPromptEnhance")
    assert cls.CATEGORY == "DSD/prompt"
    types = cls.INPUT_TYPES()
    inputs = {**types["required"], **types.get("optional", {})}
    assert set(inputs) == {"image", "prompt", "provider", "model", "base_url", "enabled"}
    for name, spec in inputs.items():
        assert spec[1].get("tooltip"), f"input {name} has no tooltip"
    assert not any("key" in name.lower() for name in inputs)
    assert list(cls.RETURN_TYPES) == ["STRING", "STRING"]


def kind_of(provider: str) -> str:
    return "gemini" if provider == "gemini" else "openai"


def register_env(monkeypatch, url: str, key: str, variable: str = "DSD_TEST_ENDPOINT_KEY") -> str:
    """The owner's registration of ``url`` through the environment (DSD_ENDPOINT_KEYS names the variable)."""
    monkeypatch.setenv("DSD_ENDPOINT_KEYS", f"{url}={variable}")
    monkeypatch.setenv(variable, key)
    return key


def carried(srv: FakeLLMServer, *secrets: str) -> list[str]:
    """Header values of every request ``srv`` received that hold one of ``secrets``."""
    return [v for r in srv.requests for v in r.headers.values() for s in secrets if s in v]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_end_to_end_through_executor(comfy_host, run_prompt, host_env, llm, monkeypatch, provider):
    url = base_url(provider, llm)
    llm.api_key = register_env(monkeypatch, url, "gateway-key-0123456789")  # 401 to any other key
    run = run_prompt(graph(provider, url))
    assert run.ok, run.error or run.exec_error
    assert run.captured == {"prompt": ENHANCED, "caption": CAPTION}
    reqs = llm.requests
    assert len(reqs) == 2
    assert reqs[0].images and not reqs[1].images  # caption first, then merge
    assert reqs[0].model == "vision-model"
    assert CAPTION in reqs[1].prompt and "surfing a big wave" in reqs[1].prompt
    assert reqs[0].api == ("gemini" if provider == "gemini" else "openai")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_key_from_store_never_leaks(comfy_host, run_prompt, host_env, llm, keys_module, caplog, provider):
    kind_key = GEMINI_KEY if provider == "gemini" else OPENAI_KEY
    keys_module.STORE.set_endpoint(base_url(provider, llm), kind_key)  # the owner registered this endpoint
    llm.api_key = kind_key  # success proves the key travelled from the store to the server
    prompt = graph(provider, base_url(provider, llm))
    with caplog.at_level(logging.DEBUG):
        run = run_prompt(prompt)
    assert run.ok, run.error or run.exec_error
    assert run.captured["prompt"] == ENHANCED
    sent = llm.requests[0].headers
    assert kind_key in (sent.get("Authorization", "") + sent.get("x-goog-api-key", ""))
    # Not in the node's inputs, the saved (API-format) workflow, the outputs, history or logs.
    assert kind_key not in json.dumps(prompt)
    assert kind_key not in json.dumps(run.captured) + json.dumps(run.outputs, default=str)
    assert kind_key not in json.dumps([m for m in run.messages], default=str)
    assert kind_key not in caplog.text
    # Nothing under ComfyUI's user folder holds it (settings, disk cache of answers).
    assert files_containing(host_env, kind_key.encode()) == []


@pytest.mark.parametrize("source", ["store", "environment"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_server_keys_never_reach_another_endpoint(comfy_host, run_prompt, host_env, llm, keys_module, monkeypatch,
                                                  caplog, provider, source):
    """A client queues the graph with base_url on a listener of its own: it gets no key of the server."""
    kind = kind_of(provider)
    for k, key in (("openai", OPENAI_KEY), ("gemini", GEMINI_KEY)):
        if source == "store":
            keys_module.STORE.set(k, key)
        else:
            set_env_key(monkeypatch, "gemini" if k == "gemini" else "openai-compatible")
    with caplog.at_level(logging.DEBUG):
        run = run_prompt(graph(provider, base_url(provider, llm)))
    assert run.ok, run.error or run.exec_error  # the listener needs no key, like a local vLLM
    assert len(llm.requests) == 2 and carried(llm, OPENAI_KEY, GEMINI_KEY) == []
    for request in llm.requests:
        if kind == "openai":
            assert "Authorization" not in request.headers
        else:  # google-genai cannot run without a key: a placeholder, no secret
            assert request.headers.get("x-goog-api-key") == "no-key"
    assert OPENAI_KEY not in caplog.text and GEMINI_KEY not in caplog.text


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unregistered_endpoint_answering_401_says_no_key_was_sent(comfy_host, run_prompt, host_env, llm,
                                                                  keys_module, provider):
    keys_module.STORE.set(kind_of(provider), OPENAI_KEY)
    llm.api_key = "sk-what-the-endpoint-wants-0000"
    run = run_prompt(graph(provider, base_url(provider, llm)))
    assert not run.ok and llm.requests == []
    message = run.exec_error["exception_message"]
    assert "no API key was sent" in message and "registers one for exactly that endpoint" in message
    assert OPENAI_KEY not in json.dumps(run.exec_error, default=str)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_registered_endpoints_receive_exactly_their_own_keys(comfy_host, run_prompt, host_env, keys_module,
                                                             monkeypatch, provider):
    """The owner registered A in the store and B in the environment; the provider key stays home."""
    key_a, key_b = "sk-key-of-A-0123456789", "sk-key-of-B-0123456789"
    keys_module.STORE.set(kind_of(provider), OPENAI_KEY)
    with FakeLLMServer(responder=responder, api_key=key_a) as a, FakeLLMServer(responder=responder,
                                                                               api_key=key_b) as b:
        keys_module.STORE.set_endpoint(base_url(provider, a), key_a)
        register_env(monkeypatch, base_url(provider, b), key_b)
        for srv, seed in ((a, 3), (b, 4)):
            run = run_prompt(graph(provider, base_url(provider, srv), seed=seed))
            assert run.ok, run.error or run.exec_error
        assert len(a.requests) == 2 and len(b.requests) == 2
        assert carried(a, key_b, OPENAI_KEY) == [] and carried(b, key_a, OPENAI_KEY) == []
        assert len(carried(a, key_a)) == 2 and len(carried(b, key_b)) == 2


def test_environment_wins_over_store(comfy_host, host_env, llm, keys_module, monkeypatch):
    keys_module.STORE.set("openai", "sk-stale-key-in-the-store-0000")
    assert keys_module.resolve_key("openai", None) == "sk-stale-key-in-the-store-0000"
    assert keys_module.resolve_key("openai", None) == keys_module.resolve_key("openai", "https://api.openai.com/v1")
    assert keys_module.resolve_key("openai", None) != set_env_key(monkeypatch, "openai-compatible")
    assert keys_module.resolve_key("openai", None) == OPENAI_KEY
    # The same order for an endpoint key: DSD_ENDPOINT_KEYS before the store's entry.
    keys_module.STORE.set_endpoint(llm.openai_base_url, "sk-stale-endpoint-key-0000")
    llm.api_key = register_env(monkeypatch, llm.openai_base_url, "sk-endpoint-key-from-env-0000")
    out = comfy_host.call("DSDPromptEnhance", image=image(), prompt="the figurine surfing",
                          provider="openai-compatible", model="vision-model", base_url=llm.openai_base_url,
                          enabled=True)
    assert out == (ENHANCED, CAPTION)


def test_key_change_in_store_takes_effect_at_next_execution(comfy_host, host_env, llm, keys_module, prompt_module):
    llm.api_key = OPENAI_KEY
    keys_module.STORE.set_endpoint(llm.openai_base_url, "sk-the-old-key-0123456789")
    kwargs = {"image": image(), "prompt": "the figurine surfing", "provider": "openai-compatible",
              "model": "vision-model", "base_url": llm.openai_base_url, "enabled": True}
    with pytest.raises(prompt_module.PromptEnhanceError, match="rejected the API key"):
        comfy_host.call("DSDPromptEnhance", **kwargs)
    keys_module.STORE.set_endpoint(llm.openai_base_url, OPENAI_KEY)
    assert comfy_host.call("DSDPromptEnhance", **kwargs) == (ENHANCED, CAPTION)


def test_execute_runs_on_the_hosts_loop_without_threads_of_its_own(comfy_host, run_prompt, host_env, llm,
                                                                    monkeypatch):
    cls = comfy_host.node_class("DSDPromptEnhance")
    assert inspect.iscoroutinefunction(cls.execute)
    llm.api_key = register_env(monkeypatch, llm.gemini_base_url, GEMINI_KEY)
    before = {t.ident for t in threading.enumerate()}
    for seed in (3, 4):
        run = run_prompt(graph("gemini", llm.gemini_base_url, prompt=f"the figurine surfing, take {seed}", seed=seed))
        assert run.ok, run.error or run.exec_error
    assert len(llm.requests) == 4
    new = [t.name for t in threading.enumerate() if t.ident not in before]
    assert not [name for name in new if name.startswith("dsd-provider")], new


def test_wrong_key_is_a_clear_error_without_the_key(comfy_host, run_prompt, host_env, llm, monkeypatch, caplog):
    register_env(monkeypatch, llm.openai_base_url, OPENAI_KEY, variable="MY_GATEWAY_KEY")
    llm.api_key = "sk-the-right-one-0123456789"
    with caplog.at_level(logging.DEBUG):
        run = run_prompt(graph("openai-compatible", llm.openai_base_url))
    assert not run.ok and run.exec_error is not None
    message = run.exec_error["exception_message"]
    assert "rejected the API key" in message and "MY_GATEWAY_KEY" in message and "DSD_ENDPOINT_KEYS" in message
    assert OPENAI_KEY not in message + json.dumps(run.exec_error, default=str) + caplog.text


def test_allow_list_refuses_other_endpoints_before_any_request(comfy_host, run_prompt, host_env, llm, monkeypatch):
    with FakeLLMServer(responder=responder) as allowed:
        monkeypatch.setenv("DSD_ALLOWED_BASE_URLS", f"http://10.0.0.5:8000/v1, {allowed.openai_base_url}/")
        run = run_prompt(graph("openai-compatible", llm.openai_base_url))
        assert not run.ok and llm.requests == []
        message = run.exec_error["exception_message"]
        assert "DSD_ALLOWED_BASE_URLS" in message and llm.openai_base_url in message
        run = run_prompt(graph("openai-compatible", allowed.openai_base_url))
        assert run.ok, run.error or run.exec_error
        assert len(allowed.requests) == 2


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/v1", "127.0.0.1:8000/v1",
                                 "http://127.0.0.1:8000/admin/users?x=", "javascript:alert(1)"])
def test_a_base_url_that_is_no_http_url_is_an_input_error(comfy_host, run_prompt, host_env, url, caplog):
    with caplog.at_level(logging.INFO):
        run = run_prompt(graph("openai-compatible", url))
    assert not run.ok
    message = run.exec_error["exception_message"]
    assert "base_url" in message and ("http://" in message or "query" in message)
    assert "retrying" not in caplog.text and "failed after" not in message


@pytest.mark.parametrize("provider", PROVIDERS)
def test_error_pages_of_internal_servers_are_not_echoed(comfy_host, run_prompt, host_env, llm, provider):
    page = "<html><title>Admin</title><body>users: alice (admin), bob</body></html>"
    llm.queue_failures([("html", 404, page)])
    run = run_prompt(graph(provider, base_url(provider, llm)))
    assert not run.ok
    text = json.dumps(run.exec_error, default=str)
    assert "HTTP 404" in run.exec_error["exception_message"]
    assert "alice" not in text and "Admin" not in text


def test_the_same_request_to_two_endpoints_asks_both(comfy_host, run_prompt, host_env, prompt_module):
    """Server A's answer (a poisoned caption) must not be served for server B: the caches key on the endpoint."""
    with FakeLLMServer(responder=lambda r: "POISONED caption from A" if r.images else "merged by A") as a, \
            FakeLLMServer(responder=responder) as b:
        assert run_prompt(graph("openai-compatible", a.openai_base_url)).ok
        prompt_module.clear_caches()  # also without ComfyUI's own cache: only the disk cache could answer
        run = run_prompt(graph("openai-compatible", b.openai_base_url))
        assert run.ok, run.error or run.exec_error
        assert run.captured == {"prompt": ENHANCED, "caption": CAPTION}
        assert len(a.requests) == 2 and len(b.requests) == 2


def test_prompt_over_the_cap_is_refused(comfy_host, run_prompt, host_env, llm, prompt_module):
    run = run_prompt(graph("openai-compatible", llm.openai_base_url, prompt="a fox " * 1400))  # 8,400 characters
    assert not run.ok and llm.requests == []
    message = run.exec_error["exception_message"]
    assert "8,400 characters" in message and "8,000" in message
    assert run_prompt(graph("openai-compatible", llm.openai_base_url, prompt="x" * 8000)).ok


def test_missing_key_names_env_and_setting(comfy_host, host_env, prompt_module):
    # No base_url: the public Gemini API, which needs a key; nothing is sent anywhere.
    with pytest.raises(prompt_module.PromptEnhanceError, match=r"GEMINI_API_KEY or GOOGLE_API_KEY.*ComfyUI settings > DSD > Prompt enhancer"):
        comfy_host.call("DSDPromptEnhance", image=image(), prompt="a fox", provider="gemini",
                        model="gemini-2.5-flash", base_url="", enabled=True)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_offline_server_fails_fast_with_clear_error(comfy_host, run_prompt, host_env, monkeypatch, prompt_module,
                                                   provider):
    set_env_key(monkeypatch, provider)
    monkeypatch.setattr(prompt_module, "BACKOFF_BASE_S", 0.5)  # the shipped policy: at most 0.5+1+2 s of waits
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}" + ("" if provider == "gemini" else "/v1")
    t0 = time.perf_counter()
    run = run_prompt(graph(provider, url))
    elapsed = time.perf_counter() - t0
    assert not run.ok
    message = run.exec_error["exception_message"]
    assert f"127.0.0.1:{port}" in message and "failed after" in message
    assert "enabled to false" in message
    # 3.5 s of back-off, not the minutes of full timeouts; the margin is for a loaded 2-core machine
    assert elapsed < 60, f"offline error took {elapsed:.1f}s"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_rate_limit_then_success(comfy_host, host_env, llm, monkeypatch, provider):
    set_env_key(monkeypatch, provider)
    llm.queue_failures([("status", 429, {"retry-after": "0.05"}), ("status", 503)])
    out = comfy_host.call("DSDPromptEnhance", image=image(), prompt="the figurine surfing", provider=provider,
                          model="vision-model", base_url=base_url(provider, llm), enabled=True)
    assert out == (ENHANCED, CAPTION)
    assert len(llm.requests) == 4  # two failed caption attempts, then caption + merge


def test_cache_second_execution_costs_nothing(comfy_host, run_prompt, host_env, llm, monkeypatch, prompt_module):
    set_env_key(monkeypatch, "openai-compatible")
    url = llm.openai_base_url
    prompt = graph("openai-compatible", url)
    assert run_prompt(prompt).ok
    assert len(llm.requests) == 2
    # 1. Same graph again: ComfyUI's own cache (fingerprint_inputs unchanged) skips the node.
    assert run_prompt(prompt).ok
    assert len(llm.requests) == 2
    # 2. Node executed again with the same inputs: the in-memory LRU answers.
    kwargs = {"image": image(), "prompt": "the figurine surfing a big wave", "provider": "openai-compatible",
              "model": "vision-model", "base_url": url, "enabled": True}
    assert comfy_host.call("DSDPromptEnhance", **kwargs) == (ENHANCED, CAPTION)
    assert len(llm.requests) == 2
    # 3. Memory cleared (e.g. ComfyUI restarted): the disk cache answers.
    prompt_module.clear_caches()
    assert comfy_host.call("DSDPromptEnhance", **kwargs) == (ENHANCED, CAPTION)
    assert len(llm.requests) == 2
    # A different image is a miss for the caption; the merge request (same caption text, same
    # prompt) is still answered from the disk cache.
    comfy_host.call("DSDPromptEnhance", **{**kwargs, "image": image(seed=4)})
    assert len(llm.requests) == 3 and llm.requests[-1].images


def test_fingerprint_tracks_widgets_not_secrets(comfy_host, monkeypatch):
    cls = comfy_host.node_class("DSDPromptEnhance")
    a = cls.fingerprint_inputs(prompt="p", provider="gemini", model="m", base_url="", enabled=True)
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
    assert cls.fingerprint_inputs(prompt="p", provider="gemini", model="m", base_url="", enabled=True) == a
    assert cls.fingerprint_inputs(prompt="q", provider="gemini", model="m", base_url="", enabled=True) != a
    assert cls.fingerprint_inputs(prompt="p", provider="gemini", model="m2", base_url="", enabled=True) != a
    assert GEMINI_KEY not in json.dumps(a)


def test_disabled_passes_prompt_through_without_requests(comfy_host, run_prompt, host_env, llm):
    run = run_prompt(graph("gemini", llm.gemini_base_url, prompt="keep me as I am", enabled=False))
    assert run.ok, run.error or run.exec_error
    assert run.captured == {"prompt": "keep me as I am", "caption": ""}
    assert llm.requests == []


def test_empty_prompt_is_a_clear_error(comfy_host, host_env, prompt_module, llm, monkeypatch):
    set_env_key(monkeypatch, "gemini")
    with pytest.raises(prompt_module.PromptEnhanceError, match="prompt is empty"):
        comfy_host.call("DSDPromptEnhance", image=image(), prompt="   ", provider="gemini", model="m",
                        base_url=llm.gemini_base_url, enabled=True)
    assert llm.requests == []


def test_progress_bar_reports_caption_then_merge(comfy_host, host_env, llm, monkeypatch):
    import comfy.utils

    set_env_key(monkeypatch, "gemini")
    seen: list[tuple[int, int]] = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None: seen.append((value, total)))
    comfy_host.call("DSDPromptEnhance", image=image(), prompt="the figurine surfing", provider="gemini",
                    model="vision-model", base_url=llm.gemini_base_url, enabled=True)
    assert seen == [(1, 2), (2, 2)]


def test_missing_sdk_names_the_package_to_install(comfy_host, host_env, prompt_module, monkeypatch):
    # A None entry in sys.modules makes the import fail exactly as an absent package does.
    pack = comfy_host.pack.__name__
    monkeypatch.setitem(sys.modules, f"{pack}.dsd.providers.gemini_provider", None)
    monkeypatch.setitem(sys.modules, "google.genai", None)
    with pytest.raises(prompt_module.PromptEnhanceError, match=r"pip install google-genai"):
        comfy_host.call("DSDPromptEnhance", image=image(), prompt="a fox", provider="gemini", model="m",
                        base_url="http://127.0.0.1:9/", enabled=True)
