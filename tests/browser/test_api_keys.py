"""API keys entered in the real ComfyUI web page cannot be read back over HTTP (issue 8 section 4).

A sentinel key is typed into the DSD settings panel of the real frontend (headless Chromium); then
no route of the server (/settings, /userdata and its listings, /object_info, /history, the saved
workflow, the key routes themselves) nor the page's storage contains it, while the prompt node,
queued from the page, still sends it to the local protocol server (which checks the header).
A second, fresh server starts on a settings file that still holds a key (the pack's old setting)
and moves it into the store as it loads the pack.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
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


def wait_for_history(server, timeout_s: float = 120.0) -> dict:
    """/history once the queued prompt has finished (successfully or not)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        history = json.loads(get_text(server, "/history"))
        if any((h.get("status") or {}).get("status_str") in {"success", "error"} for h in history.values()):
            return history
        time.sleep(0.5)
    raise AssertionError(f"the queued prompt did not finish in {timeout_s:.0f} s:\n{server.log_tail()}")


def test_key_entered_in_ui_is_never_served_but_used(page, comfy_server):
    store = key_store_path(comfy_server.base_dir)
    Image.new("RGB", (64, 48), (200, 40, 30)).save(comfy_server.base_dir / "input" / REFERENCE)
    with FakeLLMServer(responder=responder, api_key=SENTINEL) as llm:
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

        queue_from_page_and_save(page, api_prompt(llm.openai_base_url))
        history = wait_for_history(comfy_server)
        page.shot("after-run")

        # The prompt node used the key from the store: the server accepts only SENTINEL.
        assert llm.requests, f"no request reached the LLM server; history: {json.dumps(history)[:2000]}"
        assert llm.requests[0].headers.get("Authorization") == f"Bearer {SENTINEL}"
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
    leaks = [path for path, text in served.items() if SENTINEL in text]
    assert leaks == [], f"the key is readable at {leaks}"
    storage = page.evaluate("() => JSON.stringify(localStorage) + JSON.stringify(sessionStorage)")
    assert SENTINEL not in storage
    assert SENTINEL not in comfy_server.log_path.read_text(errors="replace")
    # the server is still running (temporary files come and go); links (custom_nodes/) are not followed
    assert files_containing(comfy_server.base_dir, SENTINEL.encode()) == []
    assert not page.page_errors


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
