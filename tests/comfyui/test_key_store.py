"""The pack's server-side API-key store and its /dsd/keys routes, in the real ComfyUI host.

The routes are the ones the pack registered on ``PromptServer.instance.routes`` when ComfyUI loaded
it, served by aiohttp next to ComfyUI's own /settings and /userdata routes (bound to the host's
real user manager), so "never readable back" is checked against the routes that would leak it.
Changes need the page's own Origin, a JSON body and a client on this machine; the ``http`` fixture
sends the server's own Origin on POST/DELETE unless a test gives another (``origin=None``: none).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.needs import missing
from tests.support.tree import files_containing

SENTINEL = "sk-dsd-SENTINEL-key-0123456789abcdefXYZ"
REPO_ROOT = Path(__file__).resolve().parents[2]
OWN = object()  # the ``http`` fixture's default Origin: the server's own


@pytest.fixture(scope="module")
def keys_module(comfy_host):
    return sys.modules[f"{comfy_host.pack.__name__}.nodes.keys"]


@pytest.fixture
def env(private_user_and_keys):
    """A private ComfyUI user dir and key store; no keys in the environment."""
    return private_user_and_keys


def routes_app(comfy_host) -> web.Application:
    instance = comfy_host.server.PromptServer.instance
    user_routes = web.RouteTableDef()
    instance.user_manager.add_routes(user_routes)
    app = web.Application()
    app.add_routes([r for r in instance.routes if getattr(r, "path", "").startswith("/dsd/")])
    app.add_routes(user_routes)
    return app


def http_client(comfy_host, server: TestServer, base: str | None = None):
    """``(call, close)``: ``call(method, path, origin=OWN, **kw) -> (status, text)``; ``base``: the URL to call."""
    client = TestClient(server, loop=comfy_host.loop)
    comfy_host.loop.run_until_complete(client.start_server())
    root = (base or str(client.make_url(""))).rstrip("/")

    def call(method: str, path: str, origin=OWN, **kwargs) -> tuple[int, str]:
        headers = dict(kwargs.pop("headers", None) or {})
        if origin is OWN and method != "GET":
            headers.setdefault("Origin", root)
        elif origin is not OWN and origin is not None:
            headers["Origin"] = origin

        async def go() -> tuple[int, str]:
            async with client.session.request(method, root + path, headers=headers, **kwargs) as response:
                return response.status, await response.text()

        return comfy_host.loop.run_until_complete(go())

    return call, lambda: comfy_host.loop.run_until_complete(client.close())


@pytest.fixture
def http(comfy_host, env):
    """``http(method, path, origin=OWN, **kw) -> (status, text)`` against the pack's routes + ComfyUI's user routes."""
    call, close = http_client(comfy_host, TestServer(routes_app(comfy_host)))
    yield call
    close()


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
                                "environment": {"openai": None, "gemini": None},
                                "endpoints": {"stored": [], "environment": []}}
    # Stored stripped, private, outside the user folder.
    store = env / "secrets" / "api_keys.json"
    assert keys_module.STORE.get("openai") == SENTINEL
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    assert files_containing(env / "user", SENTINEL.encode()) == []
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


# -- who may change keys -------------------------------------------------------------------------
FOREIGN = "http://127.0.0.1:1"  # a page served on another loopback port


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "says"), [
    ("POST", "/dsd/keys/set", {"origin": None}, 403, "no Origin"),
    ("POST", "/dsd/keys/set", {"origin": "null"}, 403, "Origin: null"),
    ("POST", "/dsd/keys/set", {"origin": FOREIGN}, 403, "another site"),
    ("POST", "/dsd/keys/clear", {"origin": "null"}, 403, "Origin: null"),
    ("DELETE", "/dsd/keys/openai", {"origin": None}, 403, "no Origin"),
    ("DELETE", "/dsd/keys/openai", {"origin": FOREIGN}, 403, "another site"),
    # What a page can send without a CORS preflight: text/plain and form bodies.
    ("POST", "/dsd/keys/set", {"headers": {"Content-Type": "text/plain"}}, 415, "Content-Type: application/json"),
    ("POST", "/dsd/keys/clear", {"headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415,
     "Content-Type: application/json"),
])
def test_changes_need_the_pages_own_origin_and_json(http, keys_module, method, path, kwargs, status, says):
    keys_module.STORE.set("openai", "sk-the-owners-key-0000")
    body = {"provider": "openai", "key": SENTINEL} if path.endswith("/set") else {"provider": "openai"}
    code, text = http(method, path, data=json.dumps(body), **kwargs)
    assert code == status and says in json.loads(text)["error"]
    assert keys_module.STORE.get("openai") == "sk-the-owners-key-0000"  # neither replaced nor cleared


def test_a_name_that_is_not_this_server_is_refused(http, keys_module, comfy_host):
    """DNS rebinding: a page on attacker.example whose name now points at 127.0.0.1 sends a
    matching Host and Origin; the server is only ever managed by IP address or localhost."""
    code, text = http("POST", "/dsd/keys/set", origin="http://attacker.example:8188",
                      headers={"Host": "attacker.example:8188"}, json={"provider": "openai", "key": SENTINEL})
    assert code == 403 and "DSD_KEYS_REMOTE" in json.loads(text)["error"]
    assert keys_module.STORE.get("openai") is None


def non_loopback_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = probe.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        missing("this machine has no non-loopback network address to act as another machine",
                "run the test on a machine with a network interface")
    return address


def test_other_machines_may_change_keys_only_when_the_owner_allows_it(comfy_host, env, keys_module, monkeypatch):
    address = non_loopback_address()
    with socket.socket() as probe:  # a free port, for a server that listens on every interface
        probe.bind(("0.0.0.0", 0))
        port = probe.getsockname()[1]
    call, close = http_client(comfy_host, TestServer(routes_app(comfy_host), host="0.0.0.0", port=port),
                              base=f"http://{address}:{port}")
    try:
        code, text = call("POST", "/dsd/keys/set", json={"provider": "openai", "key": SENTINEL})
        assert code == 403 and "DSD_KEYS_REMOTE=1" in json.loads(text)["error"]
        assert call("DELETE", "/dsd/keys/openai")[0] == 403
        status = json.loads(call("GET", "/dsd/keys")[1])
        assert status["openai"] == "not set" and "endpoints" not in status  # status only, no endpoint list
        assert keys_module.STORE.get("openai") is None
        monkeypatch.setenv("DSD_KEYS_REMOTE", "1")
        code, text = call("POST", "/dsd/keys/set", json={"provider": "openai", "key": SENTINEL})
        assert code == 200 and json.loads(text)["openai"] == "set"
    finally:
        close()
    assert keys_module.STORE.get("openai") == SENTINEL


# -- endpoint keys ---------------------------------------------------------------------------------
def test_endpoint_keys_are_set_listed_and_cleared(http, env, keys_module):
    code, text = http("POST", "/dsd/keys/set", json={"endpoint": "HTTP://10.0.0.5:8000/v1/", "key": SENTINEL})
    assert code == 200, text
    status = json.loads(text)
    assert status["endpoints"]["stored"] == ["http://10.0.0.5:8000/v1"] and status["openai"] == "not set"
    assert SENTINEL not in text
    assert keys_module.STORE.get_endpoint("http://10.0.0.5:8000/v1") == SENTINEL
    assert keys_module.resolve_key("openai", "http://10.0.0.5:8000/v1") == SENTINEL
    assert keys_module.resolve_key("gemini", "http://10.0.0.5:8000/v1/") == SENTINEL
    for other in ("http://10.0.0.5:8000/v2", "http://10.0.0.5:8001/v1", "https://10.0.0.5:8000/v1", None):
        assert keys_module.resolve_key("openai", other) is None, other
    code, text = http("POST", "/dsd/keys/clear", json={"endpoint": "http://10.0.0.5:8000/v1"})
    assert code == 200 and json.loads(text)["endpoints"]["stored"] == []
    assert SENTINEL not in (env / "secrets" / "api_keys.json").read_text()


@pytest.mark.parametrize(("body", "says"), [
    ({"endpoint": "file:///etc/passwd", "key": SENTINEL}, "http:// or https://"),
    ({"endpoint": "http://h/v1?x=1", "key": SENTINEL}, "query"),
    ({"endpoint": "https://api.openai.com/v1", "key": SENTINEL}, "official openai endpoint"),
    ({"endpoint": "http://h/v1", "provider": "openai", "key": SENTINEL}, "either"),
    ({"key": SENTINEL}, "either"),
])
def test_bad_endpoint_registrations_are_clear_errors(http, keys_module, body, says):
    code, text = http("POST", "/dsd/keys/set", json=body)
    assert code == 400 and says in json.loads(text)["error"] and SENTINEL not in text


# -- where the store may live, and its modes --------------------------------------------------------
def test_store_in_a_served_folder_is_refused_at_load_and_at_every_read(http, env, keys_module, monkeypatch, caplog):
    """A key file already sitting in ComfyUI's input folder (downloadable through /view) is never used."""
    import folder_paths

    inside = Path(folder_paths.get_input_directory()) / "dsd-test-keys" / "api_keys.json"
    inside.parent.mkdir(parents=True, exist_ok=True)
    try:
        inside.write_text(json.dumps({"version": 1, "keys": {"openai": SENTINEL}}))
        monkeypatch.setenv("DSD_KEY_STORE", str(inside))
        keys_module._REPORTED.clear()
        with caplog.at_level(logging.ERROR):
            keys_module.install()  # at load: one log line naming the file and the problem
        lines = [r.getMessage() for r in caplog.records if str(inside) in r.getMessage()]
        assert lines and "serves over HTTP" in lines[0] and "DSD_KEY_STORE" in lines[0]
        with pytest.raises(keys_module.KeyStoreError, match="does not use it"):
            keys_module.resolve_key("openai", None)
        code, text = http("GET", "/dsd/keys")
        assert code == 500 and "serves over HTTP" in text and SENTINEL not in text
    finally:
        inside.unlink()
        inside.parent.rmdir()
    assert SENTINEL not in caplog.text


def test_the_stores_own_folder_is_tightened_a_shared_one_refused(env, keys_module, monkeypatch, caplog):
    own = env / "own-folder"
    own.mkdir(mode=0o755)
    own.chmod(0o755)
    monkeypatch.setenv("DSD_KEY_STORE", str(own / "api_keys.json"))
    with caplog.at_level(logging.WARNING):
        keys_module.STORE.set("openai", SENTINEL)
    assert stat.S_IMODE(own.stat().st_mode) == 0o700
    assert "now 0700" in caplog.text and str(own) in caplog.text
    shared = env / "shared-folder"
    shared.mkdir()
    shared.chmod(0o755)
    (shared / "notes.txt").write_text("someone else's file")
    monkeypatch.setenv("DSD_KEY_STORE", str(shared / "api_keys.json"))
    with pytest.raises(keys_module.KeyStoreError, match="chmod 700"):
        keys_module.STORE.set("openai", SENTINEL)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755 and not (shared / "api_keys.json").exists()


WATCH_WRITES = textwrap.dedent("""
    import importlib.util, json, os, stat, sys
    from pathlib import Path

    repo, store = Path(sys.argv[1]), Path(sys.argv[2])
    os.umask(0)  # the worst case: every file the kernel creates would be 0666
    seen = []

    def watch(event, args):
        # Every open of a file and every rename in the store's folder: its mode at that moment.
        if event in ("open", "os.rename") and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = Path(os.fsdecode(args[0]))
            if path.parent == store.parent and path.exists():
                seen.append([event, path.name, stat.S_IMODE(path.stat().st_mode)])

    spec = importlib.util.spec_from_file_location("dsdpack", repo / "__init__.py",
                                                  submodule_search_locations=[str(repo)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["dsdpack"] = pack
    spec.loader.exec_module(pack)
    keys = importlib.import_module("dsdpack.nodes.keys")
    sys.addaudithook(watch)
    keys.KeyStore(store).set("openai", "sk-secret-written-under-umask-000")
    keys.KeyStore(store).set_endpoint("http://127.0.0.1:8000/v1", "sk-second-write")
    print(json.dumps({"seen": seen, "file": stat.S_IMODE(store.stat().st_mode),
                      "folder": stat.S_IMODE(store.parent.stat().st_mode)}))
""")


def test_the_key_file_is_never_readable_by_others_even_under_umask_000(tmp_path):
    """In a process with umask 000, an audit hook stats the store's files at every open and rename:
    the temporary file is 0600 before the key is written into it, and so is the result."""
    store = tmp_path / "keys" / "api_keys.json"
    env = {k: v for k, v in os.environ.items() if k != "DSD_KEY_STORE"}
    proc = subprocess.run([sys.executable, "-c", WATCH_WRITES, str(REPO_ROOT), str(store)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    temporaries = [s for s in report["seen"] if s[1].endswith(".tmp")]
    assert len([s for s in temporaries if s[0] == "open"]) >= 2 and any(s[0] == "os.rename" for s in temporaries)
    assert all(mode == 0o600 for _, _, mode in report["seen"]), report["seen"]
    assert (report["file"], report["folder"]) == (0o600, 0o700)
