"""``SWEEP/results.csv``: one row per member, computed from its ``metrics.jsonl``.

Columns, in order: ``run`` (the member directory relative to the sweep), every grid key by its
dotted name, ``seed``, ``steps`` (last logged step), ``final_train_loss``, ``final_test_loss``,
``min_train_loss``, ``min_test_loss``, ``max_test_train_ratio`` (max over logged steps with train
loss > 0), ``grok_step`` (first step with test accuracy >= 99%; empty if none), ``outcome``
(PAIR's class, ``analysis.outcome``; empty if the member has no metrics yet or cannot be
classified) and ``stopped`` (the stop rule that ended it early; empty if it ran its full budget).
Losses are in the units the run recorded; floats are written with ``repr`` (round-trips exactly).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ..analysis.outcome import MAX_RATIO, MIN_LOSS, classify_outcome
from ..runs import atomic_write, read_metrics
from .rules import grok_step
from .spec import RESULTS_FILE
from .worker import STOPPED_FILE

STAT_COLUMNS = ("steps", "final_train_loss", "final_test_loss", "min_train_loss", "min_test_loss",
                "max_test_train_ratio", "grok_step", "outcome", "stopped")


def member_stats(run_dir: Path, min_loss: float = MIN_LOSS, max_ratio: float = MAX_RATIO) -> dict[str, Any]:
    """The ``STAT_COLUMNS`` of one member (None where there is nothing to report)."""
    path = run_dir / "metrics.jsonl"
    rows = read_metrics(path) if path.is_file() else []
    out: dict[str, Any] = dict.fromkeys(STAT_COLUMNS)
    if not rows:
        return out
    last = rows[-1]
    out.update(steps=last["step"], final_train_loss=last.get("train_loss"),
               final_test_loss=last.get("test_loss"), grok_step=grok_step(rows))
    try:
        o = classify_outcome(rows, min_loss, max_ratio)
        out.update(min_train_loss=o.min_train_loss, min_test_loss=o.min_test_loss,
                   max_test_train_ratio=None if math.isnan(o.max_ratio) else o.max_ratio,
                   outcome=o.outcome)
    except ValueError:  # no test loss, or no usable ratio: leave the class empty
        trains = [r["train_loss"] for r in rows if r.get("train_loss") is not None]
        out.update(min_train_loss=min(trains) if trains else None)
    stopped = run_dir / STOPPED_FILE
    if stopped.is_file():
        out["stopped"] = json.loads(stopped.read_text()).get("reason")
    return out


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v).lower() if isinstance(v, bool) else str(v)


def results_rows(sweep_dir: Path, sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per member of ``sweep`` (the ``sweep.json`` object), in member order."""
    keys = list(sweep["grid"])
    rows = []
    for m in sweep["members"]:
        row: dict[str, Any] = {"run": m["dir"], **{k: m["values"][k] for k in keys}, "seed": m["seed"]}
        row.update(member_stats(Path(sweep_dir) / m["dir"], sweep.get("min_loss", MIN_LOSS),
                                sweep.get("max_ratio", MAX_RATIO)))
        rows.append(row)
    return rows


def write_results(sweep_dir: Path, sweep: dict[str, Any]) -> Path:
    """Write ``SWEEP/results.csv`` atomically; returns its path."""
    rows = results_rows(sweep_dir, sweep)
    header = ["run", *sweep["grid"], "seed", *STAT_COLUMNS]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([_cell(r[h]) for h in header])
    path = Path(sweep_dir) / RESULTS_FILE
    atomic_write(path, buf.getvalue())
    return path


def read_results(sweep_dir: Path) -> list[dict[str, str]]:
    """``results.csv`` as a list of dicts of strings (csv.DictReader)."""
    with open(Path(sweep_dir) / RESULTS_FILE, newline="") as f:
        return list(csv.DictReader(f))
