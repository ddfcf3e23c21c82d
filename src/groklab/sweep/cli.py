"""``groklab sweep`` and ``groklab crossover``: their argument parsers and commands (the library
is ``groklab.sweep``; formats in docs/sweep.md). Registered by ``groklab.cli.build_parser``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import _log_kinds, _parse_seeds, _split_overrides, _typed_overrides
from ..config import ConfigError, parse_value
from ..presets import DEFAULT_PRESET


def _sweep_spec(args: argparse.Namespace, extra: list[str]):
    """The ``SweepSpec`` of ``groklab sweep``: the TOML file's fields, then the flags."""
    from .spec import SweepSpec, load_toml_spec, parse_grid_arg

    d = load_toml_spec(Path(args.spec)) if args.spec else {}
    preset = args.preset or d.get("preset") or DEFAULT_PRESET
    base, overrides = _typed_overrides(preset, {**d.get("overrides", {}), **_split_overrides(extra)})
    grid: dict = {}
    for key, values in d.get("grid", {}).items():
        if not isinstance(values, list):
            raise ConfigError(f"{args.spec}: grid.{key} must be a list of values")
        grid[key] = [parse_value(key, v, from_string=isinstance(v, str), cfg=base) for v in values]
    for g in args.grid or []:
        key, values = parse_grid_arg(g, base)
        grid[key] = values
    seeds = args.seeds or d.get("seeds", "0")
    seeds = _parse_seeds(seeds) if isinstance(seeds, str) else [int(s) for s in seeds]
    return SweepSpec(preset=preset, grid=grid, seeds=seeds,
                     vary_data=args.vary_data or bool(d.get("vary_data", False)), overrides=overrides,
                     stop=args.stop or d.get("stop", "settled"),
                     group_size=args.group_size or int(d.get("group_size", 64)))


def cmd_sweep(args: argparse.Namespace, extra: list[str]) -> int:
    from .run import run_sweep

    spec = _sweep_spec(args, extra)
    run_sweep(spec, Path(args.out), backend=args.backend, workers=args.workers, address=args.address,
              progress=not args.no_progress, threads=args.threads,
              log=_log_kinds(args) or None)
    return 0


def cmd_crossover(args: argparse.Namespace, extra: list[str]) -> int:
    from .crossover import run_crossover
    from .spec import SweepSpec

    preset = args.preset or DEFAULT_PRESET
    _, overrides = _typed_overrides(preset, _split_overrides(extra))
    spec = SweepSpec(preset=preset, seeds=_parse_seeds(args.seeds), vary_data=args.vary_data,
                     overrides=overrides)
    res = run_crossover(spec, args.key, args.lo, args.hi, args.budget, Path(args.out), tol=args.tol,
                        max_probes=args.max_probes, decreasing=args.decreasing, backend=args.backend,
                        workers=args.workers, address=args.address, progress=not args.no_progress,
                        threads=args.threads)
    return 0 if res.get("bracket") is not None else 1


def add_parsers(sub) -> None:
    """Register ``sweep`` and ``crossover`` on the ``groklab`` subparsers."""
    sw = sub.add_parser("sweep", usage="groklab sweep [SPEC.toml] [options] [--key value ...]",
                        help="a grid over config keys and seeds, batched, on this machine or Ray",
                        epilog="Dotted overrides (--train.steps 20000) apply to every member. Re-run the "
                               "same command to resume. Formats: docs/sweep.md")
    sw.add_argument("--spec", dest="spec", help=argparse.SUPPRESS)  # the positional SPEC.toml (main())
    sw.add_argument("--preset", help=f"recipe every member starts from (default {DEFAULT_PRESET})")
    sw.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                    help="one grid axis, e.g. train.weight_decay=0.01,0.1,1 (repeat for more axes)")
    sw.add_argument("--seeds", help="seeds of every grid point, e.g. 0-2 (default 0)")
    sw.add_argument("--vary-data", action="store_true", help="each seed also sets task.data_seed")
    sw.add_argument("--stop", choices=("settled", "grokked", "never"),
                    help="when a member leaves its batch early (default settled; docs/sweep.md)")
    sw.add_argument("--group-size", type=int, help="most members per batched ensemble (default 64)")
    sw.add_argument("--out", required=True, help="sweep directory")
    sw.add_argument("--backend", choices=("local", "ray"), default="local")
    sw.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    sw.add_argument("--address", help="ray: auto or HOST:PORT of a running cluster (default: start a "
                    "loopback-only local instance)")
    sw.add_argument("--threads", type=int, help="torch threads per worker (default: cores // workers)")
    sw.add_argument("--log", action="append", metavar="KIND",
                    help="mirror each member's metrics.jsonl to tensorboard and/or wandb (offline) as its "
                         "group finishes; optional extras, docs/tracking.md")
    sw.add_argument("--no-progress", action="store_true")
    sw.set_defaults(fn=cmd_sweep)
    co = sub.add_parser("crossover", help="bisect a key for where models start to grok within a step budget",
                        epilog="Writes a sweep (groklab report OUT draws it). Exit 1 if the boundary is "
                               "not inside [lo, hi]. Rules: docs/sweep.md")
    co.add_argument("--preset", help=f"recipe to start from (default {DEFAULT_PRESET})")
    co.add_argument("--key", required=True, help="a numeric config key, e.g. task.frac_train")
    co.add_argument("--lo", type=float, required=True, help="lower end of the search")
    co.add_argument("--hi", type=float, required=True, help="upper end of the search")
    co.add_argument("--budget", type=int, required=True, help="step budget of every run (train.steps)")
    co.add_argument("--seeds", default="0-2", help="seeds of every probe (default 0-2)")
    co.add_argument("--vary-data", action="store_true", help="each seed also sets task.data_seed")
    co.add_argument("--tol", type=float, help="stop when the bracket is this narrow (default (hi-lo)/8)")
    co.add_argument("--max-probes", type=int, default=8, help="most probes (default 8)")
    co.add_argument("--decreasing", action="store_true", help="grokking below the boundary, not above")
    co.add_argument("--out", required=True, help="sweep directory")
    co.add_argument("--backend", choices=("local", "ray"), default="local")
    co.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    co.add_argument("--address", help="ray: auto or HOST:PORT (default: a loopback-only local instance)")
    co.add_argument("--threads", type=int, help="torch threads per worker (default: cores // workers)")
    co.add_argument("--no-progress", action="store_true")
    co.set_defaults(fn=cmd_crossover)
