"""Opening a report in the headless browser of the integration tests (``browser`` fixture in
``tests/integration/conftest.py``)."""

from __future__ import annotations

from pathlib import Path


def open_page(browser, path: Path, width: int, height: int = 1000):
    """Open the file ``path`` in a new page; returns ``(page, errors, requests)``: the console
    errors and page errors seen, and every request that left the file (not file:, data: or
    blob:), both filled as the page runs."""
    page = browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:", "blob:"))
            else None)
    page.goto(Path(path).as_uri())
    return page, errors, requests
