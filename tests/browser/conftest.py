"""A real ComfyUI server with this pack installed, driven by headless Chromium (the web page artists use).

Needs the ComfyUI host (``tests/needs.py`` ``require_comfyui``) and Debian's Chromium (``require_chromium``;
Playwright drives it through ``executable_path``, no browser download). Without them a test here fails
under ``CI=true`` and is skipped elsewhere, naming the command that brings them. Mark tests ``browser``.

Fixtures:
- ``comfy_server`` (session) -> :class:`ComfyServer`: ``.url`` (``http://127.0.0.1:<free port>``),
  ``.base_dir`` (``--base-directory``: ``custom_nodes/``, ``models/``, ``input/``, ``output/``, ``user/``),
  ``.log_path`` (the server's stdout+stderr), ``.get_json(path)``, ``.post_json(path, body)``,
  ``.alive()``, ``.log_tail(n)``. It is ``main.py --cpu --listen 127.0.0.1 --port <free>
  --disable-auto-launch --base-directory <tmp>`` of the host; ComfyUI 0.8.0 reads custom nodes from
  ``<base>/custom_nodes`` only (not the host's own, so ComfyUI-GGUF is absent), where
  ``comfyui-dsd`` is a symlink to this repository and ``dsd_test_nodes`` one to
  ``tests/browser/dsd_test_nodes`` (test-only nodes with tiny in-process models, ids ``DSDBrowserTest_*``).
  Settings, user data and outputs live under the temp base, so nothing touches the host checkout; the
  user's settings start as ``FIRST_SETTINGS`` (the first-run tutorial and its templates dialog are off, so
  every page opens on the default graph; tests open dialogs themselves). The server's log is copied to
  the artifact folder as ``server-<xdist worker>.log`` at the end of the session.
- ``browser`` (session): a Playwright ``Browser`` (headless Chromium from ``require_chromium()``).
- ``page`` (function) -> :class:`UIPage`: a fresh browser context + page (1400x900). Everything a
  Playwright ``Page`` has is reachable on it directly (``page.locator(...)``, ``page.evaluate(...)``), plus:
  ``.open()`` loads the ComfyUI web page and waits until the app and its graph are ready;
  ``.shot(name)`` saves ``NN-<name>.png`` in the test's artifact folder and returns its path;
  ``.console`` (``(type, text)`` of every console message), ``.page_errors`` (uncaught exceptions),
  ``.bad_responses`` (``(status, url)`` of every response >= 400), ``.failed_requests`` (``(url, error)``
  of requests that got no response: offline hosts such as api.comfy.org, aborted loads);
  ``.pack_404s()`` -> the bad responses for this pack's own files (``/extensions/comfyui-dsd/``, our
  template thumbnails) and for paths that our web files' imports would reach by mistake.
  Artifacts go to ``$DSD_TEST_ARTIFACTS`` or ``outputs/test-artifacts/browser/`` (git-ignored), one folder
  per test (its node name, filesystem-safe), with ``console.txt`` written at teardown.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.needs import missing, require_chromium, require_comfyui

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_DIR_NAME = "comfyui-dsd"  # the folder name the README's install uses
TEST_NODES_DIR = Path(__file__).resolve().parent / "dsd_test_nodes"
SERVER_START_TIMEOUT_S = 240.0  # cold imports of torch + ComfyUI on a loaded 2-core machine
APP_READY_TIMEOUT_MS = 120_000
# No first-run tutorial (its templates dialog would cover every page); node text drawn at any zoom and no
# minimap over the corner, so a screenshot of a whole fitted graph stays readable.
FIRST_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,
    "Comfy.Minimap.Visible": False,
}


def artifacts_root() -> Path:
    return Path(os.environ.get("DSD_TEST_ARTIFACTS") or REPO_ROOT / "outputs" / "test-artifacts" / "browser")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ComfyServer:
    url: str
    base_dir: Path
    log_path: Path
    process: subprocess.Popen

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def post_json(self, path: str, body: Any, timeout: float = 30.0) -> Any:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())


def key_store_path(base: Path) -> Path:
    """The server's DSD key store (``DSD_KEY_STORE``): beside the base dir, never inside it."""
    return base.parent / f"{base.name}-keys" / "api_keys.json"


def _install_packs(base: Path) -> None:
    custom_nodes = base / "custom_nodes"
    custom_nodes.mkdir(parents=True)
    (custom_nodes / PACK_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    if TEST_NODES_DIR.is_dir():
        (custom_nodes / TEST_NODES_DIR.name).symlink_to(TEST_NODES_DIR, target_is_directory=True)
    user = base / "user" / "default"
    user.mkdir(parents=True)
    (user / "comfy.settings.json").write_text(json.dumps(FIRST_SETTINGS, indent=1))


def _wait_until_serving(server: ComfyServer) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"ComfyUI exited with {server.process.returncode} while starting:\n{server.log_tail()}")
        try:
            server.get_json("/system_stats", timeout=5)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            time.sleep(0.5)
    raise RuntimeError(f"ComfyUI did not answer /system_stats in {SERVER_START_TIMEOUT_S:.0f} s:\n{server.log_tail()}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory: pytest.TempPathFactory):
    root = require_comfyui()
    base = tmp_path_factory.mktemp("comfy_base")
    _install_packs(base)
    port = _free_port()
    log_path = base / "server.log"
    command = [
        sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--disable-auto-launch", "--base-directory", str(base),
    ]
    # Provider keys of the machine running the tests would win over keys entered in the UI, and the
    # pack's key store must live outside the served base dir and outside the real ~/.config.
    env = {k: v for k, v in os.environ.items() if k not in {"OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"}}
    env.update(PYTHONUNBUFFERED="1", DSD_KEY_STORE=str(key_store_path(base)))
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = ComfyServer(url=f"http://127.0.0.1:{port}", base_dir=base, log_path=log_path, process=process)
    try:
        _wait_until_serving(server)
        yield server
    finally:
        _stop(process)
        keep = artifacts_root() / f"server-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.log"
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log_path, keep)


# Module scope, not session: Playwright's sync API keeps its event loop marked as running in the main
# thread while it is alive, so any later test in the same worker that runs a loop (the in-process ComfyUI
# host, asyncio.run) would fail. Pytest tears a module fixture down before the next module's test runs.
@pytest.fixture(scope="module")
def browser():
    executable = require_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is not installed", "pip install -r requirements-dev.txt (no browser download)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class UIPage:
    """A Playwright page on the ComfyUI server, with what it logged and a screenshot helper."""

    pw: Any  # playwright.sync_api.Page
    server: ComfyServer
    artifacts: Path
    console: list[tuple[str, str]] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    bad_responses: list[tuple[int, str]] = field(default_factory=list)
    failed_requests: list[tuple[str, str]] = field(default_factory=list)
    _shots: int = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pw, name)

    def open(self) -> UIPage:
        self.pw.goto(self.server.url + "/", wait_until="domcontentloaded")
        self.pw.wait_for_function(
            "() => window.app && window.app.graph && window.app.vueAppReady && document.querySelector('canvas')",
            timeout=APP_READY_TIMEOUT_MS,
        )
        return self

    def shot(self, name: str) -> Path:
        self._shots += 1
        path = self.artifacts / f"{self._shots:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
        self.pw.screenshot(path=str(path))
        return path

    def pack_404s(self) -> list[tuple[int, str]]:
        ours = (f"/extensions/{PACK_DIR_NAME}/", f"/workflow_templates/{PACK_DIR_NAME}/", "/extensions/scripts/")
        return [(status, url) for status, url in self.bad_responses if any(part in url for part in ours)]

    def write_log(self) -> None:
        lines = [f"console.{kind}: {text}" for kind, text in self.console]
        lines += [f"pageerror: {text}" for text in self.page_errors]
        lines += [f"http {status}: {url}" for status, url in self.bad_responses]
        lines += [f"failed: {url} ({error})" for url, error in self.failed_requests]
        (self.artifacts / "console.txt").write_text("\n".join(lines) + "\n")


def _watch(ui: UIPage) -> None:
    ui.pw.on("console", lambda message: ui.console.append((message.type, message.text)))
    ui.pw.on("pageerror", lambda error: ui.page_errors.append(str(error)))
    ui.pw.on("response", lambda r: ui.bad_responses.append((r.status, r.url)) if r.status >= 400 else None)
    ui.pw.on("requestfailed", lambda request: ui.failed_requests.append((request.url, request.failure or "")))


@pytest.fixture
def page(browser, comfy_server: ComfyServer, request: pytest.FixtureRequest):
    folder = artifacts_root() / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    ui = UIPage(pw=context.new_page(), server=comfy_server, artifacts=folder)
    _watch(ui)
    try:
        yield ui
    finally:
        ui.write_log()
        context.close()
