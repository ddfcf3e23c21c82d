"""Static export: every figure of the page as a PNG or SVG file beside it.

Uses kaleido (>= 1 drives a Chrome/Chromium: ``$BROWSER_PATH`` or the first ``chromium`` /
``google-chrome`` on ``PATH``). If kaleido is missing or cannot start a browser, falls back to
Playwright: it opens the written page in headless Chromium and asks plotly.js for each image
(``Plotly.toImage``).
"""

from __future__ import annotations

import base64
import os
import shutil
import urllib.parse
from pathlib import Path

from ..runs import RunError
from .base import Figure

EXPORT_WIDTH = 1100
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def find_chromium() -> str | None:
    """``$BROWSER_PATH``, else the first chromium/chrome on ``PATH``, else None."""
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).exists():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    return None


def image_path(page: Path, fig: Figure, fmt: str) -> Path:
    """``RUN/report.html`` + ``fig-loss`` -> ``RUN/report-loss.png``."""
    return page.with_name(f"{page.stem}-{fig.id.removeprefix('fig-')}.{fmt}")


def _with_kaleido(figures: list[Figure], paths: list[Path], fmt: str) -> None:
    import kaleido

    kopts: dict = {"mathjax": False}  # no CDN fetch
    if browser := find_chromium():
        kopts["path"] = browser
    specs = [{"fig": f.fig, "path": str(p),
              "opts": {"format": fmt, "width": EXPORT_WIDTH, "height": f.fig.layout.height or 450}}
             for f, p in zip(figures, paths, strict=True)]
    kaleido.write_fig_from_object_sync(specs, kopts=kopts)


def _with_playwright(page: Path, figures: list[Figure], paths: list[Path], fmt: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": EXPORT_WIDTH + 100, "height": 900})
            tab.goto(page.resolve().as_uri())
            for f, out in zip(figures, paths, strict=True):
                url = tab.evaluate(
                    "([id, fmt, w, h]) => Plotly.toImage(id, {format: fmt, width: w, height: h})",
                    [f.id, fmt, EXPORT_WIDTH, f.fig.layout.height or 450])
                head, _, body = url.partition(",")
                raw = base64.b64decode(body) if ";base64" in head else urllib.parse.unquote(body).encode()
                out.write_bytes(raw)
        finally:
            browser.close()


def export_figures(page: Path, figures: list[Figure], fmt: str) -> list[Path]:
    """Write each figure as ``{page stem}-{name}.{fmt}`` beside ``page``; return the paths.

    Raises:
        RunError: neither kaleido nor Playwright could render (install ``kaleido`` and Chromium:
            ``apt-get install chromium``; ``pip install kaleido``).
    """
    paths = [image_path(page, f, fmt) for f in figures]
    try:
        _with_kaleido(figures, paths, fmt)
        if all(p.is_file() for p in paths):
            return paths
        err: Exception = RuntimeError("kaleido wrote no files")
    except Exception as e:  # noqa: BLE001 - any kaleido failure falls back to playwright
        err = e
    try:
        _with_playwright(page, figures, paths, fmt)
    except Exception as e2:  # noqa: BLE001
        raise RunError(f"cannot export figures as {fmt}: kaleido failed ({err}); Playwright failed "
                       f"({e2}). Install Chromium (`apt-get install chromium`) and `pip install "
                       "kaleido`, or set BROWSER_PATH to a Chrome/Chromium binary") from None
    return paths
