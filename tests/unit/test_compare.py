"""``groklab compare``: the order-statistic CI, censored medians, the summary of hand-written run
directories, the switch parsing and the CLI end to end on a tiny sparse-parity task."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from groklab import compare
from groklab.cli import main
from groklab.compare import collect, parse_switch_arg, seed_row, select_switches
from groklab.compare_stats import coverage, median, median_ci, median_ci_ranks
from groklab.compare_table import render_csv, render_md
from groklab.config import ConfigError
from groklab.presets import get_preset
from groklab.runs import read_metrics, write_metrics


def _cov(n: int, j: int, k: int) -> float:
    """P(j <= B < k), B ~ Bin(n, 1/2), written out from the binomial pmf."""
    return sum(math.comb(n, i) for i in range(j, k)) / 2**n


# --- the CI ----------------------------------------------------------------------------------------
def test_ci_ranks_against_hand_binomials():
    # n = 5: P(1 <= B < 5) = 1 - (C(5,0) + C(5,5)) / 32 = 30/32; nothing reaches 95%
    assert _cov(5, 1, 5) == 1 - 2 / 32 == 0.9375
    assert median_ci_ranks(5) == (1, 5, 0.9375)
    # n = 6: 1 - 2/64, and the next narrower [x1, x5] is 1 - (1 + 6 + 1)/64 = 0.875 < 0.95
    assert median_ci_ranks(6) == (1, 6, 1 - 2 / 64) and _cov(6, 1, 5) == 0.875
    # n = 10: [x2, x9] = 1 - (1 + 10 + 10 + 1)/1024 = 0.978515625; both width-6 intervals miss 95%
    j, k, c = median_ci_ranks(10)
    assert (j, k) == (2, 9)
    torch.testing.assert_close(c, 1 - 22 / 1024, rtol=0, atol=1e-15)
    assert _cov(10, 2, 8) == _cov(10, 3, 9) == (45 + 120 + 210 + 252 + 210 + 120) / 1024 < 0.95
    assert coverage(10, 2, 9) == c
    with pytest.raises(ValueError, match="ranks"):
        coverage(5, 3, 2)
    with pytest.raises(ValueError, match="at least one"):
        median_ci_ranks(0)


def test_ci_ranks_are_the_shortest_by_brute_force():
    """Oracle: every (j, k) pair; the shortest reaching 95%, the most central among equals."""
    for n in range(1, 41):
        pairs = [(k - j, -_cov(n, j, k), j, k) for j in range(1, n + 1) for k in range(j, n + 1)]
        ok = sorted(p for p in pairs if -p[1] >= 0.95)
        j, k, c = median_ci_ranks(n)
        if ok:
            _, negc, j0, k0 = ok[0]
            assert (j, k) == (j0, k0) and c == pytest.approx(-negc, rel=1e-12, abs=0), n
            # Bin(n, 1/2) is symmetric: the interval is central, or ties with its mirror image
            # [x_(n+1-k), x_(n+1-j)] and is the lower of the two (n = 8: [x1, x7], not [x2, x8])
            assert j + k == n + 1 or (j + k == n and _cov(n, j + 1, k + 1) == c), n
        else:
            assert (j, k) == (1, n) and c == _cov(n, 1, n) < 0.95, n
    assert not any(_cov(5, j, k) >= 0.95 for j in range(1, 6) for k in range(j, 6))
    assert median_ci_ranks(20)[:2] == (6, 15)  # the textbook n = 20 interval
    assert median_ci_ranks(8) == (1, 7, 1 - (1 + 8 + 1) / 256)


def test_median_with_censored_values():
    inf = math.inf
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert median([1.0, inf, 2.0]) == 2.0  # 2 of 3 got there: finite
    assert median([1.0, 2.0, inf, inf]) == inf  # exactly half: not reported
    m = median_ci([300, 100, None, 200, 500])
    assert (m.median, m.lo, m.hi, m.n, m.n_finite, m.coverage) == (300.0, 100.0, inf, 5, 4, 0.9375)
    m = median_ci([10, None, None, 20, None])
    assert m.median is None and (m.lo, m.hi, m.n_finite) == (10.0, inf, 2)
    m = median_ci([1, 2, 3, None])
    assert m.median == 2.5 and m.hi == inf
    with pytest.raises(ValueError, match="NaN"):
        median([1.0, math.nan])


# --- per-seed rows and the summary from hand-written run directories ------------------------------
def _rows(grok: int | None, seed: int, steps: int = 600, every: int = 50) -> list[dict]:
    """test_acc 0.5, then 0.989 one evaluation before ``grok`` and exactly 0.99 at it (None: never);
    elapsed_s = step/100 + seed; sum_sq_weights = (seed + 2)^2 in the last row."""
    last = grok if grok is not None else steps  # the grokked stop rule ends a run at its grok step
    rows = []
    for s in range(0, last + 1, every):
        acc = 0.99 if s == grok else 0.989 if grok is not None and s == grok - every else 0.5
        rows.append({"step": s, "train_loss": 1.0, "test_loss": 1.0, "train_acc": 1.0, "test_acc": acc,
                     "sum_sq_weights": 100.0, "elapsed_s": s / 100 + seed})
    rows[-1]["sum_sq_weights"] = float((seed + 2) ** 2)
    return rows


def _synthetic(root: Path, groks: dict[str, list[int | None]]) -> Path:
    for name, steps in groks.items():
        members = []
        for seed, g in enumerate(steps):
            d = f"runs/seed-{seed}"
            write_metrics(root / name / d / "metrics.jsonl", _rows(g, seed))
            members.append({"dir": d, "values": {}, "seed": seed, "group": seed})
        (root / name / "sweep.json").write_text(json.dumps({
            "format": "groklab-sweep", "version": 1, "kind": "grid", "preset": "pair-parity",
            "overrides": {}, "grid": {}, "seeds": list(range(len(steps))), "stop": "grokked",
            "group_size": 1, "members": members, "groups": [[i] for i in range(len(steps))]}))
    return root


def test_seed_row_by_hand(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", _rows(250, seed=3))
    assert seed_row(tmp_path) == {"grok_step": 250, "grok_wall_s": 2.5 + 3, "final_weight_norm": 5.0,
                                  "steps": 250}
    write_metrics(tmp_path / "metrics.jsonl", _rows(None, seed=0))
    assert seed_row(tmp_path) == {"grok_step": None, "grok_wall_s": None, "final_weight_norm": 2.0,
                                  "steps": 600}


def test_summary_of_synthetic_switches(tmp_path):
    groks = {"baseline": [300, 100, None, 200, 500], "fast": [50, 100, None, None, 150],
             "slow": [None, 400, None, 550, None]}
    out = _synthetic(tmp_path, groks)
    res = collect(out, list(groks))
    b, f, s = (res[n]["summary"] for n in groks)
    assert [r["grok_step"] for r in res["baseline"]["runs"]] == groks["baseline"]
    assert res["fast"]["runs"][1]["run_dir"] == "fast/runs/seed-1"
    # baseline: sorted 100 200 300 500 inf -> median 300, CI [x1, x5] = [100, censored]
    assert (b["n"], b["n_grokked"]) == (5, 4)
    assert b["grok_step"] == {"median": 300.0, "ci": [100.0, None], "ranks": [1, 5], "coverage": 0.9375}
    # wall = step/100 + seed: 3.0+0, 1.0+1, 2.0+3, 5.0+4 -> 2, 3, 5, 9, inf: median 5
    assert b["grok_wall_s"]["median"] == pytest.approx(5.0, rel=1e-12, abs=0)
    assert b["grok_wall_s"]["ci"] == [pytest.approx(2.0, rel=1e-12, abs=0), None]
    # fast: 50 100 150 inf inf -> median 150; wall 0.5, 2.0, 5.5 -> median 5.5
    assert f["grok_step"]["median"] == 150.0 and f["n_grokked"] == 3
    assert f["speedup_steps"] == pytest.approx(300 / 150, rel=1e-12, abs=0)
    assert f["speedup_wall"] == pytest.approx(5.0 / 5.5, rel=1e-12, abs=0)
    assert b["speedup_steps"] == 1.0 and b["speedup_wall"] == 1.0
    # slow: 2 of 5 -> no median, no speed-up, but the CI's lower end is still known
    assert s["grok_step"]["median"] is None and s["speedup_steps"] is None
    assert s["grok_step"]["ci"] == [400.0, None]
    # weight norms sqrt((seed+2)^2) = 2..6: median 4, for every switch
    assert b["final_weight_norm_median"] == f["final_weight_norm_median"] == 4.0
    d = {"preset": "pair-parity", "budget": 600, "seeds": [0, 1, 2, 3, 4], "overrides": {}, "workers": 1,
         "threads": 2, "level": 0.95, "baseline": "baseline", "command": "groklab compare ...",
         "ci": {"n": 5, "ranks": [1, 5], "coverage": 0.9375},
         "switches": {n: {**res[n], "overrides": {"train.lr": 0.01} if n != "baseline" else {}}
                      for n in groks}}
    md = render_md(d)
    assert "| fast | `train.lr=0.01` | 3/5 | 150 [50, ∞] | 5.5 [0.5, ∞] | 2.00× | 0.91× | 4.00 |" in md
    assert "| slow | `train.lr=0.01` | 2/5 | — [400, ∞] |" in md
    assert "seeds 0-4 (n = 5)" in md and "coverage 93.75% (n = 5 is too small for 95%)" in md
    rows = list(csv.DictReader(render_csv(d).splitlines()))
    assert [r["switch"] for r in rows] == list(groks)
    assert (rows[0]["grok_step_median"], rows[0]["grok_step_ci_hi"], rows[2]["grok_step_median"]) == \
        ("300.0", "inf", "")


# --- switches ------------------------------------------------------------------------------------
def test_registry_covers_the_issue_switches_and_validates_on_both_presets():
    from groklab.config import apply_overrides
    from groklab.presets import get_preset

    assert list(compare.SWITCHES) == ["baseline", "grokfast_ema", "grokfast_ma", "stablemax", "perp_adamw"]
    for preset in ("nanda2023", "pair2023"):
        for name, o in compare.SWITCHES.items():
            cfg = apply_overrides(get_preset(preset), o, from_strings=False).resolved()
            assert (cfg.train.grad_filter, cfg.train.loss, cfg.train.optimizer) == {
                "baseline": ("none", "cross_entropy", "adamw"),
                "grokfast_ema": ("ema", "cross_entropy", "adamw"),
                "grokfast_ma": ("ma", "cross_entropy", "adamw"), "stablemax": ("none", "stablemax", "adamw"),
                "perp_adamw": ("none", "cross_entropy", "perp_adamw")}[name], (preset, name)
    assert compare.SWITCHES["perp_adamw"]["train.weight_decay"] == 0.0  # as Prieto et al. run it


def test_parse_and_select_switches():
    cfg = get_preset("pair-parity")
    assert parse_switch_arg("wd3:train.weight_decay=3, train.lr=3e-3", cfg) == \
        ("wd3", {"train.weight_decay": 3.0, "train.lr": 0.003})
    for bad in ("wd3", "wd3:", ":train.lr=1", "w d:train.lr=1", "wd:train.lr", "wd:train.lr=",
                "wd:train.lr=1,train.lr=2", "wd:train.nonsense=1", "wd:train.lr=fast"):
        with pytest.raises(ConfigError):
            parse_switch_arg(bad, cfg)
    assert list(select_switches(None)) == list(compare.SWITCHES)
    sel = select_switches(["stablemax", "baseline"], {"wd3": {"train.weight_decay": 3.0},
                                                      "baseline": {"train.lr": 0.1}})
    assert sel == {"stablemax": {"train.loss": "stablemax"}, "baseline": {"train.lr": 0.1},
                   "wd3": {"train.weight_decay": 3.0}}
    with pytest.raises(ConfigError, match="distinct"):
        select_switches(["baseline", "baseline"])


# --- the CLI -------------------------------------------------------------------------------------
TINY = [  # sparse parity that reaches 99% test accuracy in ~50-80 steps on one thread
    "--preset", "pair-parity", "--seeds", "0-2", "--budget", "150", "--threads", "1", "--no-progress",
    "--train.checkpoint_every", "30", "--train.regularization", "l2", "--train.lr", "0.01",
    "--task.n_bits", "8", "--task.k", "2", "--task.n_train", "200", "--task.n_test", "200",
    "--train.weight_decay", "0.1", "--model.d_hidden", "16",
]


def test_cli_bad_input_exits_2(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cmp"
    assert main(["compare", *TINY, "--switches", "baseline,warp", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown switch(es) warp" in err and "baseline, grokfast_ema, grokfast_ma, stablemax" in err
    for bad in ("wd1", "wd1:train.weight_decay", "wd1:train.weight_decay=1;train.lr=2"):
        assert main(["compare", *TINY, "--switch", bad, "--out", str(out)]) == 2
        assert "--switch" in capsys.readouterr().err
    # a registry entry is data checked by the config: an unknown key lists the valid keys
    monkeypatch.setitem(compare.SWITCHES, "bogus", {"train.nonsense": 1})
    assert main(["compare", *TINY, "--switches", "baseline,bogus", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "switch bogus" in err and "unknown config key 'train.nonsense'" in err and "train.lr" in err
    assert main(["compare", *TINY, "--switches", "baseline", "--train.steps", "9", "--out", str(out)]) == 2
    assert "--budget" in capsys.readouterr().err
    assert not out.exists()  # nothing written for bad input
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["compare", *TINY, "--switches", "baseline", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_cli_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", *TINY, "--switches", "baseline", "--switch", "wd1:train.weight_decay=1",
            "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    md = (out / "compare.md").read_text()
    assert md in printed and "| baseline | — |" in md and "| wd1 | `train.weight_decay=1.0` |" in md
    d = json.loads((out / "compare.json").read_text())
    assert list(d["switches"]) == ["baseline", "wd1"] and d["budget"] == 150 and d["threads"] == 1
    assert d["ci"] == {"n": 3, "ranks": [1, 3], "coverage": _cov(3, 1, 3)}
    with open(out / "compare.csv", newline="") as f:
        assert [r["switch"] for r in csv.DictReader(f)] == ["baseline", "wd1"]
    for name, wd in (("baseline", 0.1), ("wd1", 1.0)):
        sweep = json.loads((out / name / "sweep.json").read_text())
        assert sweep["stop"] == "grokked" and sweep["group_size"] == 1
        assert sweep["groups"] == [[0], [1], [2]]  # every seed trained alone
        assert sweep["overrides"]["train.steps"] == 150 and sweep["overrides"]["train.weight_decay"] == wd
        with open(out / name / "results.csv", newline="") as f:
            results = {int(r["seed"]): r for r in csv.DictReader(f)}
        runs = d["switches"][name]["runs"]
        assert sum(r["grok_step"] is not None for r in runs) >= 2, "the tiny task no longer groks"
        for r in runs:  # oracle: the sweep's own results.csv and the raw metrics rows
            rows = read_metrics(out / r["run_dir"] / "metrics.jsonl")
            assert r["grok_step"] == (int(results[r["seed"]]["grok_step"]) if results[r["seed"]]["grok_step"]
                                      else None)
            if r["grok_step"] is not None:
                assert r["steps"] == r["grok_step"] == rows[-1]["step"] < 150  # stopped at its grok step
                assert r["grok_wall_s"] == rows[-1]["elapsed_s"] > 0
            torch.testing.assert_close(r["final_weight_norm"], math.sqrt(rows[-1]["sum_sq_weights"]),
                                       rtol=1e-12, atol=0)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/runs/*/metrics.jsonl")}
    assert main(args) == 0  # resume: everything is finished, nothing trains
    assert capsys.readouterr().out.count("0 groups trained") == 2
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/runs/*/metrics.jsonl")} == mtimes
    assert json.loads((out / "compare.json").read_text()) == d
    assert main([*args[:-2], "--budget", "160", "--out", str(out)]) == 2  # a different comparison
    assert "holds a different sweep" in capsys.readouterr().err
