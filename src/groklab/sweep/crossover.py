"""``groklab crossover``: bisect one config key for the boundary where models grok within a budget.

Nanda & Lieberum found the amount of data at which 5-digit addition groks "by binary searching by
hand"; the paper reports that on modular addition 30-50% of the pairs grok and 10-20% do not within
40k epochs (App. D; ``nanda.md`` §4). This automates that search.

A *probe* trains every seed at one value of ``key`` for at most ``budget`` steps, with the stop rule
``grokked`` (a member leaves its batch at its grok step, the first step with test accuracy >= 99%).
The probe *groks* when at least half of its seeds grok within the budget. Bisection assumes one
boundary, no grokking at ``lo`` and grokking at ``hi`` (or the reverse, with ``--decreasing``): each
probe at the midpoint of the current bracket replaces the end it agrees with, until the bracket is
``tol`` wide or ``max_probes`` probes have run. The ends are probed only if the search runs into
them (every probe grokked, or none did), to check that the boundary is inside ``[lo, hi]`` at all.
Every probe's members are added to one sweep directory (``sweep.json`` kind ``crossover``, with the
probes and the bracket), so ``results.csv`` and ``groklab report`` work on it and a killed search
resumes probe by probe.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import ConfigError, parse_value
from ..runs import atomic_write
from .local import cores, threads_per_worker
from .results import read_results, write_results
from .run import jobs_for, prepare, run_jobs
from .spec import SPEC_FILE, SweepSpec


def _probe_value(x: float, integer: bool, digits: int):
    return int(round(x)) if integer else round(x, digits)


def probe_groks(rows: list[dict[str, str]], budget: int) -> tuple[bool, list[dict[str, Any]]]:
    """Whether a probe groks (at least half of its seeds have a grok step <= ``budget``) and
    the per-seed outcomes ``[{"seed", "grok_step", "outcome"}]``."""
    seeds = [{"seed": int(r["seed"]), "grok_step": int(r["grok_step"]) if r["grok_step"] else None,
              "outcome": r["outcome"] or None} for r in rows]
    n = sum(s["grok_step"] is not None and s["grok_step"] <= budget for s in seeds)
    return 2 * n >= len(seeds), seeds


def run_crossover(spec: SweepSpec, key: str, lo: float, hi: float, budget: int, out: Path,
                  tol: float | None = None, max_probes: int = 8, decreasing: bool = False,
                  backend: str = "local", workers: int | None = None, address: str | None = None,
                  progress: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Bisect ``key`` in ``[lo, hi]``; returns ``{"bracket": [a, b], "probes": [...], ...}``.

    Args:
        spec: the base sweep (preset, overrides, seeds); its grid must be empty.
        key: a numeric config key, e.g. ``task.frac_train``.
        lo, hi: the search interval (``lo < hi``).
        budget: the step budget of every run (``train.steps``).
        out: the sweep directory.
        tol: stop when the bracket is at most this wide (default ``(hi - lo) / 8``; integer keys
            stop at width 1).
        max_probes: most probes, the ends included.
        decreasing: grokking at ``lo`` and not at ``hi`` (e.g. weight decay beyond which nothing fits).
        backend, workers, address, progress, threads: as ``run_sweep``.

    Raises:
        ConfigError: a bad key or interval, a grid in ``spec``.
    """
    if spec.grid:
        raise ConfigError("crossover varies one key itself; leave out --grid")
    base = spec.base_config()
    sample = parse_value(key, str(int(lo)) if float(lo).is_integer() else str(lo), cfg=base)  # its type
    if isinstance(sample, bool) or not isinstance(sample, (int, float)):
        raise ConfigError(f"--key {key}: crossover needs a numeric key, got {type(sample).__name__}")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"--lo {lo} --hi {hi}: need finite numbers with lo < hi")
    integer = isinstance(sample, int)
    lo, hi = (int(lo), int(hi)) if integer else (float(lo), float(hi))
    tol = tol if tol is not None else (1 if integer else (hi - lo) / 8)
    digits = max(3, 2 - int(math.floor(math.log10(tol)))) if not integer else 0
    spec = replace(spec, overrides={**spec.overrides, "train.steps": budget}, stop="grokked",
                   kind="crossover")
    workers = workers or cores()
    out = Path(out)
    saved = json.loads((out / SPEC_FILE).read_text()).get("crossover", {}) if (out / SPEC_FILE).exists() \
        else {}
    values: list = list(saved.get("values", []))  # probes done or under way, in order
    probes: list[dict[str, Any]] = []
    a, b = lo, hi  # a: does not grok (or groks, if decreasing), b: the other side
    t0 = time.perf_counter()

    def probe(x) -> bool:
        x = _probe_value(x, integer, digits)
        if x not in values:
            values.append(x)
        sp = replace(spec, grid={key: values})
        d, members = prepare(sp, out, workers, extra={"crossover": state(done=False)}, extend=True)
        mine = [i for i, m in enumerate(members) if m.values[key] == x]
        jobs = [j for j in jobs_for(out, d, members, threads or threads_per_worker(workers))
                if any(members[i].dir in j.dirs for i in mine)]
        if jobs:
            run_jobs(jobs, backend, workers, address, progress, sum(len(j.dirs) for j in jobs))
        write_results(out, d)
        rows = [r for r in read_results(out) if parse_value(key, r[key], cfg=base) == x]
        groks, seeds = probe_groks(rows, budget)
        probes.append({"value": x, "groks": groks, "seeds": seeds,
                       "elapsed_s": round(time.perf_counter() - t0, 1)})
        print(f"probe {key}={x}: {'groks' if groks else 'does not grok'} within {budget} steps "
              f"(grok steps {[s['grok_step'] for s in seeds]})")
        return groks

    def state(done: bool, inside: bool = True) -> dict[str, Any]:
        """``sweep.json``'s ``crossover`` object as the search stands."""
        return {"key": key, "lo": lo, "hi": hi, "budget": budget, "tol": tol, "decreasing": decreasing,
                "values": values, "probes": probes, "bracket": [a, b] if inside else None, "done": done,
                "elapsed_s": round(time.perf_counter() - t0, 1)}

    def record(inside: bool = True) -> dict[str, Any]:
        d = json.loads((out / SPEC_FILE).read_text())
        d["crossover"] = state(done=True, inside=inside)
        atomic_write(out / SPEC_FILE, json.dumps(d, indent=1))
        return d["crossover"]

    want = not decreasing  # does the upper side grok?
    n = 0
    while n < max_probes and (b - a) > tol:
        mid = _probe_value((a + b) / 2, integer, digits)
        if mid in (a, b):
            break
        n += 1
        if probe(mid) == want:
            b = mid
        else:
            a = mid
    for end, name in ((a, "lo"), (b, "hi")):  # an end never moved: check the boundary is inside
        if end == (lo if name == "lo" else hi) and n < max_probes:
            n += 1
            g = probe(end)
            if g != (want if name == "hi" else not want):
                print(f"no crossover inside [{lo}, {hi}]: {key}={end} {'groks' if g else 'does not grok'}")
                return record(inside=False)
    res = record()
    print(f"crossover of {key} within {budget} steps: between {a} and {b} "
          f"({len(probes)} probes, {res['elapsed_s']:.0f} s)")
    return res
