"""The data of the sweep report (``report/sweep.py``): a sweep directory read and checked, the small
multiples' axes, each member's downsampled loss curves, and the seed statistics (``mean_ci``).

Reads the directory ``groklab sweep`` writes (``docs/report.md`` "Sweep report"): ``SWEEP/sweep.json``
(the grid, the seeds and the members), ``SWEEP/results.csv`` (one row of statistics per member), and
each member's ``metrics.jsonl`` and, where present, ``analysis.json``. The outcome is PAIR's four-way
rule (``analysis/outcome.py``; ``pair.md`` §1.3) applied to each member's three statistics
(min train loss, min test loss, max test/train ratio) from ``results.csv``.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.outcome import MAX_RATIO, MIN_LOSS, OUTCOMES
from ..analysis.outcome import _decide as _outcome_rule  # the rule itself: the page cannot drift from it
from ..config import ConfigError
from ..runs import RunError, read_metrics

UNCLASSIFIED = "none"  # no test loss, or rule 3 reached with no usable ratio (classify_outcome raises)
CLASSES = (*OUTCOMES, UNCLASSIFIED)
SEED = "seed"  # the pseudo-key that puts the seeds on an axis
MAX_POINTS = 200  # points kept of each member's curves
CSV_STATS = ("min_train_loss", "min_test_loss", "max_test_train_ratio")
CSV_REQUIRED = ("run", "seed", *CSV_STATS, "grok_step")


@dataclass
class Member:
    """One member of the sweep, as ``sweep.json`` and ``results.csv`` describe it.

    Attributes:
        index: position in ``sweep.json``'s ``members`` (the page's member id).
        dir: the run directory relative to the sweep (``runs/...``).
        values: grid key -> value (JSON numbers, as in ``sweep.json``).
        seed, group: from ``sweep.json`` (group: the batched ensemble it was trained in).
        stats: (min train loss, min test loss, max test/train ratio) from ``results.csv``, each
            None if empty or NaN there (a member without a row has all three None).
        grok_step, steps, stopped, csv_outcome: the other ``results.csv`` columns (None if empty).
        curve: (steps [n] int64, train loss [n], test loss [n] float64, NaN where not logged),
            at most ``MAX_POINTS`` rows of ``metrics.jsonl``; None if it has none.
        analysis: numbers from ``analysis.json`` (``analysis_stats``), {} without one.
    """

    index: int
    dir: str
    values: dict[str, Any]
    seed: int
    group: int | None
    stats: tuple[float | None, float | None, float | None] = (None, None, None)
    grok_step: int | None = None
    steps: int | None = None
    stopped: str | None = None
    csv_outcome: str | None = None
    curve: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    analysis: dict[str, float] = field(default_factory=dict)


@dataclass
class SweepData:
    """A sweep directory, read. ``spec`` is ``sweep.json``; ``notes`` are problems worth a line on
    the page (unreadable members, rows missing, results.csv disagreeing with the rule)."""

    path: Path
    spec: dict
    keys: list[str]
    levels: dict[str, list]  # axis name (grid keys and SEED) -> its values in grid order
    members: list[Member]
    min_loss: float
    max_ratio: float
    notes: list[str]


def outcome_of(stats: tuple[float | None, float | None, float | None], min_loss: float = MIN_LOSS,
               max_ratio: float = MAX_RATIO) -> str:
    """PAIR's class of a member from its three statistics, or ``UNCLASSIFIED``.

    The rule of ``analysis.outcome.classify_outcome`` (ties go to the later rule: a min loss equal
    to ``min_loss`` passes rules 1 and 2, a ratio equal to ``max_ratio`` is ``"grok"``); a member
    that ``classify_outcome`` would reject (no train or test loss; rule 3 with no ratio) is
    ``UNCLASSIFIED``. The page's script implements the same rule (``sweep_figures.SWEEP_JS``).
    """
    min_train, min_test, ratio = stats
    if min_train is None or min_test is None:
        return UNCLASSIFIED
    try:
        return _outcome_rule(min_train, min_test, math.nan if ratio is None else ratio, min_loss, max_ratio,
                       "member")
    except ValueError:
        return UNCLASSIFIED


def _t_cdf(t: float, df: float) -> float:
    """Student's t CDF via the regularised incomplete beta: P(T <= t) = 1 - I_x(df/2, 1/2) / 2 with
    x = df / (df + t^2), for t >= 0 (Abramowitz & Stegun 26.7.1; continued fraction, NR §6.4)."""
    a, b, x = df / 2, 0.5, df / (df + t * t)
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        ib = front * _betacf(a, b, x) / a
    else:
        ib = 1 - front * _betacf(b, a, 1 - x) / b
    return 1 - ib / 2


def _betacf(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile (0.5 < q < 1) of Student's t with ``df`` degrees of freedom, by bisection
    of ``_t_cdf`` to 1e-12 (e.g. ``t_quantile(0.975, 4)`` = 2.7764...)."""
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < q:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < q else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval of the mean: ``(mean, lo, hi)``.

    ``mean ± t_{(1+level)/2, n-1} · s / √n`` with ``s`` the sample standard deviation (n − 1).

    Args:
        values: n finite numbers (e.g. the grok steps of the seeds that grokked, in steps).
        level: the confidence level, 0 < level < 1.

    Returns:
        ``(mean, lo, hi)`` in the units of ``values``; ``lo = hi = NaN`` when n = 1, all three NaN
        when n = 0.

    Raises:
        ValueError: a value is not finite, or ``level`` is outside (0, 1).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r} (0.95 for a 95% interval)")
    v = np.asarray(list(values), dtype=np.float64)
    if not np.isfinite(v).all():
        raise ValueError("mean_ci: every value must be finite; drop the runs without one (e.g. "
                         "seeds that never grokked) first")
    if v.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if v.size == 1:
        return mean, math.nan, math.nan
    half = t_quantile((1 + level) / 2, v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return mean, mean - half, mean + half


def analysis_stats(a: dict) -> dict[str, float]:
    """The numbers of a member's ``analysis.json`` that the seeds section summarises.

    ``key frequencies``: ``len(key_frequencies)`` (modular runs, both families). ``neurons
    explained``: ``frac_neurons_explained`` (transformer, FVE ≥ 0.85; docs/analysis.md), or for the
    MLP family the share of neurons in a key frequency's cluster (``neuron_clusters``;
    docs/analysis_mlp.md). ``prune step``: sparse parity's ``prune_step``. Absent keys are left out.
    """
    out: dict[str, float] = {}
    key = a.get("key_frequencies")
    if isinstance(key, list):
        out["key frequencies"] = float(len(key))
    if isinstance(a.get("frac_neurons_explained"), int | float):
        out["neurons explained"] = float(a["frac_neurons_explained"])
    elif isinstance(key, list) and isinstance(a.get("neuron_clusters"), dict):
        counts = {str(k): int(n) for k, n in a["neuron_clusters"].items()}
        if total := sum(counts.values()):
            out["neurons explained"] = sum(counts.get(str(k), 0) for k in key) / total
    if isinstance(a.get("prune_step"), int | float):
        out["prune step"] = float(a["prune_step"])
    return out


def downsample(rows: list[dict], n: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At most ``n`` of the metrics ``rows``, evenly spaced in row order, always the first, the last
    and the minima of both losses: (steps [m] int64, train loss [m], test loss [m], NaN = not logged)."""
    def col(key: str) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=np.float64)

    steps = np.array([int(r["step"]) for r in rows], dtype=np.int64)
    train, test = col("train_loss"), col("test_loss")
    if len(rows) > n:
        keep = set(np.rint(np.linspace(0, len(rows) - 1, n - 2)).astype(int).tolist())
        for c in (train, test):
            if np.isfinite(c).any():
                keep.add(int(np.nanargmin(c)))
        idx = np.array(sorted(keep))
        steps, train, test = steps[idx], train[idx], test[idx]
    return steps, train, test


def read_rows(path: Path) -> list[dict]:
    """``runs.read_metrics`` of a ``metrics.jsonl``, parsed as one JSON array when every line is
    valid (twice as fast on a sweep's ~500k lines); any other file goes to ``read_metrics``."""
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        rows = json.loads("[" + ",".join(lines) + "]")
    except FileNotFoundError:
        return []
    except (json.JSONDecodeError, UnicodeDecodeError):
        return read_metrics(path)  # a truncated last line is skipped there; other damage is a RunError
    return rows


def _fail(path: Path, what: str) -> RunError:
    return RunError(f"{path}: {what}. Re-run `groklab sweep` to rewrite it, or point `groklab report` "
                    "at a directory that `groklab sweep` wrote")


def _read_spec(sweep_dir: Path) -> dict:
    path = sweep_dir / "sweep.json"
    if not path.is_file():
        raise RunError(f"{path}: missing; {sweep_dir} is not a sweep directory (make one with "
                       "`groklab sweep`)")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(path, f"not valid JSON ({e})") from None
    if not isinstance(spec, dict) or spec.get("format") != "groklab-sweep":
        raise _fail(path, 'not a groklab sweep file (it needs "format": "groklab-sweep")')
    if spec.get("version") != 1:
        raise RunError(f"{path}: version {spec.get('version')!r}; this groklab reads version 1 (upgrade "
                       "groklab to read newer sweeps)")
    grid, members = spec.get("grid", {}), spec.get("members")
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise _fail(path, '"grid" must map each key to a non-empty list of values')
    if not isinstance(members, list) or not members:
        raise _fail(path, '"members" must be a non-empty list')
    for i, m in enumerate(members):
        if not (isinstance(m, dict) and isinstance(m.get("dir"), str) and isinstance(m.get("values"), dict)
                and isinstance(m.get("seed"), int)):
            raise _fail(path, f'member {i} needs "dir" (str), "values" (object) and "seed" (int)')
        for k in grid:
            if m["values"].get(k) not in grid[k]:
                raise _fail(path, f"member {i} ({m['dir']}) has {k}={m['values'].get(k)!r}, not one of the "
                                  f"grid's {grid[k]}")
    return spec


def _float(s: str, path: Path, line: int, col: str) -> float | None:
    if s == "":
        return None
    try:
        v = float(s)
    except ValueError:
        raise _fail(path, f"line {line}, column {col}: {s!r} is not a number") from None
    return None if math.isnan(v) else v


def _read_results(sweep_dir: Path, keys: list[str]) -> dict[str, tuple[int, dict[str, str]]]:
    path = sweep_dir / "results.csv"
    if not path.is_file():
        raise RunError(f"{path}: missing; the sweep has not finished writing its results (run or "
                       "resume `groklab sweep` until it writes results.csv)")
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = [(i + 2, r) for i, r in enumerate(reader)]
    except (csv.Error, UnicodeDecodeError) as e:
        raise _fail(path, f"not a readable CSV file ({e})") from None
    missing = [c for c in (*CSV_REQUIRED, *keys) if c not in header]
    if missing:
        raise _fail(path, f"columns {missing} are missing (header: {header})")
    if any(None in r.values() or None in r for _, r in rows):
        raise _fail(path, "a row has a different number of fields than the header")
    return {r["run"]: (line, r) for line, r in rows}


def _axis_name(name: str, valid: list[str], what: str) -> str:
    if name in valid:
        return name
    short = [k for k in valid if k.split(".")[-1] == name]
    if len(short) == 1:
        return short[0]
    raise ConfigError(f"--{what} {name!r} is not a key of this sweep; choose one of {', '.join(valid)} "
                      "(a grid key by its dotted name or the part after the dot, or 'seed')")


@dataclass(frozen=True)
class Axes:
    """Which names go where: ``facet`` (one panel per value; None: one panel), ``x``, ``y`` (None:
    one row) and ``extra``, the grid keys shown as one figure per combination of their values."""

    facet: str | None
    x: str
    y: str | None
    extra: tuple[str, ...]


def resolve_axes(keys: list[str], facet: str | None = None, x: str | None = None,
                 y: str | None = None) -> Axes:
    """The small multiples' axes from the grid ``keys`` (in ``sweep.json`` order) and the reader's
    choices (None: the default).

    Defaults: 3+ keys: facet, x, y = the first three keys not chosen; 2 keys: x, y = the keys, one
    panel; 1 key: x = the key, y = ``"seed"``; 0 keys: x = ``"seed"``, one row. Keys left over go to
    ``extra``. A name is a grid key (dotted, or the part after the last dot when that is unique)
    or ``"seed"``.

    Raises:
        ConfigError: a name is not a key of the sweep, or two of facet, x, y are the same.
    """
    valid = [*keys, SEED]
    chosen = {w: None if n is None else _axis_name(n, valid, w) for w, n in
              (("facet", facet), ("x", x), ("y", y))}
    named = [n for n in chosen.values() if n is not None]
    if len(set(named)) < len(named):
        raise ConfigError(f"--facet, --x and --y must be different keys, got {chosen}")
    free = [k for k in keys if k not in named]
    for slot in (("facet", "x", "y") if len(keys) >= 3 else ("x", "y")):
        if chosen[slot] is None and free:
            chosen[slot] = free.pop(0)
    if chosen["x"] is None:
        chosen["x"] = SEED if SEED not in named else (chosen["y"] or SEED)
        if chosen["x"] == chosen["y"]:
            chosen["y"] = None
    elif chosen["y"] is None and SEED not in chosen.values():
        chosen["y"] = SEED
    return Axes(chosen["facet"], chosen["x"], chosen["y"], tuple(free))


def load_sweep(sweep_dir: Path) -> SweepData:
    """Read and check a sweep directory, and every member's curves and analysis.

    Raises:
        RunError: ``sweep.json`` or ``results.csv`` is missing, corrupt, or lacks a column or a key
            the contract needs (the message names the file and says how to fix it). A member whose
            ``metrics.jsonl`` or ``analysis.json`` cannot be read gets a note, not an error.
    """
    sweep_dir = Path(sweep_dir)
    spec = _read_spec(sweep_dir)
    keys = list(spec.get("grid", {}))
    results = _read_results(sweep_dir, keys)
    seeds = spec.get("seeds") or sorted({m["seed"] for m in spec["members"]})
    levels = {**{k: list(v) for k, v in spec["grid"].items()}, SEED: list(seeds)}
    notes: list[str] = []
    members = []
    for i, m in enumerate(spec["members"]):
        if m["seed"] not in levels[SEED]:
            levels[SEED].append(m["seed"])
        mem = Member(i, m["dir"], {k: m["values"][k] for k in keys}, m["seed"], m.get("group"))
        if (hit := results.get(m["dir"])) is not None:
            line, r = hit
            path = sweep_dir / "results.csv"
            mem.stats = tuple(_float(r[c], path, line, c) for c in CSV_STATS)  # type: ignore[assignment]
            g = _float(r["grok_step"], path, line, "grok_step")
            s = _float(r.get("steps", ""), path, line, "steps")
            mem.grok_step, mem.steps = (None if g is None else int(g)), (None if s is None else int(s))
            mem.stopped, mem.csv_outcome = r.get("stopped") or None, r.get("outcome") or None
        run_dir = sweep_dir / m["dir"]
        try:
            rows = [r for r in read_rows(run_dir / "metrics.jsonl") if isinstance(r, dict) and "step" in r]
            mem.curve = downsample(rows) if rows else None
            if (run_dir / "analysis.json").is_file():
                mem.analysis = analysis_stats(json.loads((run_dir / "analysis.json").read_text()))
        except (RunError, json.JSONDecodeError, OSError, ValueError, TypeError) as e:
            notes.append(f"{m['dir']}: unreadable ({e})")
        members.append(mem)
    if n := sum(1 for m in members if m.dir not in results):
        notes.append(f"{n} of {len(members)} members have no row in results.csv yet (not classified)")
    min_loss = float(spec.get("min_loss") or MIN_LOSS)
    max_ratio = float(spec.get("max_ratio") or MAX_RATIO)
    if n := sum(1 for m in members if m.csv_outcome not in (None, outcome_of(m.stats, min_loss, max_ratio))):
        notes.append(f"for {n} members results.csv's outcome column disagrees with the rule applied to its "
                     "own statistics: results.csv may be stale (re-run `groklab sweep`)")
    return SweepData(sweep_dir, spec, keys, levels, members, min_loss, max_ratio, notes)
