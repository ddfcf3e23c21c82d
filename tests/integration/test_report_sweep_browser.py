"""The sweep report in a real browser (headless Chromium driven by Playwright): the page's own
script classifies, recolours and recounts as ``classify_outcome`` does, hovering a dot shows its
curves, clicking it opens its report.

Needs ``apt-get install chromium`` and ``pip install playwright``; skips, with the reason shown,
when either is missing (as ``test_report_browser.py``).
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from browser_page import open_page
from groklab.analysis.outcome import classify_outcome
from groklab.report import write_report
from groklab.report.sweep_data import CLASSES
from groklab.report.sweep_figures import COLOURS
from synthetic_sweep import make_sweep

GRID = {"train.weight_decay": [0.01, 0.1], "model.d_hidden": [16, 32], "task.n_train": [750, 1250]}

DOTS = """() => {  // every dot: [member, figure id, trace, point, colour, viewport x, viewport y]
  const out = [];
  for (const gd of document.querySelectorAll('[id^="fig-sweep-grid-"]')) {
    const r = gd.getBoundingClientRect(), fl = gd._fullLayout;
    gd.data.forEach((t, ti) => {
      const xa = fl['xaxis' + (t.xaxis || 'x').slice(1)], ya = fl['yaxis' + (t.yaxis || 'y').slice(1)];
      Array.from(t.customdata).forEach((m, k) => out.push([m, gd.id, ti, k, t.marker.color[k],
        r.left + xa._offset + xa.l2p(t.x[k]), r.top + ya._offset + ya.l2p(t.y[k])]));
    });
  }
  return out;
}"""


def oracle(rows: list[dict], min_loss: float, max_ratio: float) -> str:
    try:
        return classify_outcome(rows, min_loss=min_loss, max_ratio=max_ratio).outcome
    except ValueError:
        return "none"


def test_sweep_page_in_chromium(browser, tmp_path):
    root, rows_of = make_sweep(tmp_path / "sweep", GRID, [0, 1, 2])
    members = [m["dir"] for m in json.loads((root / "sweep.json").read_text())["members"]]
    page_path = write_report(root)
    page, errors, requests = open_page(browser, page_path, width=1500)
    page.wait_for_selector("#sweep-min-loss[data-ready='1']", timeout=20_000)
    for fid in ("fig-sweep-grid-0", "fig-sweep-curves"):
        assert page.evaluate(f"document.querySelectorAll('#{fid} svg.main-svg').length") > 0, fid

    def check(min_loss: float, max_ratio: float) -> list[str]:
        """The page's classes, dot colours and counts against classify_outcome at these thresholds."""
        want = [oracle(rows_of[d], min_loss, max_ratio) for d in members]
        assert page.evaluate("window.groklabSweep.classes.slice()") == want
        dots = page.evaluate(DOTS)
        assert sorted(d[0] for d in dots) == list(range(len(members)))
        assert all(colour == COLOURS[want[m]] for m, _, _, _, colour, _, _ in dots)
        n = Counter(want)
        assert [int(page.inner_text(f"#sweep-count-2-{c}")) for c in CLASSES] == [n[c] for c in CLASSES]
        return want

    default = check(1e-5, 5e4)  # the script's rule at the default thresholds = the static page
    page.evaluate("document.getElementById('fig-sweep-grid-0').scrollIntoView({block: 'center'})")
    _, _, _, _, _, px, py = next(d for d in page.evaluate(DOTS) if d[0] == 5)
    page.mouse.move(px, py)
    page.wait_for_timeout(300)
    assert members[5] in page.inner_text("#sweep-info")
    steps = page.evaluate("document.getElementById('fig-sweep-curves').data[0].x")
    assert list(steps) == [r["step"] for r in rows_of[members[5]]]
    (root / members[5] / "report.html").write_text("<p>member report</p>")  # so the popup has a page
    with page.expect_popup() as popup:
        page.mouse.click(px, py)
    popup.value.wait_for_load_state()
    assert popup.value.url == (root / members[5] / "report.html").as_uri()
    popup.value.close()

    page.fill("#sweep-min-loss", "-2")  # min loss 1e-2: the can't-fit members (min train ~2e-3) move
    min_loss, max_ratio = page.evaluate("window.groklabSweep.thresholds()")
    assert min_loss == pytest.approx(1e-2, rel=1e-12)
    moved = check(min_loss, max_ratio)
    assert moved != default and page.inner_text("#sweep-min-loss-value") == "1e-2"
    seen = {tuple(default), tuple(moved)}
    # log10 thresholds that move members across each rule (curves: tests/synthetic_sweep.py); a
    # ratio of 1e8 is about the grok members' own max ratio
    for lm, lr in [(-0.5, 4.7), (-6.5, 4.7), (-7.5, 4.7), (-7.5, 0), (-3, 2.1), (-6, 8), (-8, 8)]:
        page.fill("#sweep-min-loss", str(lm))
        page.fill("#sweep-max-ratio", str(lr))
        seen.add(tuple(check(*page.evaluate("window.groklabSweep.thresholds()"))))
    assert len(seen) >= 5  # the thresholds did move members
    page.click("#sweep-reset")
    assert check(1e-5, 5e4) == default
    page.screenshot(path=str(tmp_path / "sweep.png"), full_page=True)
    assert errors == []
    assert requests == []  # works offline
