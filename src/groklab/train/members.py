"""Ensemble members: one run each, and which config keys may differ within one batched run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config, ConfigError

BATCHABLE = ("train.seed", "train.lr", "train.weight_decay", "task.data_seed")


@dataclass(frozen=True)
class Member:
    """One model of a (possibly one-member) ensemble and the directory it writes."""

    config: Config
    run_dir: Path


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` (cuda when available). Raises ConfigError if cuda is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but torch.cuda.is_available() is False; "
                          "use --train.device cpu or auto")
    return torch.device(name)


def _structure(cfg: Config) -> dict[str, Any]:
    d = {f"{s}.{k}": v for s, sub in cfg.to_dict().items() if isinstance(sub, dict)
         for k, v in sub.items()}
    return {k: v for k, v in d.items() if k not in BATCHABLE}


def check_batchable(configs: list[Config]) -> None:
    """Raise ConfigError unless the configs differ only in ``BATCHABLE`` keys."""
    ref = _structure(configs[0])
    for c in configs[1:]:
        diff = [k for k, v in _structure(c).items() if ref[k] != v]
        if diff:
            raise ConfigError(f"ensemble members differ in {', '.join(diff)}; only "
                              f"{', '.join(BATCHABLE)} can vary in one batched run")
