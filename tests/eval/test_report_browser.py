"""The report folder opened in the real browser (Debian's Chromium through Playwright), from a copy in another
place: every picture loads, no console error, the answer comes first, tables sort; a screenshot is kept."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dsd.eval.run import run_eval
from tests.eval.eval_bench import make_bench
from tests.eval.test_pairwise import config, seeing_judge, write_systems
from tests.eval_fixtures import write_tiny_clip
from tests.needs import require_chromium
from tests.support.llm_server import FakeLLMServer

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("DSD_TEST_ARTIFACTS") or REPO / "outputs" / "test-artifacts") / "eval-report"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def report(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("report_browser")
    bench = make_bench(tmp / "bench")
    sources = write_systems(tmp, bench)
    mp = pytest.MonkeyPatch()
    mp.setenv("OPENAI_API_KEY", "test-key")
    request.addfinalizer(mp.undo)
    with FakeLLMServer(responder=seeing_judge) as srv:
        cfg = config(tmp, srv.openai_base_url, sources, bench)
        cfg.clip = write_tiny_clip(tmp / "clip")
        run_eval(cfg)
    moved = tmp / "elsewhere" / "report"  # the folder is self-contained: a copy anywhere still works
    shutil.copytree(tmp / "out" / "report", moved)
    return moved


def test_report_opens_in_chromium_with_every_image_and_no_console_error(report):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=require_chromium(), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            console, errors = [], []
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report.joinpath("index.html").as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path=str(ARTIFACTS / "report-top.png"))
            first_h2 = page.locator("h2").first.inner_text()
            page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
            page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=60_000)
            broken = page.evaluate("Array.from(document.images).filter(i => !i.naturalWidth).map(i => i.src)")
            count = page.evaluate("document.images.length")
            table = page.locator("table.sortable").first
            column = table.locator("th").nth(1)  # system
            column.click()
            up = table.locator("tbody tr td:nth-child(2)").all_inner_texts()
            column.click()
            down = table.locator("tbody tr td:nth-child(2)").all_inner_texts()
            page.screenshot(path=str(ARTIFACTS / "report-full.png"), full_page=True)
        finally:
            browser.close()
    assert first_h2.startswith("Systems ranked by")
    assert count >= 3 + 2 + 2 * 3 and broken == []  # plots, references, thumbnails
    assert errors == [] and [m for m in console if m[0] == "error"] == []
    assert up == sorted(up) and down == sorted(up, reverse=True) and up != down
    assert (ARTIFACTS / "report-full.png").stat().st_size > 10_000
