"""``groklab slingshot``: train one config with a float32 and with a float64 log-softmax, side by
side, and find the loss spikes ("slingshots") of each.

Nanda et al. 2023 (arXiv 2301.05217; ``../shared/reference/nanda.md`` §2) compute the loss in
float64 because a float32 log-softmax only returns multiples of ~1.2e-7, which makes the late train
loss spike; Thilak et al. 2022, "The Slingshot Mechanism" (arXiv 2206.04817), describe these
cyclic spikes. The two runs share every config key but ``train.loss_dtype`` (so the same seeds,
split and initialisation) and are trained one after the other into ``OUT/float32`` and
``OUT/float64`` (ordinary run directories: ``groklab analyze`` / ``report`` work on each). The
spike rule is ``analysis.spikes.detect_spikes`` (docs/analysis.md, "Spikes and oscillations").

Outputs, each written atomically: ``OUT/slingshot.json`` (the spikes and the oscillation summary
of both runs) and ``OUT/slingshot.html`` (a self-contained page with both loss curves, spikes
marked). Re-running with the same ``--out`` resumes an interrupted run from its last checkpoint,
and a finished run is not trained again.

CLI: register ``add_parser(subparsers)`` (or ``cmd_slingshot`` with the arguments of
``add_arguments``) in ``groklab.cli``; ``slingshot_main(argv)`` runs it standalone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .analysis.spikes import FLOOR, RISE, SPIKE_RULE, WINDOW, run_spikes
from .config import Config, ConfigError, apply_overrides
from .presets import get_preset
from .runs import (
    RESUME_KEYS,
    RunError,
    atomic_write,
    config_json,
    last_complete_step,
    read_config,
    read_metrics,
)

DTYPES = ("float32", "float64")
DEFAULT_PRESET = "nanda2023"


def _flat(cfg: Config) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, sub in cfg.to_dict().items() if isinstance(sub, dict)
            for k, v in sub.items()}


def configs(preset: str = DEFAULT_PRESET, overrides: Mapping[str, Any] | None = None,
            from_strings: bool = False) -> dict[str, Config]:
    """The two configs, ``{"float32": cfg, "float64": cfg}``: the preset with ``overrides``, then
    ``train.loss_dtype`` set. Raises ConfigError for an unknown preset or key, a bad value, or an
    override of ``train.loss_dtype`` (the comparison sets it)."""
    overrides = dict(overrides or {})
    if "train.loss_dtype" in overrides:
        raise ConfigError("groklab slingshot trains both train.loss_dtype values (float32 and float64); "
                          "drop the train.loss_dtype override")
    base = apply_overrides(get_preset(preset), overrides, from_strings=from_strings)
    return {d: apply_overrides(base, {"train.loss_dtype": d}, from_strings=False).resolved() for d in DTYPES}


def _done(cfg: Config, rows: list[dict]) -> bool:
    """Whether a run with these metrics rows has finished: it reached ``train.steps`` or stopped
    early at ``train.stop_test_loss``."""
    if not rows:
        return False
    last, stop = rows[-1], cfg.train.stop_test_loss
    return last["step"] >= cfg.train.steps or (
        stop is not None and last.get("test_loss") is not None and last["test_loss"] < stop)


def _train_one(cfg: Config, run_dir: Path, progress: bool) -> str:
    """Train ``run_dir`` fresh, resume it, or leave a finished run; returns what it did."""
    from .train.loop import Member, Trainer

    if progress:
        print(f"{run_dir}: train.loss_dtype {cfg.train.loss_dtype}", file=sys.stderr)
    if not run_dir.exists() or not any(run_dir.iterdir()):
        Trainer([Member(cfg, run_dir)], progress=progress).run()
        return "trained"
    stored = read_config(run_dir)
    diff = [k for k, v in _flat(cfg).items() if k not in RESUME_KEYS and _flat(stored).get(k) != v]
    if diff:
        raise ConfigError(f"{run_dir} was trained with a different config ({', '.join(diff)} differ); use "
                          "the same preset and overrides to resume it, or choose another --out")
    if last_complete_step([run_dir]) is None:
        raise RunError(f"{run_dir} has no checkpoint to resume from (killed before its first one); "
                       "delete it and run again")
    rows = read_metrics(run_dir / "metrics.jsonl")
    if _done(cfg, rows) and last_complete_step([run_dir]) == rows[-1]["step"]:
        return "finished already"
    atomic_write(run_dir / "config.json", config_json(cfg))  # train.steps etc. may have changed
    Trainer([Member(cfg, run_dir)], progress=progress).run(resume=True)
    return "resumed"


def _final(rows: list[dict]) -> dict:
    r = rows[-1] if rows else {}
    return {k: r.get(k) for k in ("step", "train_loss", "test_loss", "train_acc", "test_acc")}


def run_slingshot(preset: str = DEFAULT_PRESET, out: str | Path = "slingshot",
                  overrides: Mapping[str, Any] | None = None, progress: bool = False,
                  from_strings: bool = False) -> dict:
    """Train the float32 and float64 runs into ``OUT/float32`` and ``OUT/float64``, detect the loss
    spikes of each, and write ``OUT/slingshot.json`` and ``OUT/slingshot.html``.

    Args:
        preset: the recipe (``groklab.presets``; default ``nanda2023``).
        out: the output folder; an existing run in it is resumed from its last checkpoint, a
            finished one is reused (``train.steps``, ``train.stop_test_loss`` and ``train.device``
            may differ from the stored run, e.g. to extend it; any other key may not).
        overrides: dotted config overrides (``{"task.p": 59, "train.steps": 4000}``), applied to
            both runs; not ``train.loss_dtype``.
        progress: show each run's tqdm bar.
        from_strings: the override values are CLI strings (``"59"``) to parse.

    Returns:
        The ``slingshot.json`` dict: ``preset``, ``overrides``, ``steps``, ``rule`` and its
        ``rise`` / ``window`` / ``floor``, ``elapsed_s``, and ``runs[dtype]`` with ``dir``,
        ``action`` (trained, resumed, finished already), ``train_s`` (wall seconds of this call's
        training), ``final`` (last metrics row's losses and accuracies), ``spikes``
        (``{"train_loss": [{start, peak, end, rise, baseline, peak_loss}], "test_loss": [...]}``),
        ``n_spikes`` and ``oscillations`` (as in ``analysis.json``).

    Raises:
        ConfigError: unknown preset or key, a bad value, a ``train.loss_dtype`` override, or an
            existing run in ``OUT`` trained with a different config.
        RunError: an existing run directory in ``OUT`` that cannot be resumed.

    Source: Nanda et al. 2023 (float64 loss; float32 slingshots); Thilak et al. 2022.
    """
    t0 = time.perf_counter()
    out = Path(out)
    cfgs = configs(preset, overrides, from_strings)
    runs, metrics = {}, {}
    for dtype, cfg in cfgs.items():
        t1 = time.perf_counter()
        action = _train_one(cfg, out / dtype, progress)
        rows = read_metrics(out / dtype / "metrics.jsonl")
        ev = run_spikes(rows)
        metrics[dtype] = rows
        runs[dtype] = {
            "dir": dtype, "action": action, "train_s": round(time.perf_counter() - t1, 3),
            "final": _final(rows), "spikes": ev["spikes"],
            "n_spikes": {k: len(v) if isinstance(v, list) else None for k, v in ev["spikes"].items()},
            "oscillations": ev["oscillations"],
        }
    summary = {
        "preset": preset, "overrides": {k: v for k, v in (overrides or {}).items()},
        "steps": cfgs["float32"].train.steps, "rule": SPIKE_RULE, "rise": RISE, "window": WINDOW,
        "floor": FLOOR, "runs": runs, "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    from .analysis.files import json_safe
    from .report.slingshot import slingshot_page

    summary = json_safe(summary)
    atomic_write(out / "slingshot.json", json.dumps(summary, indent=1, allow_nan=False))
    atomic_write(out / "slingshot.html", slingshot_page(summary, metrics))
    return summary


# --- CLI ------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``groklab slingshot``: ``--preset`` (default nanda2023), ``--out`` (required),
    ``--no-progress``; dotted config overrides (``--task.p 59``) stay in ``extra``."""
    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help=f"recipe to start from (default {DEFAULT_PRESET})")
    p.add_argument("--out", required=True, help="output folder: OUT/float32, OUT/float64, OUT/slingshot.html "
                                                "and .json (an existing one is resumed)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


HELP = "train a config with a float32 and a float64 log-softmax and mark the loss spikes (slingshots)"
EPILOG = ("Any config key but train.loss_dtype can be overridden, e.g. --task.p 59 --train.steps 4000; "
          "both runs get it. Re-run with the same --out to resume.")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``slingshot`` on ``groklab.cli``'s subparsers (``fn=cmd_slingshot``)."""
    p = add_arguments(subparsers.add_parser("slingshot", help=HELP, epilog=EPILOG))
    p.set_defaults(fn=cmd_slingshot)
    return p


def cmd_slingshot(args: argparse.Namespace, extra: list[str]) -> int:
    """``groklab slingshot``: ``args.preset``, ``args.out``, ``args.no_progress``; ``extra`` holds the
    dotted overrides. Prints the spike counts; returns 0. ConfigError / RunError propagate (the
    CLI's ``main`` turns them into exit code 2)."""
    from .cli import _split_overrides

    overrides = _split_overrides(extra)
    s = run_slingshot(args.preset, args.out, overrides, progress=not args.no_progress, from_strings=True)
    for dtype, r in s["runs"].items():
        n = r["n_spikes"]
        tr = r["spikes"]["train_loss"]
        peaks = [sp["peak"] for sp in tr] if isinstance(tr, list) else []
        print(f"{Path(args.out) / dtype}: {r['action']}; train-loss spikes {n['train_loss']}"
              f"{' at ' + ', '.join(map(str, peaks)) if peaks else ''}, test-loss spikes {n['test_loss']}")
    print(f"wrote {Path(args.out) / 'slingshot.html'} and slingshot.json")
    return 0


def slingshot_main(argv: list[str] | None = None) -> int:
    """``groklab slingshot`` on its own (``python -m groklab.slingshot --out DIR ...``); returns the
    exit code (2 for a config or run-directory error)."""
    parser = add_arguments(argparse.ArgumentParser(prog="groklab slingshot", description=HELP, epilog=EPILOG))
    args, extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return cmd_slingshot(args, extra)
    except (ConfigError, RunError) as e:
        print(f"groklab slingshot: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(slingshot_main())
