"""A sweep's spec: a grid over config keys plus seeds, its members and their batched groups.

A spec names a preset, overrides applied to every member, a grid (dotted key -> values) and the
seeds. ``expand`` turns it into members, one run directory each (``runs/<key>-<value>_..._seed-<s>``
under the sweep directory), and groups them: members whose configs differ only in keys the trainer
batches (``train.members.BATCHABLE``: seed, lr, weight decay, data seed) train as one ensemble, at most
``group_size`` members each. The groups are written to ``sweep.json`` once, so a resumed sweep, or
the same sweep on another backend, trains exactly the same batches (a batch's composition can change
the floating-point rounding of its members).

The spec file (``groklab sweep SPEC.toml``) has the same fields as the command line::

    preset = "pair-parity"
    seeds = "0-2"            # or a list [0, 1, 2]
    vary_data = false        # true: each seed also sets task.data_seed
    stop = "settled"         # settled | grokked | never (see groklab.sweep.rules)
    [overrides]
    "train.steps" = 5000
    [grid]
    "train.weight_decay" = [0.01, 0.03, 0.1, 0.3, 1]
    "model.d_hidden" = [16, 32, 64]
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, apply_overrides, parse_value
from ..presets import get_preset
from .rules import STOP_RULES

FORMAT, VERSION = "groklab-sweep", 1
SPEC_FILE, RESULTS_FILE = "sweep.json", "results.csv"
SPEC_KEYS = ("preset", "seeds", "vary_data", "stop", "overrides", "grid", "group_size")


@dataclass(frozen=True)
class SweepSpec:
    """What to sweep. ``grid`` maps dotted config keys to their values (in display order)."""

    preset: str
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    vary_data: bool = False  # each seed also sets task.data_seed (PAIR's seed: init and split)
    overrides: dict[str, Any] = field(default_factory=dict)  # applied to every member
    stop: str = "settled"  # when a member leaves its batch early (groklab.sweep.rules)
    group_size: int = 64  # most members in one batched ensemble
    kind: str = "grid"  # or "crossover"

    def base_config(self) -> Config:
        """The preset with the overrides (raises ConfigError for a bad key or value)."""
        return apply_overrides(get_preset(self.preset), self.overrides, from_strings=False).resolved()


@dataclass(frozen=True)
class SweepMember:
    """One run of a sweep: its directory (relative to the sweep), grid values, seed and config."""

    dir: str
    values: dict[str, Any]
    seed: int
    config: Config


def parse_grid_arg(spec: str, cfg: Config, flag: str = "--grid") -> tuple[str, list[Any]]:
    """``"train.weight_decay=0.01,0.1,1"`` -> ``("train.weight_decay", [0.01, 0.1, 1.0])``
    (``flag`` names the option in the error message).

    Raises:
        ConfigError: no ``=``, no values, an unknown key or a value of the wrong type.
    """
    key, sep, values = spec.partition("=")
    if not sep or not values.strip():
        raise ConfigError(f"{flag}: {spec!r} must look like train.weight_decay=0.01,0.1,1")
    return key.strip(), [parse_value(key.strip(), v.strip(), cfg=cfg) for v in values.split(",")]


def check_spec(spec: SweepSpec) -> Config:
    """Validate ``spec`` and return its base config. Every member config is built (and so
    validated) by ``expand``; this checks the spec's own fields.

    Raises:
        ConfigError: unknown stop rule, a grid key given twice or also overridden, a seed axis in
            the grid, empty or repeated values, duplicate seeds, a bad group size.
    """
    if spec.stop not in STOP_RULES:
        raise ConfigError(f"stop: {spec.stop!r} is not one of {', '.join(STOP_RULES)}")
    if not isinstance(spec.group_size, int) or spec.group_size < 1:
        raise ConfigError(f"group_size: expected a positive integer, got {spec.group_size!r}")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(f"seeds: {spec.seeds!r} must be distinct integers, e.g. 0-2")
    for key, values in spec.grid.items():
        if key in ("train.seed",) or (spec.vary_data and key == "task.data_seed"):
            raise ConfigError(f"grid: {key} is set by --seeds; sweep seeds with --seeds 0-8")
        if key in spec.overrides:
            raise ConfigError(f"grid: {key} is both a grid key and an override; keep one")
        if not values or len({json.dumps(v) for v in values}) != len(values):
            raise ConfigError(f"grid: {key} needs distinct values, got {values!r}")
    return spec.base_config()


def _label(key: str, grid: dict[str, list[Any]]) -> str:
    last = key.split(".")[-1]
    clash = sum(k.split(".")[-1] == last for k in grid) > 1
    return key.replace(".", "-") if clash else last


def _fmt(v: Any) -> str:
    s = str(v).lower() if isinstance(v, bool) else str(v)
    return s.replace("/", "_").replace(" ", "")


def expand(spec: SweepSpec) -> list[SweepMember]:
    """Every (grid point, seed) as a member, grid keys varying slowest-first in spec order and
    the seed fastest. Raises ConfigError for a member config that does not validate."""
    base = check_spec(spec)
    keys = list(spec.grid)
    out = []
    for combo in itertools.product(*(spec.grid[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        stem = "_".join(f"{_label(k, spec.grid)}-{_fmt(v)}" for k, v in values.items())
        for seed in spec.seeds:
            over: dict[str, Any] = {**values, "train.seed": seed}
            if spec.vary_data:
                over["task.data_seed"] = seed
            cfg = apply_overrides(base, over, from_strings=False).resolved()
            name = f"{stem}_seed-{seed}" if stem else f"seed-{seed}"
            out.append(SweepMember(f"runs/{name}", values, seed, cfg))
    return out


def group_members(members: list[SweepMember], group_size: int, workers: int = 1) -> list[list[int]]:
    """Indices of the members in each batched group.

    Members go together when their configs differ only in batchable keys; a group larger than
    ``group_size`` is cut into equal consecutive chunks, and while there are fewer groups than
    ``workers`` the largest group is halved (so every worker has a group to train).
    """
    from ..train.members import _structure

    by_key: dict[str, list[int]] = {}
    for i, m in enumerate(members):
        by_key.setdefault(json.dumps(_structure(m.config), sort_keys=True, default=str), []).append(i)
    groups = []
    for idx in by_key.values():
        n = math.ceil(len(idx) / group_size)
        size = math.ceil(len(idx) / n)
        groups += [idx[i:i + size] for i in range(0, len(idx), size)]
    while len(groups) < workers and max(len(g) for g in groups) > 1:
        big = max(range(len(groups)), key=lambda i: len(groups[i]))
        g = groups.pop(big)
        half = math.ceil(len(g) / 2)
        groups[big:big] = [g[:half], g[half:]]
    return groups


def spec_json(spec: SweepSpec, members: list[SweepMember], groups: list[list[int]],
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``sweep.json`` object (format in docs/sweep.md)."""
    from ..analysis.outcome import MAX_RATIO, MIN_LOSS

    group_of = {i: g for g, idx in enumerate(groups) for i in idx}
    return {
        "format": FORMAT, "version": VERSION, "kind": spec.kind, "preset": spec.preset,
        "overrides": spec.overrides, "grid": spec.grid, "seeds": spec.seeds,
        "vary_data": spec.vary_data, "stop": spec.stop, "group_size": spec.group_size,
        "min_loss": MIN_LOSS, "max_ratio": MAX_RATIO,
        "members": [{"dir": m.dir, "values": m.values, "seed": m.seed, "group": group_of.get(i)}
                    for i, m in enumerate(members)],
        "groups": groups, **(extra or {}),
    }


def spec_from_json(d: dict[str, Any]) -> SweepSpec:
    """The spec saved in ``sweep.json``."""
    return SweepSpec(preset=d["preset"], grid={k: list(v) for k, v in d["grid"].items()},
                     seeds=list(d["seeds"]), vary_data=bool(d["vary_data"]),
                     overrides=dict(d["overrides"]), stop=d["stop"], group_size=int(d["group_size"]),
                     kind=d.get("kind", "grid"))


def read_sweep_json(sweep_dir: Path) -> dict[str, Any]:
    """Read and check ``SWEEP/sweep.json``. Raises RunError naming the problem."""
    from ..runs import RunError

    path = Path(sweep_dir) / SPEC_FILE
    if not path.is_file():
        raise RunError(f"{sweep_dir}: no {SPEC_FILE}; is this a sweep directory made by `groklab sweep`?")
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"{path}: unreadable ({e}); re-run the sweep into a new --out") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        what = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise RunError(f"{path}: not a groklab sweep file (format {what!r})")
    missing = [k for k in ("preset", "grid", "seeds", "members", "groups") if k not in d]
    if missing:
        raise RunError(f"{path}: missing {', '.join(missing)}; the file is damaged, re-run into a new --out")
    return d


def load_toml_spec(path: Path) -> dict[str, Any]:
    """Read a sweep spec file (TOML; module docstring). Raises ConfigError for unknown fields."""
    import tomllib

    try:
        d = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such spec file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    bad = [k for k in d if k not in SPEC_KEYS]
    if bad:
        raise ConfigError(f"{path}: unknown field(s) {', '.join(bad)}; valid fields: {', '.join(SPEC_KEYS)}")
    return d
