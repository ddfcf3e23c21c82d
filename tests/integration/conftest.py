"""Fixtures of the integration tests: a headless Debian Chromium driven by Playwright.

Needs ``apt-get install chromium`` and ``pip install playwright`` (no ``playwright install``: the
system Chromium is used). A test that takes ``browser`` skips, with the reason shown, when either
is missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str:
    path = os.environ.get("GROKLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.skip(f"no Chromium at {path}: `apt-get install chromium` to run the browser test")
    return path


@pytest.fixture(scope="module")
def browser():
    """A launched Playwright Chromium browser (one per test module)."""
    exe = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed: `pip install playwright` to run the browser test")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()

