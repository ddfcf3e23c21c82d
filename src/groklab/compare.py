"""``groklab compare``: which "grok faster" switch works best, on the same model and the same seeds.

A *switch* is a named set of dotted config overrides (``SWITCHES``, a plain dict; ``--switch
NAME:key=value,...`` adds or replaces one). Each switch is one ordinary sweep, ``OUT/<switch>/``
(``sweep.json``, ``results.csv``, ``runs/seed-<s>/``): the preset with the common overrides, the
switch's overrides on top (a switch's key wins over a common one), ``train.steps`` = the budget,
the stop rule ``grokked`` (a run stops at its first evaluation with test accuracy >= 99%) and
group size 1, so every seed trains alone and the ``elapsed_s`` of its metrics rows is the wall time
of one model on this machine (with the default one worker). Re-running the same command resumes
every sweep; finished runs are not trained again.

Outputs, written atomically: ``OUT/compare.json`` (per switch: overrides, per-seed rows and the
summary), ``OUT/compare.csv`` (one row per switch) and ``OUT/compare.md`` (a markdown table with a
caption; ``compare_table``). Statistics: ``compare_stats``; the format and the reasons in docs/compare.md.

Sources of the registry's switches: Grokfast, Lee et al. 2024 (arXiv:2405.20233), the EMA and MA
gradient filters; StableMax and ⊥AdamW, Prieto et al. 2025, "Grokking at the Edge of Numerical
Stability" (arXiv:2501.04697). Formulas and defaults: docs/switches.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .compare_stats import LEVEL, MedianCI, median, median_ci
from .compare_table import fmt_overrides, render_csv, render_md, seeds_text
from .config import Config, ConfigError, parse_value
from .runs import RunError, atomic_write, read_metrics

SWITCHES: dict[str, dict[str, Any]] = {  # name -> dotted overrides; data, checked by config validation
    "baseline": {},
    "grokfast_ema": {"train.grad_filter": "ema"},  # Lee et al. 2024, Grokfast-EMA
    "grokfast_ma": {"train.grad_filter": "ma"},  # Lee et al. 2024, Grokfast-MA
    "stablemax": {"train.loss": "stablemax"},  # Prieto et al. 2025, StableMax cross-entropy
    # Prieto et al. 2025's ⊥AdamW, as they run it: without weight decay. ⊥ removes the gradient's
    # radial part, so nothing opposes decoupled decay: on nanda2023 with wd 1 the test accuracy
    # reached 94% at step 400 and then fell to 2% by step 2,000 as the weights shrank (measured)
    "perp_adamw": {"train.optimizer": "perp_adamw", "train.weight_decay": 0.0},
}
BASELINE = "baseline"  # the switch the speed-ups divide by
DEFAULT_PRESET, DEFAULT_SEEDS = "nanda2023", "0-4"
RESERVED = {"train.steps": "--budget", "train.seed": "--seeds"}  # keys the comparison sets itself
FORMAT, VERSION = "groklab-compare", 1
JSON_FILE, CSV_FILE, MD_FILE = "compare.json", "compare.csv", "compare.md"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_SWITCH_SYNTAX = "NAME:key=value[,key=value...], e.g. wd3:train.weight_decay=3,train.lr=3e-3"


# --- switches ------------------------------------------------------------------------------------
def parse_switch_arg(spec: str, cfg: Config) -> tuple[str, dict[str, Any]]:
    """``"wd3:train.weight_decay=3,train.lr=3e-3"`` -> ``("wd3", {"train.weight_decay": 3.0, ...})``.

    Values are parsed as command-line override values against ``cfg`` (the preset with the
    common overrides), so they come back typed.

    Raises:
        ConfigError: no ``:``, a bad name (letters, digits, ``_`` and ``-``; it names a folder),
            an item without ``=``, no items, a key given twice, an unknown key or a bad value.
    """
    name, sep, body = spec.partition(":")
    name = name.strip()
    if not sep or not _NAME.match(name):
        raise ConfigError(f"--switch {spec!r}: expected {_SWITCH_SYNTAX}")
    out: dict[str, Any] = {}
    for item in (body.split(",") if body.strip() else []):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key or not value.strip():
            raise ConfigError(f"--switch {spec!r}: {item!r} is not key=value; expected {_SWITCH_SYNTAX}")
        if key in out:
            raise ConfigError(f"--switch {spec!r}: {key} is given twice")
        try:
            out[key] = parse_value(key, value.strip(), cfg=cfg)
        except ConfigError as e:
            raise ConfigError(f"--switch {spec!r}: {e}") from None
    if not out:
        raise ConfigError(f"--switch {spec!r}: no overrides; expected {_SWITCH_SYNTAX} "
                          f"(the switch {BASELINE!r} is the one without overrides)")
    return name, out


def select_switches(names: list[str] | None,
                    custom: Mapping[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The switches to run, in order: ``names`` (default: every ``SWITCHES`` entry), then any
    ``custom`` switch not already named. A custom switch replaces a registry one of its name.

    Raises:
        ConfigError: an unknown or repeated name (the message lists the known switches).
    """
    custom = dict(custom or {})
    known = {**SWITCHES, **custom}
    order = list(names) if names is not None else list(SWITCHES)
    order += [n for n in custom if n not in order]
    unknown = [n for n in order if n not in known]
    if unknown:
        raise ConfigError(f"--switches: unknown switch(es) {', '.join(unknown)}. Known switches: "
                          f"{', '.join(known)}; define one with --switch {_SWITCH_SYNTAX}")
    if not order or len(set(order)) != len(order):
        raise ConfigError(f"--switches: {','.join(order)!r} must name distinct switches, "
                          "e.g. baseline,stablemax")
    return {n: dict(known[n]) for n in order}


def sweep_specs(preset: str, seeds: list[int], budget: int, overrides: Mapping[str, Any],
                switches: Mapping[str, dict[str, Any]]) -> dict:
    """One ``SweepSpec`` per switch, each validated (its base config built) before anything trains.

    Raises:
        ConfigError: a non-positive budget, ``train.steps`` / ``train.seed`` among the overrides,
            or a switch whose config does not validate (an unknown key lists the valid keys).
    """
    from .sweep.spec import SweepSpec, check_spec

    if not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"--budget: expected a positive number of steps, got {budget!r}")
    specs = {}
    for name, over in [("every run", overrides), *switches.items()]:
        for key, flag in RESERVED.items():
            if key in over:
                raise ConfigError(f"{key} is set by {flag} (in {name}); drop the override")
    for name, over in switches.items():
        spec = SweepSpec(preset=preset, seeds=list(seeds), stop="grokked", group_size=1,
                         overrides={**overrides, **over, "train.steps": budget})
        try:
            check_spec(spec)  # the seeds, and the base config built and validated
        except ConfigError as e:
            raise ConfigError(f"switch {name} ({fmt_overrides(over) or 'no overrides'}): {e}") from None
        specs[name] = spec
    return specs


# --- per-seed rows and the summary -------------------------------------------------------------
def seed_row(run_dir: Path) -> dict[str, Any]:
    """``grok_step`` (first logged step with test accuracy >= 0.99, or None), ``grok_wall_s`` (the
    ``elapsed_s`` of that row, seconds), ``final_weight_norm`` (sqrt of the last row's
    ``sum_sq_weights``) and ``steps`` (the last logged step) of one run; None where not known."""
    from .sweep.rules import grok_step

    rows = read_metrics(run_dir / "metrics.jsonl")
    g = grok_step(rows)
    wall = next((r.get("elapsed_s") for r in rows if r["step"] == g), None) if g is not None else None
    last = rows[-1] if rows else {}
    ssw = last.get("sum_sq_weights")
    return {"grok_step": g, "grok_wall_s": wall,
            "final_weight_norm": math.sqrt(ssw) if ssw is not None else None, "steps": last.get("step")}


def _ci_json(m: MedianCI) -> dict[str, Any]:
    fin = lambda x: x if math.isfinite(x) else None  # noqa: E731  (None: censored, beyond the budget)
    return {"median": m.median, "ci": [fin(m.lo), fin(m.hi)], "ranks": [m.j, m.k], "coverage": m.coverage}


def summarise(runs: list[dict[str, Any]], level: float = LEVEL) -> dict[str, Any]:
    """The summary of one switch from its per-seed rows (``seed_row`` plus ``seed``).

    Returns:
        ``n``, ``n_grokked``, ``grok_step`` and ``grok_wall_s`` (each ``{"median", "ci": [lo, hi],
        "ranks": [j, k], "coverage"}``; a seed that did not grok is +inf, so ``median`` is None
        unless more than half grokked, and a ``ci`` bound is None where it is censored) and
        ``final_weight_norm_median`` over the seeds with metrics.

    Raises:
        ValueError: no runs.
    """
    steps = median_ci([r["grok_step"] for r in runs], level)
    walls = median_ci([r["grok_wall_s"] if r["grok_step"] is not None else None for r in runs], level)
    norms = [r["final_weight_norm"] for r in runs if r["final_weight_norm"] is not None]
    return {"n": steps.n, "n_grokked": steps.n_finite, "grok_step": _ci_json(steps),
            "grok_wall_s": _ci_json(walls), "final_weight_norm_median": median(norms) if norms else None}


def add_speedups(switches: dict[str, dict[str, Any]], baseline: str = BASELINE) -> None:
    """Set each summary's ``speedup_steps`` and ``speedup_wall``: the baseline's median divided by
    the switch's (None unless both medians exist)."""
    base = switches.get(baseline, {}).get("summary")
    for sw in switches.values():
        s = sw["summary"]
        for key, col in (("grok_step", "speedup_steps"), ("grok_wall_s", "speedup_wall")):
            b = base[key]["median"] if base else None
            m = s[key]["median"]
            s[col] = b / m if b is not None and m else None


def collect(out: Path, names: list[str], baseline: str = BASELINE) -> dict[str, dict[str, Any]]:
    """Per switch ``{"dir", "runs", "summary"}`` from the sweep directories ``out/<name>/``."""
    from .sweep.spec import read_sweep_json

    res = {}
    for name in names:
        sweep = read_sweep_json(out / name)
        runs = [{"seed": m["seed"], "run_dir": f"{name}/{m['dir']}", **seed_row(out / name / m["dir"])}
                for m in sweep["members"]]
        res[name] = {"dir": name, "runs": runs, "summary": summarise(runs)}
    add_speedups(res, baseline)
    return res


# --- running -------------------------------------------------------------------------------------
def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / JSON_FILE).is_file() and not any(
            (p / "sweep.json").is_file() for p in out.iterdir()):
        raise RunError(f"{out} is not empty and holds no comparison; choose another --out")


def run_compare(preset: str, seeds: list[int], budget: int, out: str | Path,
                switches: Mapping[str, dict[str, Any]], overrides: Mapping[str, Any] | None = None,
                workers: int = 1, threads: int | None = None, progress: bool = True,
                command: str | None = None) -> dict[str, Any]:
    """Train ``preset`` under every switch on ``seeds`` (or resume), then write the three files.

    Args:
        preset: the recipe (``groklab.presets``).
        seeds: ``train.seed`` values, the same for every switch.
        budget: ``train.steps`` of every run; a run stops earlier once it groks.
        out: the output folder; ``out/<switch>/`` is that switch's sweep.
        switches: name -> dotted overrides, in table order (``select_switches``).
        overrides: typed dotted overrides applied to every run (under the switch's own).
        workers: runs trained at once (default 1: each ``elapsed_s`` is a single run's wall time).
        threads: torch threads per run (default: all cores // workers).
        progress: show the sweeps' progress bars.
        command: the command line for the caption (default: rebuilt from the arguments).

    Returns:
        The ``compare.json`` object (docs/compare.md).

    Raises:
        ConfigError: a bad switch, override, budget or seeds (before anything is trained).
        RunError: ``out`` holds something else, or a switch folder holds a different sweep.
    """
    from .sweep.local import threads_per_worker
    from .sweep.rules import GROK_ACC
    from .sweep.run import run_sweep

    out = Path(out)
    overrides = dict(overrides or {})
    specs = sweep_specs(preset, seeds, budget, overrides, switches)
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    _check_out(out)
    threads = threads or threads_per_worker(workers)
    for name, spec in specs.items():
        print(f"switch {name}: {fmt_overrides(switches[name]) or 'no overrides'}")
        run_sweep(spec, out / name, workers=workers, threads=threads, progress=progress)
    res = collect(out, list(specs), BASELINE)
    for name, sw in res.items():
        sw["overrides"] = dict(switches[name])
    ci = res[next(iter(res))]["summary"]["grok_step"]
    d = {"format": FORMAT, "version": VERSION, "preset": preset, "budget": budget, "seeds": list(seeds),
         "overrides": overrides, "stop": "grokked", "grok_acc": GROK_ACC, "group_size": 1, "workers": workers,
         "threads": threads, "level": LEVEL, "ci": {"n": len(seeds), "ranks": ci["ranks"],
                                                     "coverage": ci["coverage"]},
         "baseline": BASELINE if BASELINE in res else None,
         "command": command or _command(preset, seeds, budget, out, switches, overrides, workers, threads),
         "switches": {n: {"overrides": sw["overrides"], "dir": sw["dir"], "runs": sw["runs"],
                          "summary": sw["summary"]} for n, sw in res.items()}}
    atomic_write(out / JSON_FILE, json.dumps(d, indent=1, allow_nan=False))
    atomic_write(out / CSV_FILE, render_csv(d))
    atomic_write(out / MD_FILE, render_md(d))
    return d


def _command(preset, seeds, budget, out, switches, overrides, workers, threads) -> str:
    """The command line that reproduces (or resumes) this comparison, for the caption."""
    import shlex

    custom = [f"--switch {shlex.quote(f'{n}:{fmt_overrides(o)}')}" for n, o in switches.items()
              if SWITCHES.get(n) != o]
    common = [f"--{k} {shlex.quote(fmt_overrides({k: v}).partition('=')[2])}" for k, v in overrides.items()]
    return " ".join(["groklab compare", f"--preset {preset}", f"--seeds {seeds_text(list(seeds))}",
                     f"--budget {budget}", f"--out {shlex.quote(str(out))}",
                     f"--switches {','.join(switches)}", *custom, f"--workers {workers}",
                     f"--threads {threads}", *common])


# --- CLI ---------------------------------------------------------------------------------------
HELP = "train a preset under each 'grok faster' switch on the same seeds and tabulate time to grok"
_LISTED = ", ".join(f"{n} ({fmt_overrides(o) or 'no overrides'})" for n, o in SWITCHES.items())
EPILOG = (f"Switches: {_LISTED}. "
          "Any other dotted key (--task.p 59) applies to every run; a switch's own keys win. Every seed "
          "trains alone (group size 1) and stops at 99% test accuracy; with the default one worker and "
          "all cores as threads, each wall time is a single run's. Re-run the same command to resume. "
          "docs/compare.md")


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``groklab compare``; dotted config overrides stay in ``extra``."""
    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help=f"recipe to start from (default {DEFAULT_PRESET})")
    p.add_argument("--seeds", default=DEFAULT_SEEDS, help=f"train.seed values, the same for every switch "
                                                          f"(default {DEFAULT_SEEDS})")
    p.add_argument("--budget", type=int, help="step budget of every run, its train.steps (default: the "
                                              "preset's); a run stops earlier once it groks")
    p.add_argument("--out", required=True, help="output folder: OUT/<switch>/ sweeps and OUT/compare.{json,"
                                                "csv,md} (an existing one is resumed)")
    p.add_argument("--switches", help=f"comma-separated switches in table order (default: all of "
                                      f"{','.join(SWITCHES)})")
    p.add_argument("--switch", action="append", metavar="NAME:K=V,...",
                   help="add or replace a switch, e.g. wd3:train.weight_decay=3 (repeat for more); it is "
                        "run after --switches unless listed there")
    p.add_argument("--workers", type=int, default=1,
                   help="runs trained at once (default 1, so every elapsed_s is one model alone on the "
                        "machine; with more, runs share the cores and the wall times are not single-run "
                        "times)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: all cores // workers)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``compare`` on ``groklab.cli``'s subparsers (``fn=cmd_compare``)."""
    p = add_arguments(subparsers.add_parser("compare", help=HELP, epilog=EPILOG))
    p.set_defaults(fn=cmd_compare)
    return p


def cmd_compare(args: argparse.Namespace, extra: list[str]) -> int:
    """``groklab compare``: runs ``run_compare`` and prints the markdown table; returns 0.
    ConfigError / RunError propagate (``groklab.cli.main`` turns them into exit code 2)."""
    from .cli import _parse_seeds, _split_overrides, _typed_overrides

    base, overrides = _typed_overrides(args.preset, _split_overrides(extra))
    custom = dict(parse_switch_arg(s, base) for s in args.switch or [])
    names = [n.strip() for n in args.switches.split(",")] if args.switches else None
    switches = select_switches(names, custom)
    budget = args.budget if args.budget is not None else base.train.steps
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    d = run_compare(args.preset, _parse_seeds(args.seeds), budget, Path(args.out), switches, overrides,
                    workers=args.workers, threads=args.threads, progress=not args.no_progress)
    print((Path(args.out) / MD_FILE).read_text(), end="")
    print(f"wrote {Path(args.out) / JSON_FILE}, {CSV_FILE} and {MD_FILE} ({len(d['switches'])} switches)")
    return 0
