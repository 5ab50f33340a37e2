"""The pack's server-side API-key store and its /dsd/keys routes, in the real ComfyUI host.

The routes are the ones the pack registered on ``PromptServer.instance.routes`` when ComfyUI loaded
it, served by aiohttp next to ComfyUI's own /settings and /userdata routes (bound to the host's
real user manager), so "never readable back" is checked against the routes that would leak it.
"""

from __future__ import annotations

import json
import logging
import stat
import sys

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

SENTINEL = "sk-dsd-SENTINEL-key-0123456789abcdefXYZ"


@pytest.fixture(scope="module")
def keys_module(comfy_host):
    return sys.modules[f"{comfy_host.pack.__name__}.nodes.keys"]


@pytest.fixture
def env(private_user_and_keys):
    """A private ComfyUI user dir and key store; no keys in the environment."""
    return private_user_and_keys


@pytest.fixture
def http(comfy_host, env):
    """``http(method, path, **kw) -> (status, text)`` against the pack's routes + ComfyUI's user routes."""
    instance = comfy_host.server.PromptServer.instance
    user_routes = web.RouteTableDef()
    instance.user_manager.add_routes(user_routes)
    app = web.Application()
    app.add_routes([r for r in instance.routes if getattr(r, "path", "").startswith("/dsd/")])
    app.add_routes(user_routes)
    client = TestClient(TestServer(app), loop=comfy_host.loop)
    comfy_host.loop.run_until_complete(client.start_server())

    def call(method: str, path: str, **kwargs) -> tuple[int, str]:
        async def go() -> tuple[int, str]:
            async with client.request(method, path, **kwargs) as response:
                return response.status, await response.text()

        return comfy_host.loop.run_until_complete(go())

    yield call
    comfy_host.loop.run_until_complete(client.close())


def test_routes_are_registered_when_the_pack_loads(comfy_host):
    routes = {(r.method, r.path) for r in comfy_host.server.PromptServer.instance.routes if hasattr(r, "path")}
    assert {("GET", "/dsd/keys"), ("POST", "/dsd/keys/set"), ("POST", "/dsd/keys/clear"),
            ("DELETE", "/dsd/keys/{provider}")} <= routes


def test_set_status_clear_and_never_read_back(http, env, keys_module, caplog):
    assert json.loads(http("GET", "/dsd/keys")[1])["openai"] == "not set"
    with caplog.at_level(logging.DEBUG):
        status, text = http("POST", "/dsd/keys/set", json={"provider": "openai", "key": f"  {SENTINEL}\n"})
    assert status == 200
    assert json.loads(text) == {"openai": "set", "gemini": "not set",
                                "environment": {"openai": None, "gemini": None}}
    # Stored stripped, private, outside the user folder.
    store = env / "secrets" / "api_keys.json"
    assert keys_module.STORE.get("openai") == SENTINEL
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    assert not [p for p in (env / "user").rglob("*") if p.is_file() and SENTINEL.encode() in p.read_bytes()]
    # No route hands it back.
    for path in ("/dsd/keys", "/settings", "/settings/DSD.OpenAIApiKey", "/userdata/comfy.settings.json",
                 "/userdata?dir=&recurse=true&full_info=true", "/v2/userdata"):
        assert SENTINEL not in http("GET", path)[1], path
    assert SENTINEL not in caplog.text
    # Clearing, by POST and by DELETE.
    assert json.loads(http("DELETE", "/dsd/keys/openai")[1])["openai"] == "not set"
    assert keys_module.STORE.get("openai") is None
    http("POST", "/dsd/keys/set", json={"provider": "gemini", "key": SENTINEL})
    assert json.loads(http("POST", "/dsd/keys/clear", json={"provider": "gemini"})[1])["gemini"] == "not set"
    assert SENTINEL not in store.read_text()


@pytest.mark.parametrize(("body", "status", "says"), [
    ({"provider": "anthropic", "key": SENTINEL}, 400, "provider must be one of"),
    ({"provider": "openai", "key": "   "}, 400, "non-empty"),
    ({"provider": "openai"}, 400, "non-empty"),
    ({"provider": "openai", "key": "x" * 5000}, 400, "at most 4096"),
    ({"provider": "openai", "key": f"Bearer {SENTINEL}"}, 400, "without spaces"),
    ({"provider": "openai", "key": SENTINEL, "extra": 1}, 400, "unknown field"),
    ([SENTINEL], 400, "JSON object"),
    ("not json " + SENTINEL, 400, "JSON object"),
    ({"provider": "openai", "key": "k" * 20000}, 413, "over 16384 bytes"),
])
def test_bad_requests_get_clear_errors_without_the_key(http, keys_module, body, status, says):
    data = body if isinstance(body, str) else json.dumps(body)
    code, text = http("POST", "/dsd/keys/set", data=data, headers={"Content-Type": "application/json"})
    assert code == status
    assert says in json.loads(text)["error"]
    assert SENTINEL not in text
    assert keys_module.STORE.get("openai") is None


def test_delete_of_unknown_provider_is_a_400(http):
    code, text = http("DELETE", "/dsd/keys/anthropic")
    assert code == 400 and "provider must be one of" in json.loads(text)["error"]


def test_environment_variable_is_reported_by_name_only(http, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", SENTINEL)
    status, text = http("GET", "/dsd/keys")
    assert json.loads(text)["environment"] == {"openai": None, "gemini": "GOOGLE_API_KEY"}
    assert SENTINEL not in text


def test_store_inside_a_served_folder_is_refused(http, env, monkeypatch):
    inside = env / "user" / "default" / "api_keys.json"
    monkeypatch.setenv("DSD_KEY_STORE", str(inside))
    code, text = http("POST", "/dsd/keys/set", json={"provider": "openai", "key": SENTINEL})
    assert code == 500
    message = json.loads(text)["error"]
    assert "DSD_KEY_STORE" in message and "serves over HTTP" in message
    assert not inside.exists()


def test_loose_permissions_are_tightened(env, keys_module):
    keys_module.STORE.set("openai", SENTINEL)
    store = keys_module.store_path()
    store.chmod(0o644)
    assert keys_module.STORE.get("openai") == SENTINEL
    assert stat.S_IMODE(store.stat().st_mode) == 0o600


def test_corrupt_store_is_a_clear_error_without_its_text(env, keys_module):
    store = keys_module.store_path()
    store.parent.mkdir(parents=True)
    store.write_text('{"keys": {"openai": "' + SENTINEL)
    store.chmod(0o600)
    with pytest.raises(keys_module.KeyStoreError, match="delete the file") as info:
        keys_module.STORE.get("openai")
    assert SENTINEL not in str(info.value)


def test_migration_moves_keys_out_of_comfy_settings(http, env, keys_module, caplog):
    settings = env / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"DSD.OpenAIApiKey": SENTINEL, "DSD.GeminiApiKey": "",
                                    "Comfy.Theme": "dark"}, indent=4))
    settings.chmod(0o644)
    assert SENTINEL in http("GET", "/settings")[1]  # the leak being fixed
    with caplog.at_level(logging.INFO):
        keys_module.install()  # what the pack runs when ComfyUI loads it (routes already there)
    assert keys_module.STORE.get("openai") == SENTINEL
    assert keys_module.STORE.get("gemini") is None
    assert json.loads(settings.read_text()) == {"Comfy.Theme": "dark"}
    assert stat.S_IMODE(settings.stat().st_mode) == 0o644
    assert SENTINEL not in http("GET", "/settings")[1]
    assert SENTINEL not in http("GET", "/userdata/comfy.settings.json")[1]
    lines = [r.getMessage() for r in caplog.records if "moved the openai API key" in r.getMessage()]
    assert lines and str(settings) in lines[0] and str(keys_module.store_path()) in lines[0]
    assert SENTINEL not in caplog.text
    # Idempotent: nothing left to move.
    assert keys_module.migrate_settings(env / "user") == 0


def test_migration_keeps_the_store_key_and_still_empties_settings(env, keys_module, caplog):
    keys_module.STORE.set("openai", "sk-already-in-the-store-0000")
    settings = env / "user" / "alice" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"DSD.OpenAIApiKey": SENTINEL}))
    with caplog.at_level(logging.INFO):
        assert keys_module.migrate_settings(env / "user") == 0
    assert keys_module.STORE.get("openai") == "sk-already-in-the-store-0000"
    assert json.loads(settings.read_text()) == {}
    assert "already holds one" in caplog.text and SENTINEL not in caplog.text
