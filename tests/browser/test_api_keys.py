"""API keys entered in the real ComfyUI web page cannot be read back over HTTP (issue 8 section 4),
and go only where their owner sent them (issue 15).

A sentinel key is typed into the DSD settings panel of the real frontend (headless Chromium); then
no route of the server (/settings, /userdata and its listings, /object_info, /history, the saved
workflow, the key routes themselves) nor the page's storage contains it. The prompt node, queued
from the page with base_url on a local protocol server, sends that server exactly the key the owner
registered for it (and never the provider key typed in the panel). A page on another loopback port
(plain fetch, a sandboxed iframe with Origin: null, a form post) can neither set, clear nor use a
key: the graph it queues reaches its listener without one.
A second, fresh server starts on a settings file that still holds a key (the pack's old setting)
and moves it into the store as it loads the pack.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from PIL import Image

from tests.browser import conftest as browser_conftest
from tests.browser.conftest import key_store_path
from tests.needs import require_comfyui
from tests.support.llm_server import FakeLLMServer, RecordedRequest
from tests.support.tree import files_containing

pytestmark = [pytest.mark.browser, pytest.mark.comfyui]

SENTINEL = "sk-dsd-browser-SENTINEL-7f3a9c21e4b8d605"
ENDPOINT_SENTINEL = "sk-dsd-browser-ENDPOINT-0c1d2e3f4a5b6c7d"  # the key the owner registers for the local server
CAPTION = "a small red ceramic fox figurine with a green dot on its flank"
ENHANCED = "a small red ceramic fox figurine with a green dot on its flank surfing a wave at sunset"
REFERENCE = "dsd_key_reference.png"
WORKFLOW = "workflows/dsd_key_check.json"


def responder(req: RecordedRequest) -> str:
    return CAPTION if req.images else ENHANCED


def get_text(server, path: str) -> str:
    """The body of GET ``path``, error answers included (an error page could leak too)."""
    try:
        with urllib.request.urlopen(server.url + path, timeout=30) as response:
            return response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} " + exc.read().decode("utf-8", errors="replace")


def open_dsd_settings(page) -> None:
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.ShowSettingsDialog')")
    dialog = page.locator(".settings-container")
    dialog.wait_for(timeout=30_000)
    dialog.get_by_text("DSD", exact=True).first.click()
    page.locator("[data-dsd-key-input=openai]").wait_for(timeout=30_000)


def enter_key(page, provider: str, key: str) -> None:
    status = page.locator(f"[data-dsd-key-status={provider}]")
    page.locator(f"[data-dsd-key-input={provider}]").fill(key)
    page.locator(f"[data-dsd-key-save={provider}]").click()
    page.wait_for_function(
        "(p) => document.querySelector(`[data-dsd-key-status=${p}]`).textContent === 'set'", arg=provider,
        timeout=30_000)
    assert status.text_content() == "set"
    assert page.locator(f"[data-dsd-key-input={provider}]").input_value() == ""


def api_prompt(base_url: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": REFERENCE}},
        "2": {"class_type": "DSDPromptEnhance",
              "inputs": {"image": ["1", 0], "prompt": "the figurine surfing a wave", "provider": "openai-compatible",
                         "model": "vision-model", "enabled": True, "base_url": base_url}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }


def queue_from_page_and_save(page, prompt: dict) -> None:
    """Load the graph into the page, queue it the way the Queue button does, and save the workflow."""
    page.evaluate(
        """async ([prompt, path]) => {
            await window.app.loadApiJson(prompt, "dsd_key_check");
            await window.app.queuePrompt(0);
            const { api } = await import("/scripts/api.js");
            await api.storeUserData(path, window.app.graph.serialize(), { overwrite: true, stringify: true });
        }""",
        [prompt, WORKFLOW],
    )


def finished(history: dict) -> int:
    return sum((h.get("status") or {}).get("status_str") in {"success", "error"} for h in history.values())


def wait_for_history(server, done_before: int = 0, timeout_s: float = 120.0) -> dict:
    """/history once a prompt queued after ``done_before`` prompts had finished has finished too."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        history = json.loads(get_text(server, "/history"))
        if finished(history) > done_before:
            return history
        time.sleep(0.5)
    raise AssertionError(f"the queued prompt did not finish in {timeout_s:.0f} s:\n{server.log_tail()}")


def register_endpoint(page, url: str, key: str) -> dict:
    """The owner, on the ComfyUI page itself, registers ``key`` for exactly ``url`` (same-origin JSON POST)."""
    return page.evaluate(
        """async ([url, key]) => {
            const r = await fetch("/dsd/keys/set", {method: "POST", headers: {"Content-Type": "application/json"},
                                                   body: JSON.stringify({endpoint: url, key})});
            return {status: r.status, body: await r.json()};
        }""",
        [url, key],
    )


def test_key_entered_in_ui_is_never_served_but_used(page, comfy_server):
    store = key_store_path(comfy_server.base_dir)
    Image.new("RGB", (64, 48), (200, 40, 30)).save(comfy_server.base_dir / "input" / REFERENCE)
    with FakeLLMServer(responder=responder, api_key=ENDPOINT_SENTINEL) as llm:  # 401 to any other key
        page.open()
        assert page.evaluate("() => window.app.extensions.some((e) => e.name === 'DSD.Settings')")
        assert page.pack_404s() == []

        open_dsd_settings(page)
        page.shot("dsd-settings")
        enter_key(page, "openai", SENTINEL)
        page.shot("key-set")
        # It went through the UI into the store, and only there.
        assert SENTINEL in store.read_text()
        assert stat.S_IMODE(store.stat().st_mode) == 0o600
        assert not store.resolve().is_relative_to(comfy_server.base_dir.resolve())
        page.keyboard.press("Escape")
        # The provider key typed above goes only to api.openai.com; the local server gets the key the
        # owner registers for exactly its URL.
        registered = register_endpoint(page, llm.openai_base_url, ENDPOINT_SENTINEL)
        assert registered["status"] == 200 and registered["body"]["endpoints"]["stored"] == [llm.openai_base_url]
        assert ENDPOINT_SENTINEL not in json.dumps(registered)

        done = finished(json.loads(get_text(comfy_server, "/history")))
        queue_from_page_and_save(page, api_prompt(llm.openai_base_url))
        history = wait_for_history(comfy_server, done)
        page.shot("after-run")

        # The prompt node used the endpoint's key from the store: the server accepts only that one.
        assert llm.requests, f"no request reached the LLM server; history: {json.dumps(history)[:2000]}"
        assert {r.headers.get("Authorization") for r in llm.requests} == {f"Bearer {ENDPOINT_SENTINEL}"}
        assert ENHANCED in json.dumps(history)

    served = {path: get_text(comfy_server, path) for path in (
        "/settings", "/api/settings", "/settings/DSD.Keys.OpenAI", "/settings/DSD.OpenAIApiKey",
        "/userdata/comfy.settings.json", "/userdata?dir=&recurse=true&full_info=true",
        "/userdata?dir=workflows&recurse=true&full_info=true", "/v2/userdata",
        "/userdata/" + urllib.parse.quote(WORKFLOW, safe=""), "/object_info", "/history", "/queue",
        "/dsd/keys", "/api/dsd/keys",
    )}
    assert '"openai": "set"' in served["/dsd/keys"].replace('":"', '": "')
    assert "DSDPromptEnhance" in served["/userdata/" + urllib.parse.quote(WORKFLOW, safe="")]
    for secret in (SENTINEL, ENDPOINT_SENTINEL):
        leaks = [path for path, text in served.items() if secret in text]
        assert leaks == [], f"the key is readable at {leaks}"
        storage = page.evaluate("() => JSON.stringify(localStorage) + JSON.stringify(sessionStorage)")
        assert secret not in storage
        assert secret not in comfy_server.log_path.read_text(errors="replace")
        # the server is still running (temporary files come and go); links (custom_nodes/) are not followed
        assert files_containing(comfy_server.base_dir, secret.encode()) == []
    assert not page.page_errors


ATTACK_SENTINEL = "sk-dsd-browser-OWNERS-KEY-5e6f7a8b9c0d1e2f"
ATTACKER_KEY = "sk-attacker-planted-key-0000000000"


@contextlib.contextmanager
def attacker_site():
    """A web site on another loopback port: any path answers an empty HTML page (its scripts are the test's)."""
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server spelling
            body = b"<!doctype html><html><head><title>cute cats</title></head><body></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{site.server_address[1]}"
    finally:
        site.shutdown()
        site.server_close()
        thread.join(10)


def owner_post(server, path: str, body: dict) -> dict:
    """What the owner's own script sends: JSON, with the server's own Origin, from this machine."""
    request = urllib.request.Request(server.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Origin": server.url})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


# Run inside the attacker's page: every way a page can write to another origin without CORS.
PAGE_ATTACKS = """async ([comfy, setBody, clearBody, promptBody]) => {
    const out = {};
    const tryFetch = async (name, url, init) => {
        try { const r = await fetch(url, init); out[name] = r.type === "opaque" ? "sent (opaque)" : r.status; }
        catch (e) { out[name] = "blocked: " + e.message; }
    };
    const json = {"Content-Type": "application/json"};
    const text = {"Content-Type": "text/plain"};
    await tryFetch("set json", comfy + "/dsd/keys/set", {method: "POST", headers: json, body: setBody});
    await tryFetch("set text", comfy + "/dsd/keys/set", {method: "POST", mode: "no-cors", headers: text, body: setBody});
    await tryFetch("clear text", comfy + "/dsd/keys/clear", {method: "POST", mode: "no-cors", headers: text, body: clearBody});
    await tryFetch("delete", comfy + "/dsd/keys/openai", {method: "DELETE"});
    await tryFetch("prompt", comfy + "/prompt", {method: "POST", mode: "no-cors", headers: text, body: promptBody});
    return out;
}"""

# A sandboxed iframe (no allow-same-origin) has an opaque origin: its requests carry Origin: null,
# which ComfyUI's own origin check lets through.
SANDBOXED = """([comfy, setBody, clearBody, promptBody]) => new Promise((resolve) => {
    window.addEventListener("message", (event) => resolve(event.data));
    const script = `
        const post = (path, body) => fetch(${JSON.stringify(comfy)} + path,
            {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body})
            .then(() => "sent", (e) => "blocked: " + e.message);
        (async () => {
            const out = {origin: String(self.origin)};
            out.set = await post("/dsd/keys/set", ${JSON.stringify(setBody)});
            out.clear = await post("/dsd/keys/clear", ${JSON.stringify(clearBody)});
            out.prompt = await post("/prompt", ${JSON.stringify(promptBody)});
            parent.postMessage(out, "*");
        })();`;
    const frame = document.createElement("iframe");
    frame.setAttribute("sandbox", "allow-scripts");
    frame.srcdoc = "<script>" + script + "</scr" + "ipt>";
    document.body.append(frame);
})"""

FORM_POSTS = """([comfy, target]) => {
    // enctype text/plain turns name=value into a JSON-looking body: the classic CSRF trick.
    const form = document.createElement("form");
    form.method = "POST"; form.enctype = "text/plain"; form.action = comfy + target;
    const field = document.createElement("input");
    field.name = '{"provider": "openai", "key": "' + "sk-attacker-planted-key-000"; field.value = '0000000"}';
    form.append(field); document.body.append(form); form.submit();
}"""


def test_a_foreign_page_can_neither_change_nor_use_keys(page, comfy_server):
    store = key_store_path(comfy_server.base_dir)
    Image.new("RGB", (64, 48), (200, 40, 30)).save(comfy_server.base_dir / "input" / REFERENCE)
    assert owner_post(comfy_server, "/dsd/keys/set", {"provider": "openai", "key": ATTACK_SENTINEL})["openai"] == "set"
    before = store.read_bytes()
    set_body = json.dumps({"provider": "openai", "key": ATTACKER_KEY})
    clear_body = json.dumps({"provider": "openai"})
    with FakeLLMServer(responder=responder) as listener, attacker_site() as site:
        prompt_body = json.dumps({"prompt": api_prompt(listener.openai_base_url)})
        done = finished(json.loads(get_text(comfy_server, "/history")))
        page.goto(site + "/cats.html")
        plain = page.evaluate(PAGE_ATTACKS, [comfy_server.url, set_body, clear_body, prompt_body])
        sandboxed = page.evaluate(SANDBOXED, [comfy_server.url, set_body, clear_body, prompt_body])
        assert sandboxed["origin"] == "null" and sandboxed["prompt"] == "sent", sandboxed
        with page.expect_response(lambda r: r.url.endswith("/dsd/keys/set") and r.request.method == "POST") as form:
            page.evaluate(FORM_POSTS, [comfy_server.url, "/dsd/keys/set"])
        assert form.value.status == 403  # the page's Origin is another site
        # The graph the sandboxed page queued ran against the attacker's listener, without a key.
        history = wait_for_history(comfy_server, done)
        assert len(listener.requests) == 2, (plain, sandboxed, json.dumps(history)[:2000])
        for request in listener.requests:
            assert "Authorization" not in request.headers
            assert ATTACK_SENTINEL not in json.dumps(request.headers)
    page.shot("attacks-done")
    assert store.read_bytes() == before, (plain, sandboxed)  # neither replaced nor cleared
    key_answers = [(status, url) for status, url in page.bad_responses if "/dsd/keys" in url]
    assert key_answers and {status for status, _ in key_answers} <= {403, 415}, key_answers
    assert ATTACKER_KEY not in comfy_server.log_path.read_text(errors="replace")

    # The owner's Settings panel still works: it shows the key and clears it.
    page.open()
    open_dsd_settings(page)
    status = "(s) => document.querySelector('[data-dsd-key-status=openai]').textContent === s"
    page.wait_for_function(status, arg="set", timeout=30_000)
    page.locator("[data-dsd-key-clear=openai]").click()
    page.wait_for_function(status, arg="not set", timeout=30_000)
    page.shot("owner-cleared")
    assert ATTACK_SENTINEL not in store.read_text()


def test_server_start_moves_a_key_out_of_comfy_settings(tmp_path):
    """The migration as users meet it: ComfyUI starts, loads the pack, the key leaves the settings file."""
    base = tmp_path / "base"
    browser_conftest._install_packs(base)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.write_text(json.dumps({**browser_conftest.FIRST_SETTINGS, "DSD.OpenAIApiKey": SENTINEL}, indent=4))
    port = browser_conftest._free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"}}
    env.update(PYTHONUNBUFFERED="1", DSD_KEY_STORE=str(key_store_path(base)))
    log_path = tmp_path / "server.log"
    command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--disable-auto-launch", "--base-directory", str(base)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=require_comfyui(), stdout=log, stderr=subprocess.STDOUT, env=env)
    server = browser_conftest.ComfyServer(url=f"http://127.0.0.1:{port}", base_dir=base, log_path=log_path,
                                          process=process)
    try:
        browser_conftest._wait_until_serving(server)
        served = get_text(server, "/settings") + get_text(server, "/userdata/comfy.settings.json")
        status = json.loads(get_text(server, "/dsd/keys"))
    finally:
        browser_conftest._stop(process)
    assert SENTINEL not in served and "Comfy.TutorialCompleted" in served
    assert status["openai"] == "set"
    assert json.loads(key_store_path(base).read_text())["keys"] == {"openai": SENTINEL}
    assert "DSD.OpenAIApiKey" not in settings.read_text()
    log = log_path.read_text(errors="replace")
    assert "moved the openai API key out of" in log and str(settings) in log
    assert SENTINEL not in log
