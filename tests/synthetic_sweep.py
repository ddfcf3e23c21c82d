"""A synthetic sweep directory, as ``groklab sweep`` writes it (docs/report.md "Sweep report"), with
hand-made loss curves: one shape per PAIR class, plus members without a test loss.

``results.csv``'s statistics come from ``classify_outcome`` of each member's rows, so the report's
class of a member can be checked against ``classify_outcome`` directly (the oracle).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np

from groklab.analysis.outcome import classify_outcome
from groklab.config import apply_overrides
from groklab.presets import get_preset
from groklab.runs import config_json

KINDS = ("cant_fit", "memorise", "together", "grok")
COLUMNS = ("steps", "final_train_loss", "final_test_loss", "min_train_loss", "min_test_loss",
           "max_test_train_ratio", "grok_step", "outcome", "stopped")


def curve_rows(kind: str, seed: int, steps: int = 500, every: int = 10) -> list[dict]:
    """Metrics rows whose losses give ``kind`` under PAIR's defaults (1e-5, 5e4); ``"none"``: no test
    loss is ever logged. The seed scales the losses a little (1 + 0.05 seed) so members differ.

    cant_fit: train falls to ~2e-3. memorise: train to ~7e-8, test to ~7e-3. together: test = 2 x
    train, both to ~1e-7 (test logged every other row). grok: train to ~7e-9 by 1/4 of training,
    test flat at 0.7 until (0.5 + 0.05 seed) of training, then to ~7e-7 (max ratio ~1e8).
    """
    s = np.arange(0, steps + 1, every)
    t = s / steps
    k = 1 + 0.05 * seed
    if kind == "cant_fit":
        train, test = 0.7 * 10 ** (-2.5 * t), 0.7 * 10 ** (-0.3 * t)
    elif kind == "memorise":
        train, test = 0.7 * 10 ** (-7 * t), 0.7 * 10 ** (-2 * t)
    elif kind == "together":
        train = 0.7 * 10 ** (-6.8 * t)
        test = 2 * train
    else:  # grok, and "none" (its test loss is dropped below)
        train = 0.7 * 10 ** (-8 * np.minimum(1, 4 * t))
        t0 = min(0.9, 0.5 + 0.05 * seed)  # the test loss drops later for a later seed
        test = np.where(t < t0, 0.7, 0.7 * 10 ** (-6 * (t - t0) / (1 - t0)))
    rows = []
    for i, (st, tr, te) in enumerate(zip(s.tolist(), (k * train).tolist(), (k * test).tolist(), strict=True)):
        logged = kind != "none" and not (kind == "together" and i % 2)
        rows.append({"step": st, "train_loss": tr, "test_loss": te if logged else None,
                     "train_acc": 1.0 if tr < 0.05 else 0.6, "test_acc": (1.0 if te < 0.01 else 0.5) if logged
                     else None, "sum_sq_weights": 50.0 - 0.01 * st})
    return rows


def member_dir(values: dict, seed: int) -> str:
    parts = [f"{k.split('.')[-1]}-{v}" for k, v in values.items()]
    return "runs/" + "_".join([*parts, f"seed-{seed}"])


def make_sweep(root: Path, grid: dict[str, list], seeds: list[int], kind_of=None, steps_of=None,
               analysis_of=None, spec_extra: dict | None = None) -> tuple[Path, dict[str, list[dict]]]:
    """Write a sweep directory at ``root``: sweep.json, results.csv and one run directory a member
    (config.json, metrics.jsonl, optionally analysis.json).

    Args:
        kind_of: ``(member index, values, seed) -> kind`` (default: the four kinds in turn, the last
            member "none").
        steps_of: ``(member index) -> training steps`` (default 500: 51 rows).
        analysis_of: ``(member index) -> analysis.json dict or None``.

    Returns:
        The directory and each member's dir -> its metrics rows.
    """
    keys = list(grid)
    combos = list(itertools.product(*grid.values()))
    n = len(combos) * len(seeds)
    kind_of = kind_of or (lambda i, v, s: "none" if i == n - 1 else KINDS[i % 4])
    cfg0 = get_preset("pair-parity")
    members, rows_of, table = [], {}, []
    for g, combo in enumerate(combos):
        values = dict(zip(keys, combo, strict=True))
        for seed in seeds:
            i = len(members)
            d = member_dir(values, seed)
            rows = curve_rows(kind_of(i, values, seed), seed, steps=steps_of(i) if steps_of else 500)
            run = root / d
            run.mkdir(parents=True)
            cfg = apply_overrides(cfg0, {**values, "train.seed": seed}, from_strings=False)
            (run / "config.json").write_text(config_json(cfg))
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            if analysis_of and (a := analysis_of(i)) is not None:
                (run / "analysis.json").write_text(json.dumps(a))
            members.append({"dir": d, "values": values, "seed": seed, "group": g})
            rows_of[d] = rows
            table.append([d, *(str(v) for v in combo), str(seed), *_stats(rows)])
    spec = {"format": "groklab-sweep", "version": 1, "kind": "grid", "preset": "pair-parity",
            "overrides": {"train.steps": 500}, "grid": grid, "seeds": seeds, "vary_data": False,
            "stop": "never", "min_loss": 1e-5, "max_ratio": 5e4, "members": members,
            "groups": [list(range(j * len(seeds), (j + 1) * len(seeds))) for j in range(len(combos))],
            **(spec_extra or {})}
    (root / "sweep.json").write_text(json.dumps(spec, indent=1))
    with (root / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", *keys, "seed", *COLUMNS])
        w.writerows(table)
    return root, rows_of


def _stats(rows: list[dict]) -> list[str]:
    """The results.csv columns after ``seed`` for one member (floats as ``repr``; empty if none)."""
    r = lambda x: "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(x)  # noqa: E731
    last = rows[-1]
    grok = next((row["step"] for row in rows if (row["test_acc"] or 0) >= 0.99), None)
    tests = [row["test_loss"] for row in rows if row["test_loss"] is not None]
    try:
        o = classify_outcome(rows)
        stats, outcome = [o.min_train_loss, o.min_test_loss, o.max_ratio], o.outcome
    except ValueError:
        stats, outcome = [min(row["train_loss"] for row in rows), min(tests) if tests else None, None], ""
    return [str(last["step"]), r(last["train_loss"]), r(last["test_loss"]), *(r(x) for x in stats),
            "" if grok is None else str(grok), outcome, ""]
