"""Shared test fixtures."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest


# --- report fixtures (issue #4) ------------------------------------------------------------------
@pytest.fixture(scope="session")
def report_run(tmp_path_factory) -> Path:
    """A tiny trained run (p=13, 160 steps, 9 checkpoints) with its analysis (``groklab analyze``)."""
    from groklab import Config, TaskConfig, TrainConfig, train
    from groklab.analysis.pipeline import analyze_run
    from groklab.config import ModelConfig

    cfg = Config(task=TaskConfig(p=13, frac_train=0.6),
                 model=ModelConfig(d_model=32, d_mlp=64, n_heads=2),
                 train=TrainConfig(steps=160, lr=3e-3, eval_every=10, checkpoint_every=20))
    out = tmp_path_factory.mktemp("report") / "run"
    with warnings.catch_warnings():  # the trainer's own warnings are its tests' business
        warnings.filterwarnings("ignore", message=r"torch.searchsorted\(\): input value tensor")
        train(cfg, str(out))
    analyze_run(out, progress=False)
    return out
