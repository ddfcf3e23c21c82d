"""Kill-and-resume helpers shared by the exact-resume tests: train straight, train until a step
(killed), resume from the run directory, and compare the two runs bit for bit."""

from __future__ import annotations

import pytest
import torch

from groklab import load_run
from groklab.config import Config
from groklab.runs import read_config
from groklab.train.loop import Member, Trainer


def interrupt_and_resume(cfg: Config, tmp_path, die_at: int, monkeypatch):
    """Train straight; train until ``die_at`` (killed), rebuild the Trainer from the run directory
    and resume. Returns both run directories ``(full, killed)``."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    Trainer([Member(cfg, full)], progress=False).run()
    original = Trainer.train_step

    def dies(self, step):
        if step == die_at:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(Trainer, "train_step", dies)
    with pytest.raises(KeyboardInterrupt):
        Trainer([Member(cfg, killed)], progress=False).run()
    monkeypatch.setattr(Trainer, "train_step", original)
    Trainer([Member(read_config(killed), killed)], progress=False).run(resume=True)
    return full, killed


def assert_same_run(a_dir, b_dir, steps: list[int]) -> None:
    """Both runs have checkpoints at ``steps``, bit-equal weights at the last one, and the same
    metrics rows (``elapsed_s`` aside)."""
    a, b = load_run(a_dir), load_run(b_dir)
    assert a.steps == b.steps == steps
    sa, sb = a.state_at(steps[-1]), b.state_at(steps[-1])
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k  # bit-equal
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # noqa: E731
    assert strip(a.metrics) == strip(b.metrics)
