"""The ``groklab`` command: a thin layer over the library. ``main(argv) -> int`` is testable.

Exit codes: 0 success, 2 bad input (config, run directory), 1 anything unexpected (a run that
stopped on a write error, e.g. a full disk, ends with one line saying where to ``--resume``).
"""

from __future__ import annotations

import argparse
import errno
import itertools
import json
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from .config import Config, ConfigError, apply_overrides, parse_value, valid_keys
from .presets import DEFAULT_PRESET, PRESETS, get_preset
from .runs import RunError, atomic_write, last_complete_step

ENSEMBLE_FILE = "ensemble.json"


class TrainingStopped(RuntimeError):
    """Training stopped on an OSError (a full disk, say); the message is the one line to print.
    The CLI turns it into exit code 1."""


@contextmanager
def _stops_cleanly(run: Path, dirs: list[Path]) -> Iterator[None]:
    """Turn an OSError while training ``run`` (member directories ``dirs``) into one line naming
    the file, the last complete step and ``--resume``. Every file is written atomically, so the
    earlier checkpoints and metrics are intact."""
    try:
        yield
    except OSError as e:
        what = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
        fix = "free some space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
        step = last_complete_step(dirs)
        if step is None:
            msg = f"no step is complete yet: {fix}, remove {run} and train again"
        else:
            msg = (f"the last complete step is step {step}: {fix}, then continue with "
                   f"`groklab train --resume {shlex.quote(str(run))}`")
        raise TrainingStopped(f"training stopped: {what}; {msg}") from None


def _parse_seeds(spec: str) -> list[int]:
    """``"0-7"`` or ``"0,3,5"`` (or a mix, ``"0-3,9"``) -> list of ints."""
    out: list[int] = []
    try:
        for part in spec.split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.split("-", 1)
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise ConfigError(f"--seeds: {spec!r} is not a list like 0-7 or 0,3,5") from None
    if not out or len(set(out)) != len(out):
        raise ConfigError(f"--seeds: {spec!r} must name distinct seeds")
    return out


def _parse_sweep(spec: str, cfg: Config) -> tuple[str, list]:
    from .sweep.spec import parse_grid_arg

    return parse_grid_arg(spec, cfg, flag="--sweep")


def _split_overrides(extra: list[str]) -> dict[str, str]:
    """Turn ``["--train.lr", "3e-4", "--task.p=97"]`` into ``{"train.lr": "3e-4", ...}``."""
    out: dict[str, str] = {}
    i = 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--"):
            raise ConfigError(f"unexpected argument {tok!r}; overrides look like --train.lr 3e-4")
        key, eq, val = tok[2:].partition("=")
        if "." not in key:
            raise ConfigError(f"unknown option {tok!r}; see `groklab train --help`. "
                              f"Config keys: {', '.join(valid_keys())}")
        if not eq:
            if i + 1 >= len(extra):
                raise ConfigError(f"{tok} needs a value")
            val = extra[i + 1]
            i += 1
        if not key.startswith(("task.", "model.")):  # these depend on task.name / model.family:
            # checked when applied
            parse_value(key, val)  # validates the key and type early
        out[key] = val
        i += 1
    return out


def _members(base: Config, out: Path, seeds: list[int] | None, sweep: tuple[str, list] | None,
             vary_data: bool = False):
    from .train.loop import Member

    axes = []
    if seeds is not None:
        axes.append([("train.seed", s) for s in seeds])
    if sweep is not None:
        axes.append([(sweep[0], v) for v in sweep[1]])
    if not axes:
        return [Member(base, out)], None
    members, manifest = [], []
    for combo in itertools.product(*axes):
        name = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in combo)
        if vary_data:  # PAIR's one seed: the init and the split
            combo = (*combo, ("task.data_seed", dict(combo)["train.seed"]))
        cfg = apply_overrides(base, dict(combo), from_strings=False)
        members.append(Member(cfg, out / name))
        manifest.append({"dir": name, "overrides": dict(combo)})
    return members, manifest


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from .train.loop import Trainer

    if args.list_presets:
        for name, p in PRESETS.items():
            star = " (default)" if name == DEFAULT_PRESET else ""
            print(f"{name}{star}\n    {p.summary}\n    source: {p.source}")
        return 0
    if args.resume:
        return _resume(Path(args.resume), args, extra)

    preset = args.preset or DEFAULT_PRESET
    cfg = apply_overrides(get_preset(preset), _split_overrides(extra)).resolved()
    seeds = _parse_seeds(args.seeds) if args.seeds else None
    sweep = _parse_sweep(args.sweep, cfg) if args.sweep else None
    out = Path(args.out) if args.out else Path("runs") / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.vary_data and seeds is None:
        raise ConfigError("--vary-data goes with --seeds: it sets task.data_seed to each seed")
    members, manifest = _members(cfg, out, seeds, sweep, args.vary_data)
    if out.exists() and any(out.iterdir()):
        raise RunError(f"{out} is not empty; pass --resume {out} to continue it, or choose another --out")
    mirror = _mirror(args, members)
    trainer = Trainer(members, progress=not args.no_progress, on_rows=mirror)  # validates before writing
    with _stops_cleanly(out, [m.run_dir for m in members]), mirror or nullcontext():
        if manifest is not None:
            atomic_write(out / ENSEMBLE_FILE, json.dumps({"members": manifest}, indent=2))
        trainer.run()
    _finish(members, args)
    return 0




def _resume(run: Path, args: argparse.Namespace, extra: list[str]) -> int:
    """Continue ``run`` (one run or an ensemble) from its newest checkpoint.

    Only ``train.steps``, ``train.stop_test_loss``, ``train.stop_test_acc`` and ``train.device``
    may change, e.g. to extend a finished 20k-step run to 40k; anything else would make the run a
    different experiment.
    """
    from .runs import RESUME_KEYS, config_json, read_config
    from .train.loop import Member, Trainer

    overrides = _split_overrides(extra)
    bad = [k for k in overrides if k not in RESUME_KEYS]
    if bad or args.seeds or args.sweep:
        raise ConfigError(f"--resume keeps the run's saved config; only {', '.join(RESUME_KEYS)} "
                          f"can change (got {', '.join(bad) or '--seeds/--sweep'})")
    if (run / ENSEMBLE_FILE).exists():
        dirs = [run / m["dir"] for m in json.loads((run / ENSEMBLE_FILE).read_text())["members"]]
    else:
        dirs = [run]
    members = [Member(apply_overrides(read_config(d), overrides).resolved(), d) for d in dirs]
    mirror = _mirror(args, members)
    trainer = Trainer(members, progress=not args.no_progress, on_rows=mirror)  # validates before writing
    if mirror is not None:
        mirror.trainer = trainer  # replays the kept rows when the trackers open
    with _stops_cleanly(run, dirs), mirror or nullcontext():
        if overrides:
            for m in members:
                atomic_write(m.run_dir / "config.json", config_json(m.config))
        trainer.run(resume=True)
    _finish(members, args)
    return 0


def _log_kinds(args: argparse.Namespace) -> list[str]:
    """The tracker kinds of every ``--log`` flag (``--log tensorboard,wandb`` or repeated)."""
    return [k.strip() for spec in args.log or [] for k in spec.split(",")]


def _mirror(args: argparse.Namespace, members):
    """The ``--log`` trackers as a ``Trainer(on_rows=...)`` hook, or None without ``--log``."""
    if not args.log:
        return None
    from .train.tracking import TrainerMirror

    return TrainerMirror(_log_kinds(args), members)


def _finish(members, args: argparse.Namespace) -> None:
    for m in members:
        last = _last_row(m.run_dir)
        test = ("no test pairs" if last.get("test_loss") is None else
                f"test loss {last['test_loss']:.3g}, test acc {last['test_acc']:.1%}")
        print(f"{m.run_dir}: step {last.get('step')}, train loss {last.get('train_loss'):.3g}, "
              f"train acc {last.get('train_acc'):.1%}, {test}")
        if args.report:
            from .report import write_report

            path = write_report(m.run_dir, None, args.format)
            print(f"report: {path}")


def _last_row(run_dir: Path) -> dict:
    from .runs import read_metrics

    rows = read_metrics(run_dir / "metrics.jsonl")
    return rows[-1] if rows else {}


def cmd_analyze(args: argparse.Namespace, extra: list[str]) -> int:
    from .analysis.pipeline import analyze_run

    _no_extra(extra)
    path = analyze_run(Path(args.run), progress=not args.no_progress)
    print(f"wrote {path}")
    return 0


def cmd_report(args: argparse.Namespace, extra: list[str]) -> int:
    from .report import write_report

    _no_extra(extra)
    path = write_report(Path(args.run), Path(args.output) if args.output else None, args.format,
                        facet=args.facet, x=args.x, y=args.y, member_reports=args.member_reports)
    print(f"wrote {path}")
    return 0


def cmd_construct(args: argparse.Namespace, extra: list[str]) -> int:
    from .constructions import grid_accuracy, star_config, star_weights, write_run

    _no_extra(extra)
    try:
        freqs = [int(f) for f in args.freqs.split(",")]
    except ValueError:
        raise ConfigError(f"--freqs: {args.freqs!r} is not a list like 4,5,7") from None
    try:
        state = star_weights(args.p, args.neurons, args.act, freqs)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cfg = star_config(args.p, args.neurons, args.act, freqs)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise RunError(f"{out} is not empty; choose another --out")
    write_run(out, cfg, state)
    acc = grid_accuracy(state, args.p, args.act)
    print(f"{out}: star construction, p {args.p}, {args.neurons} neurons per frequency, {args.act}, "
          f"frequencies {','.join(map(str, freqs))}: full-grid accuracy {acc:.2%}")
    return 0


def _typed_overrides(preset: str, overrides: dict) -> tuple[Config, dict]:
    """The preset with ``overrides`` applied (validating them), and the overrides as typed values."""
    base = apply_overrides(get_preset(preset), overrides).resolved()
    return base, {k: parse_value(k, v, cfg=base) for k, v in overrides.items()}


def cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    from .bench import run_bench

    return run_bench(extra)


def _no_extra(extra: list[str]) -> None:
    if extra:
        raise ConfigError(f"unexpected arguments {' '.join(extra)}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="groklab", description="Train, watch and reverse-engineer grokking.")
    sub = ap.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train a model (or an ensemble) into a run directory",
                        epilog="Any config key can be overridden: --task.p 97 --train.weight_decay 0.3. "
                               f"Keys: {', '.join(valid_keys())}")
    tr.add_argument("--preset", help=f"recipe to start from (default {DEFAULT_PRESET}); see --list-presets")
    tr.add_argument("--list-presets", action="store_true", help="list presets with their sources")
    tr.add_argument("--out", help="run directory (default runs/<preset>-<time>)")
    tr.add_argument("--resume", metavar="RUN", help="continue a killed run from its last checkpoint")
    tr.add_argument("--seeds", help="train several init seeds as one batched ensemble, e.g. 0-7")
    tr.add_argument("--vary-data", action="store_true",
                    help="with --seeds: each seed also sets task.data_seed (the split), as PAIR's seed does")
    tr.add_argument("--sweep", help="ensemble over one scalar, e.g. train.weight_decay=0.3,1,3")
    tr.add_argument("--device", choices=("cpu", "cuda", "auto"), help="shortcut for --train.device")
    tr.add_argument("--report", action="store_true", help="write the HTML report when training ends")
    tr.add_argument("--format", choices=("png", "svg"), help="with --report: also export figures")
    tr.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    tr.add_argument("--log", action="append", metavar="KIND",
                    help="mirror metrics.jsonl to tensorboard and/or wandb (offline), e.g. --log tensorboard;"
                         " optional extras, docs/tracking.md")
    tr.set_defaults(fn=cmd_train)
    an = sub.add_parser("analyze", help="the analyses that fit the run's task (Fourier circuit, "
                        "phase changes, induction heads, skip trigrams)")
    an.add_argument("run", help="run directory")
    an.add_argument("--no-progress", action="store_true")
    an.set_defaults(fn=cmd_analyze)
    rp = sub.add_parser("report", help="self-contained interactive HTML report of a run")
    rp.add_argument("run", help="run directory")
    rp.add_argument("-o", "--output", help="HTML file (default RUN/report.html)")
    rp.add_argument("--format", choices=("png", "svg"), help="also write each figure as an image")
    rp.add_argument("--facet", help="sweeps: grid key with one panel per value (default: the first key)")
    rp.add_argument("--x", help="sweeps: grid key on the x axis (default: the second key)")
    rp.add_argument("--y", help="sweeps: grid key on the y axis (default: the third key; 'seed' allowed)")
    rp.add_argument("--member-reports", action="store_true",
                    help="sweeps: first write each member's own report (about 1 s and 6 MB each)")
    rp.set_defaults(fn=cmd_report)
    cs = sub.add_parser("construct", help="write a run of hand-set weights (PAIR's star construction)")
    csub = cs.add_subparsers(dest="construction", required=True)
    st = csub.add_parser("star", help="PAIR App. A: N in-projections at 2 pi j/N, out-projections at the "
                         "doubled angles; quadratic is Gromov's exact solution")
    st.add_argument("--p", type=int, default=67, help="modulus, an odd prime (default 67)")
    st.add_argument("--neurons", type=int, default=5, help="neurons per frequency (default 5)")
    st.add_argument("--act", choices=("relu", "quadratic"), default="relu")
    st.add_argument("--freqs", default="1", help="frequencies, one star each, e.g. 4,5,7 (default 1)")
    st.add_argument("--out", required=True, help="run directory to write")
    st.set_defaults(fn=cmd_construct)
    from .sweep.cli import add_parsers as add_sweep

    add_sweep(sub)
    from .slingshot import add_parser as add_slingshot

    add_slingshot(sub)
    from .compare import add_parser as add_compare

    add_compare(sub)
    # add_help=False: --help reaches bench's own parser, which lists --zoo, --pair, --sweep...
    bn = sub.add_parser("bench", help="training-speed benchmark (prints ms/step and ratios)", add_help=False)
    bn.set_defaults(fn=cmd_bench)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    spec = None
    if len(argv) > 1 and argv[0] == "sweep" and not argv[1].startswith("-"):
        spec = argv.pop(1)  # `groklab sweep SPEC.toml ...`: a positional would swallow override values
    args, extra = parser.parse_known_args(argv)
    if spec is not None:
        args.spec = spec
    if getattr(args, "device", None):
        extra += ["--train.device", args.device]
    try:
        return args.fn(args, extra)
    except (ConfigError, RunError) as e:
        print(f"groklab: error: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:
        print(f"groklab: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("groklab: interrupted; continue with `groklab train --resume RUN`", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
