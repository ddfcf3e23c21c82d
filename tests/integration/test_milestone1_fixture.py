"""A run directory written before the task family still loads, analyses and reports.

``tests/fixtures/milestone1_run/`` was written by groklab at commit 956d9d0 (milestone 1, before
``task.name`` existed), run from a worktree of that commit with nothing installed::

    PYTHONPATH=/tmp/m1/src python -c "
    from groklab import Config, TaskConfig, TrainConfig, train
    from groklab.config import ModelConfig
    cfg = Config(task=TaskConfig(p=11, frac_train=0.5), model=ModelConfig(d_model=16, n_heads=2, d_mlp=32),
                 train=TrainConfig(steps=40, lr=3e-3, eval_every=10, checkpoint_every=20))
    train(cfg, 'run')"
    PYTHONPATH=/tmp/m1/src python -c "
    from groklab.analysis.pipeline import analyze_run; analyze_run('run', progress=False)"

so it holds that version's ``config.json`` (no ``task.name``, ``model.n_ctx`` 3), metrics,
three checkpoints (steps 0, 20, 40), optimizer state and its ``analysis.json``/``analysis.npz``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from groklab import load_run
from groklab.analysis.pipeline import analyze_run
from groklab.report import write_report

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "milestone1_run"
# fields of analysis.json that may legitimately differ between versions
VOLATILE = {"elapsed_s", "schema_version", "notes"}


@pytest.fixture
def m1_run(tmp_path) -> Path:
    """A writable copy of the fixture (analysing or reporting writes into the run directory)."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "milestone1_run"))


def _assert_subset(old, new, where="analysis.json"):
    """Every value of the old analysis is in the new one, numbers to 1e-5 relative or 1e-6
    absolute. The numbers come from float32 forward passes, whose last bits differ between CPUs
    (kernel paths): on another machine than the one that wrote the fixture, losses moved by 5e-9
    relative and the initialisation's small Fourier coefficients by up to 6e-8 absolute."""
    if isinstance(old, dict):
        assert isinstance(new, dict), where
        for k, v in old.items():
            if k in VOLATILE and where == "analysis.json":
                continue
            assert k in new, f"{where}.{k} is missing"
            _assert_subset(v, new[k], f"{where}.{k}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), where
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _assert_subset(a, b, f"{where}[{i}]")
    elif isinstance(old, float) and not isinstance(new, bool):
        assert isinstance(new, (int, float)), where
        assert math.isclose(new, old, rel_tol=1e-5, abs_tol=1e-6), f"{where}: {new} != {old}"
    else:
        assert new == old, f"{where}: {new!r} != {old!r}"


def test_fixture_is_a_milestone1_run():
    raw = json.loads((FIXTURE / "config.json").read_text())
    assert "name" not in raw["task"] and raw["model"]["n_ctx"] == 3
    size = sum(f.stat().st_size for f in FIXTURE.rglob("*") if f.is_file())
    assert size < 200_000


def test_loads_as_modular(m1_run):
    run = load_run(m1_run)
    assert run.config.task.name == "modular"
    assert (run.config.task.p, run.config.task.frac_train) == (11, 0.5)
    assert run.config.model.n_ctx == 3 and run.config.model.d_vocab == 12
    assert run.steps == [0, 20, 40]
    assert [r["step"] for r in run.metrics] == [0, 10, 20, 30, 40]
    # the stored weights are the ones the metrics describe: recompute the step-40 losses
    from groklab.tasks import make_data

    data = make_data(run.config.task)
    with torch.no_grad():
        logits = run.model_at(40)(data.tokens)[:, -1].double()
    last = run.metrics[-1]
    for idx, key in ((data.train_idx, "train_loss"), (data.test_idx, "test_loss")):
        loss = torch.nn.functional.cross_entropy(logits[idx], data.labels[idx]).item()
        assert math.isclose(loss, last[key], rel_tol=1e-5), key


def test_reports_from_its_own_analysis(m1_run):
    """The milestone-1 analysis.json, as committed, is read by today's report."""
    page = write_report(m1_run)
    assert page == m1_run / "report.html" and page.stat().st_size > 10_000
    assert "mod 11" in page.read_text()


def test_analyses_as_milestone1_did_and_reports(m1_run):
    old = json.loads((FIXTURE / "analysis.json").read_text())
    (m1_run / "analysis.json").unlink()
    (m1_run / "analysis.npz").unlink()
    path = analyze_run(m1_run, progress=False)
    new = json.loads(path.read_text())
    _assert_subset(old, new)
    with np.load(FIXTURE / "analysis.npz") as a, np.load(m1_run / "analysis.npz") as b:
        for k in a.files:
            assert k in b.files, k
            if a[k].dtype.kind in "fc":
                np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
            else:
                np.testing.assert_array_equal(b[k], a[k], err_msg=k)
    page = write_report(m1_run)
    assert page.stat().st_size > 10_000
