"""The report in a real browser: headless Debian Chromium driven by Playwright.

Needs ``apt-get install chromium`` and ``pip install playwright`` (no ``playwright install``: the
system Chromium is used). Skips, with the reason shown, when either is missing.
"""

from __future__ import annotations

from browser_page import open_page
from groklab.report import write_report

FIGURES = ["fig-loss", "fig-progress", "fig-traj-loss", "fig-traj-embed", "fig-traj-circles",
           "fig-traj-neurons", "fig-fourier", "fig-circles", "fig-clusters", "fig-neurons", "fig-wl",
           "fig-attention", "fig-logits"]


def test_report_renders_in_chromium(browser, report_run, tmp_path):
    page_path = write_report(report_run, tmp_path / "report.html")
    page, errors, requests = open_page(browser, page_path, width=1280)
    page.wait_for_selector("#traj-slider[data-ready='1']", timeout=20_000)

    for fid in FIGURES:  # every figure drew something
        n = page.evaluate(f"document.querySelectorAll('#{fid} svg.main-svg, #{fid} canvas').length")
        assert n > 0, f"{fid} did not render"

    def state():
        return page.evaluate("""() => JSON.stringify([
            document.getElementById('fig-traj-embed').data[0].y,
            document.getElementById('fig-traj-circles').data[0].x,
            document.getElementById('fig-traj-neurons').data[0].z,
            document.getElementById('fig-traj-loss').layout.shapes[0].x0,
            document.querySelector('#fig-traj-embed svg.main-svg').outerHTML])""")

    before, label_before = state(), page.inner_text("#traj-step")
    page.fill("#traj-slider", "0")  # move the slider to the first checkpoint
    page.wait_for_timeout(300)
    after, label_after = state(), page.inner_text("#traj-step")
    assert before != after
    assert label_before != label_after and label_after.startswith("step 0")
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert errors == []
    assert requests == []  # works offline: nothing fetched from the network
