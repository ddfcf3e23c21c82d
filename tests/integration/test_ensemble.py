"""An ensemble trains as one batched computation, yet each member follows its own solo run."""

from __future__ import annotations

import json

import pytest
import torch

from groklab import load_run
from groklab.cli import main

TINY = ["--task.p", "11", "--model.d_model", "32", "--model.d_mlp", "64", "--train.steps", "40",
        "--train.eval_every", "5", "--train.checkpoint_every", "20", "--train.lr", "3e-3", "--no-progress"]


def _same_run(a, b):
    assert [r["step"] for r in a.metrics] == [r["step"] for r in b.metrics]
    for ra, rb in zip(a.metrics, b.metrics, strict=True):
        for key in ("train_loss", "test_loss", "train_acc", "test_acc", "sum_sq_weights"):
            torch.testing.assert_close(rb[key], ra[key], rtol=1e-5, atol=1e-7, msg=key)
    assert a.steps == b.steps
    for k, v in a.state_at(a.steps[-1]).items():
        torch.testing.assert_close(b.state_at(b.steps[-1])[k], v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis", [["--seeds", "0-1"], ["--sweep", "train.weight_decay=0.3,3"]])
def test_members_match_solo_runs(tmp_path, axis):
    ens = tmp_path / "ens"
    assert main(["train", "--preset", "nanda2023", "--out", str(ens), *axis, *TINY]) == 0
    manifest = json.loads((ens / "ensemble.json").read_text())["members"]
    assert len(manifest) == 2
    for m in manifest:
        run = ens / m["dir"]
        assert {p.name for p in run.iterdir()} == {"config.json", "metrics.jsonl", "checkpoints"}
        key, value = next(iter(m["overrides"].items()))
        solo = tmp_path / m["dir"]
        argv = ["train", "--preset", "nanda2023", "--out", str(solo), f"--{key}", str(value), *TINY]
        assert main(argv) == 0
        member = load_run(run)
        assert member.config == load_run(solo).config
        _same_run(load_run(solo), member)


def test_members_differ(tmp_path):
    """Nothing reduces across members: different seeds give different trajectories."""
    ens = tmp_path / "ens"
    assert main(["train", "--preset", "nanda2023", "--out", str(ens), "--seeds", "0,1", *TINY]) == 0
    a, b = load_run(ens / "seed-0"), load_run(ens / "seed-1")
    assert a.metrics[-1]["train_loss"] != b.metrics[-1]["train_loss"]
