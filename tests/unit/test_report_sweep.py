"""The sweep report (``report/sweep.py``) on synthetic sweep directories (``tests/synthetic_sweep.py``):
hand-made curves for each of PAIR's classes, whose outcome ``classify_outcome`` gives (the oracle).
Checks the members' data in the page, the class counts and dot colours, the axes' defaults and
errors, the seed statistics against hand-computed t-intervals, and the dispatch from
``write_report`` and ``groklab report``."""

from __future__ import annotations

import base64
import csv
import gzip
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close as _assert_close

from groklab.analysis.outcome import classify_outcome
from groklab.cli import main
from groklab.config import ConfigError
from groklab.report import write_report
from groklab.report.sweep import MISSING, build_sweep_report
from groklab.report.sweep_data import CLASSES, Axes, downsample, mean_ci, resolve_axes, t_quantile
from groklab.report.sweep_figures import COLOURS
from groklab.runs import RunError
from synthetic_sweep import make_sweep

GRID3 = {"train.weight_decay": [0.01, 0.1], "model.d_hidden": [16, 32], "task.n_train": [750, 1250]}
T975_DF1 = math.tan(0.475 * math.pi)  # t_{0.975} with 1 df: the Cauchy quantile tan(pi (q - 1/2))
T975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # 2 df: (2q - 1) / sqrt(2 q (1 - q))
T975_DF4 = 2.7764451  # 4 df: statistical tables (e.g. NIST/SEMATECH e-Handbook, Table 1.3.6.7.2)


def assert_close(actual, expected, **kw) -> None:
    t = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float64))  # noqa: E731
    _assert_close(t(actual), t(expected), **kw)


def oracle_class(rows: list[dict], **thresholds) -> str:
    try:
        return classify_outcome(rows, **thresholds).outcome
    except ValueError:
        return "none"


def payload(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="traj-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


def unpack(a: dict) -> np.ndarray:
    dtype = {"u2": "<u2", "i4": "<i4"}[a["dtype"]]
    return np.frombuffer(gzip.decompress(base64.b64decode(a["gz"])), dtype=dtype)


def figure(page: str, fig_id: str) -> dict:
    m = re.search(rf"<div id=\"{fig_id}\".*?const f=(\{{.*?\}});Plotly\.newPlot", page, re.S)
    return json.loads(m.group(1))


def plain(x):
    """A plotly array (a list, or ``{dtype, bdata}`` base64) as a list."""
    if isinstance(x, dict) and "bdata" in x:
        return np.frombuffer(base64.b64decode(x["bdata"]), dtype=np.dtype(x["dtype"])).tolist()
    return list(x)


def counts_table(page: str) -> dict[tuple[int, str], int]:
    return {(int(r), c): int(n) for r, c, n in re.findall(r'id="sweep-count-(\d+)-(\w+)">(\d+)<', page)}


@pytest.fixture(scope="module")
def sweep3(tmp_path_factory):
    """3 keys x 2 values x 3 seeds = 24 members, the four classes in turn, the last one without a
    test loss; and its page."""
    root, rows = make_sweep(tmp_path_factory.mktemp("sweep") / "s", GRID3, [0, 1, 2])
    return root, rows, write_report(root).read_text()


def test_page_has_every_members_data(sweep3):
    root, rows_of, page = sweep3
    spec = json.loads((root / "sweep.json").read_text())
    P = payload(page)
    assert [m["d"] for m in P["members"]] == [m["dir"] for m in spec["members"]]
    off, steps = unpack(P["curves"]["offsets"]), unpack(P["curves"]["steps"])
    train, test = unpack(P["curves"]["train"]), unpack(P["curves"]["test"])
    lo, scale = P["curves"]["lo"], P["curves"]["scale"]
    for i, m in enumerate(P["members"]):
        rows = rows_of[m["d"]]
        assert m["r"] == f"{m['d']}/report.html"
        try:
            o = classify_outcome(rows)
            assert_close(m["s"], [o.min_train_loss, o.min_test_loss, o.max_ratio], rtol=1e-12, atol=0)
        except ValueError:  # the member without a test loss
            assert m["s"][1] is None and m["s"][2] is None
        a, b = off[i], off[i + 1]
        assert steps[a:b].tolist() == [r["step"] for r in rows]  # 51 rows: all kept
        for codes, key in ((train[a:b], "train_loss"), (test[a:b], "test_loss")):
            want = np.array([np.nan if r[key] is None else r[key] for r in rows])
            assert ((codes == MISSING) == np.isnan(want)).all()
            got = 10 ** (lo + codes[codes != MISSING] * scale)
            assert_close(got, want[~np.isnan(want)], rtol=5e-4, atol=0)  # 16-bit levels of log10 loss


def test_static_counts_and_colours_follow_classify_outcome(sweep3):
    root, rows_of, page = sweep3
    spec = json.loads((root / "sweep.json").read_text())
    want = [oracle_class(rows_of[m["dir"]]) for m in spec["members"]]
    assert set(want) == set(CLASSES)  # the fixture has every class
    table = counts_table(page)
    for r, wd in enumerate([*GRID3["train.weight_decay"], None]):  # one row per facet value, then "all"
        n = Counter(w for w, m in zip(want, spec["members"], strict=True)
                    if wd is None or m["values"]["train.weight_decay"] == wd)
        assert {c: table[(r, c)] for c in CLASSES} == {c: n[c] for c in CLASSES}
    fig, P = figure(page, "fig-sweep-grid-0"), payload(page)
    seen = []
    for p, (trace, ids) in enumerate(zip(fig["data"], P["grids"][0]["traces"], strict=True)):
        assert plain(trace["customdata"]) == ids
        xs, ys = plain(trace["x"]), plain(trace["y"])
        for i, colour, x, y in zip(ids, plain(trace["marker"]["color"]), xs, ys, strict=True):
            v = spec["members"][i]["values"]
            assert colour == COLOURS[want[i]]
            assert p == GRID3["train.weight_decay"].index(v["train.weight_decay"])  # panel = facet value
            assert round(x) == GRID3["model.d_hidden"].index(v["model.d_hidden"])  # the cell's centre
            assert round(y) == GRID3["task.n_train"].index(v["task.n_train"])
            assert 0 < abs(x - round(x)) + abs(y - round(y)) < 0.5  # 3 seeds: offset around it
        seen += ids
    assert sorted(seen) == list(range(len(spec["members"])))


def test_downsample_keeps_ends_and_minima():
    t = np.arange(1001)
    rows = [{"step": 10 * int(s), "train_loss": float(1 + (s - 333) ** 2), "test_loss": None if s % 3 else
             float(2 + (s - 699) ** 2)} for s in t]  # min at row 699 (logged: 699 % 3 == 0)
    steps, train, test = downsample(rows, 200)
    assert len(steps) <= 200 and steps[0] == 0 and steps[-1] == 10_000
    assert 3330 in steps.tolist() and 6990 in steps.tolist()
    assert np.all(np.diff(steps) > 0)
    assert_close(np.nanmin(train), 1.0, rtol=0, atol=0)
    assert_close(np.nanmin(test), 2.0, rtol=0, atol=0)


@pytest.mark.parametrize(("keys", "choice", "want"), [
    ([], {}, Axes(None, "seed", None, ())),
    (["t.a"], {}, Axes(None, "t.a", "seed", ())),
    (["t.a", "m.b"], {}, Axes(None, "t.a", "m.b", ())),
    (["t.a", "m.b", "s.c"], {}, Axes("t.a", "m.b", "s.c", ())),
    (["t.a", "m.b", "s.c", "t.d"], {}, Axes("t.a", "m.b", "s.c", ("t.d",))),
    (["t.a", "m.b", "s.c"], {"facet": "c", "x": "t.a"}, Axes("s.c", "t.a", "m.b", ())),  # "c": the short name
    (["t.a", "m.b"], {"facet": "t.a"}, Axes("t.a", "m.b", "seed", ())),
    (["t.a", "m.b", "s.c"], {"y": "seed"}, Axes("t.a", "m.b", "seed", ("s.c",))),
    ([], {"y": "seed"}, Axes(None, "seed", None, ())),
])
def test_resolve_axes(keys, choice, want):
    assert resolve_axes(keys, **choice) == want


def test_axis_errors(sweep3):
    root = sweep3[0]
    with pytest.raises(ConfigError, match=r"'lr' is not a key.*train\.weight_decay, model\.d_hidden, "
                                          r"task\.n_train, seed"):
        write_report(root, root / "x.html", facet="lr")
    with pytest.raises(ConfigError, match="must be different"):
        write_report(root, root / "x.html", x="d_hidden", y="model.d_hidden")
    with pytest.raises(ConfigError, match="only for a sweep directory"):
        write_report(root / "runs", None, None, facet="d_hidden")  # not a sweep: the option is refused
    assert main(["report", str(root), "-o", str(root / "cli.html")]) == 0  # the existing CLI dispatches
    assert "PAIR&#x27;s small multiples" in (root / "cli.html").read_text() or \
        "PAIR's small multiples" in (root / "cli.html").read_text()


def _fresh(tmp_path: Path) -> Path:
    return make_sweep(tmp_path / "s", {"train.weight_decay": [0.1, 1.0]}, [0])[0]


@pytest.mark.parametrize(("file", "damage", "match"), [
    ("sweep.json", "{not json", r"sweep\.json: not valid JSON.*Re-run `groklab sweep`"),
    ("sweep.json", '{"format": "other"}', r'"format": "groklab-sweep"'),
    ("sweep.json", None, r"sweep\.json: missing"),
    ("results.csv", None, r"results\.csv: missing.*groklab sweep"),
    ("results.csv", "run,seed\nruns/x,0\n", r"columns \[.*'min_train_loss'.*\] are missing"),
])
def test_broken_sweep_files(tmp_path, file, damage, match):
    root = _fresh(tmp_path)
    if damage is None:
        (root / file).unlink()
    else:
        (root / file).write_text(damage)
    with pytest.raises(RunError, match=match):
        build_sweep_report(root)


def test_bad_values_in_the_files(tmp_path):
    root = _fresh(tmp_path)
    text = (root / "results.csv").read_text().splitlines()
    cells = text[1].split(",")
    cells[text[0].split(",").index("min_train_loss")] = "lots"
    (root / "results.csv").write_text("\n".join([text[0], ",".join(cells), *text[2:]]) + "\n")
    with pytest.raises(RunError, match=r"line 2, column min_train_loss: 'lots' is not a number"):
        build_sweep_report(root)
    root = _fresh(tmp_path / "b")
    spec = json.loads((root / "sweep.json").read_text())
    spec["members"][0]["values"]["train.weight_decay"] = 0.5
    (root / "sweep.json").write_text(json.dumps(spec))
    with pytest.raises(RunError, match=r"train\.weight_decay=0\.5, not one of the grid's \[0\.1, 1\.0\]"):
        build_sweep_report(root)


def test_stale_outcome_column_is_noted(tmp_path):
    root = _fresh(tmp_path)
    with (root / "results.csv").open() as f:
        rows = list(csv.reader(f))
    col = rows[0].index("outcome")
    rows[1][col] = "grok" if rows[1][col] != "grok" else "memorise"
    with (root / "results.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    assert "for 1 members results.csv&#x27;s outcome column disagrees" in build_sweep_report(root).read_text()


def test_t_quantile_and_mean_ci_by_hand():
    assert_close(t_quantile(0.975, 1), T975_DF1, rtol=1e-9, atol=0)
    assert_close(t_quantile(0.975, 2), T975_DF2, rtol=1e-9, atol=0)
    assert_close(t_quantile(0.975, 4), T975_DF4, rtol=1e-7, atol=0)
    assert_close(t_quantile(0.975, 1e7), 1.959964, rtol=1e-6, atol=0)  # the normal quantile
    # [1..5]: mean 3, s = sqrt(2.5), se = sqrt(2.5 / 5)
    assert_close(mean_ci([1, 2, 3, 4, 5]), [3, 3 - T975_DF4 * math.sqrt(0.5), 3 + T975_DF4 * math.sqrt(0.5)],
                 rtol=1e-7, atol=0)
    # [2, 4]: mean 3, s = sqrt(2), se = 1
    assert_close(mean_ci([2, 4]), [3, 3 - T975_DF1, 3 + T975_DF1], rtol=1e-9, atol=0)
    mu, lo, hi = mean_ci([7.5])
    assert mu == 7.5 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in mean_ci([]))
    with pytest.raises(ValueError, match="finite"):
        mean_ci([1.0, math.inf])
    with pytest.raises(ValueError, match="level"):
        mean_ci([1.0, 2.0], level=95)


def test_seeds_only_sweep(tmp_path):
    """0 grid keys, 3 seeds that grok; analysis.json: key frequencies 3, 4, 5 (modular MLP style, or
    transformer style with frac_neurons_explained)."""
    analyses = [{"key_frequencies": [1, 3, 7], "neuron_clusters": {"0": 1, "3": 5, "7": 2, "1": 0}},
                {"key_frequencies": [1, 2, 3, 4], "frac_neurons_explained": 0.5},
                {"key_frequencies": [1, 2, 3, 4, 5]}]
    root, rows_of = make_sweep(tmp_path / "s", {}, [0, 1, 2], kind_of=lambda i, v, s: "grok",
                               analysis_of=lambda i: analyses[i])
    page = build_sweep_report(root).read_text()
    assert 'id="fig-sweep-grok"' in page and 'id="fig-sweep-grid-0"' in page
    stats = {m[0]: m[1:] for m in re.findall(r"<tr><th>([^<]+)</th><td>(\d+) / (\d+)</td><td>([^<]+)</td>"
                                             r"<td>\[([^,]+), ([^\]]+)\]</td><td>([^<]+)</td></tr>", page)}
    grok = np.array([next(r["step"] for r in rows if r["test_acc"] >= 0.99) for rows in rows_of.values()],
                    dtype=np.float64)
    assert len(set(grok.tolist())) == 3  # the seeds grok at different steps
    half = T975_DF2 * grok.std(ddof=1) / math.sqrt(3)
    want = {"grok step": (3, grok.mean(), grok.mean() - half, grok.mean() + half, np.median(grok)),
            "key frequencies": (3, 4, 4 - T975_DF2 / math.sqrt(3), 4 + T975_DF2 / math.sqrt(3), 4),
            # 7 of 8 neurons in key clusters (3 and 7), and 0.5: mean 0.6875, s = 0.375 / sqrt(2), se = 0.1875
            "neurons explained": (2, 0.6875, 0.6875 - T975_DF1 * 0.1875, 0.6875 + T975_DF1 * 0.1875, 0.6875)}
    assert set(stats) == set(want)
    for k, (n, *nums) in want.items():
        assert int(stats[k][0]) == n and int(stats[k][1]) == 3
        got = [float(v.replace(",", "")) for v in stats[k][2:]]
        assert_close(got, nums, rtol=1e-3, atol=0)  # the page prints 4 significant digits


def test_one_two_and_four_keys(tmp_path):
    one = make_sweep(tmp_path / "one", {"train.weight_decay": [0.1, 1.0, 3.0]}, [0, 1])[0]
    f = figure(build_sweep_report(one).read_text(), "fig-sweep-grid-0")
    assert len(f["data"]) == 1 and f["layout"]["yaxis"]["ticktext"] == ["0", "1"]  # y = seed
    assert f["layout"]["xaxis"]["ticktext"] == ["0.1", "1.0", "3.0"]
    two = make_sweep(tmp_path / "two", {"train.weight_decay": [0.1, 1.0], "task.n_train": [500, 900]}, [0])[0]
    f = figure(build_sweep_report(two).read_text(), "fig-sweep-grid-0")
    assert len(f["data"]) == 1 and f["layout"]["yaxis"]["ticktext"] == ["500", "900"]
    grid4 = {**GRID3, "train.lr": [1e-3, 3e-3, 1e-2]}
    four = make_sweep(tmp_path / "four", grid4, [0])[0]
    page = build_sweep_report(four, facet="lr", x="weight_decay").read_text()
    assert [f'id="fig-sweep-grid-{j}"' in page for j in range(4)] == [True, True, False, False]  # d_hidden
    assert len(figure(page, "fig-sweep-grid-0")["data"]) == 3  # one panel per lr
    assert "one figure per combination" in page
    assert len(counts_table(page)) == 4 * len(CLASSES)  # 3 lr values and "all"


def test_member_reports_and_links(tmp_path, monkeypatch):
    import groklab.report as R

    root = _fresh(tmp_path)
    page = build_sweep_report(root, tmp_path / "elsewhere" / "page.html").read_text()
    assert f"groklab report {root} --member-reports" in page
    assert all(m["r"] == f"../s/{m['d']}/report.html" for m in payload(page)["members"])
    made = []

    def fake(run_dir, output, fmt):
        made.append(Path(run_dir))
        (Path(run_dir) / "report.html").write_text("member")
        return Path(run_dir) / "report.html"

    monkeypatch.setattr(R, "write_report", fake)
    page = build_sweep_report(root, member_reports=True).read_text()
    spec = json.loads((root / "sweep.json").read_text())
    assert made == [root / m["dir"] for m in spec["members"]]
    assert "--member-reports" not in page and "(2 with a report)" in page
