"""The shipped workflows in the real ComfyUI web page (headless Chromium)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.comfyui]


def test_page_opens(page):
    page.open()
    page.shot("opened")
    assert page.evaluate("() => window.app.graph !== null")
    assert not page.page_errors
