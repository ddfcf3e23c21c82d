"""``task.rng: notebook`` against the induction notebook itself: its printed example sequence, a
real ``DataLoader``'s batch order, and the first epochs of its saved finite run
(``tests/fixtures/notebook_induction_finite.json``, from ``saved_runs/induction_head_finite.pth``),
which groklab's trainer must replay step for step; plus exact resume in both data modes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from groklab.cli import main
from groklab.config import apply_overrides
from groklab.models.transformer import build_model
from groklab.presets import get_preset
from groklab.tasks import RepeatedSubsequenceConfig, build_task
from groklab.tasks.notebook_draws import notebook_batch, notebook_init
from groklab.train.loop import Member, Trainer
from resume_helpers import assert_same_run, interrupt_and_resume

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "notebook_induction_finite.json").read_text())
NB = {"task.rng": "notebook"}


def test_notebook_batch_matches_the_printed_example():
    """The notebook's data cell prints sequence 0 of its first batch (seed 123, batch 128;
    zoo.md §2: the first occurrence at 7-22, the second copy from 38): tokens 0..37 as printed,
    loss slots 38..52 then the third copy, labels the next tokens."""
    printed = [0, 110, 127, 67, 93, 99, 103, 18, 84, 107, 124, 58, 87, 98, 97, 114, 127, 48, 74, 33,
               47, 97, 112, 26, 84, 79, 126, 37, 97, 81, 69, 50, 56, 68, 3, 85, 40, 67]
    b = notebook_batch(RepeatedSubsequenceConfig(), 128, np.random.RandomState(123))
    assert b.tokens[0, :38].tolist() == printed
    assert b.tokens[0, 38:54].tolist() == printed[7:23]  # the copy of positions 7..22
    assert b.positions[0, :15].tolist() == list(range(38, 53))
    torch.testing.assert_close(b.labels, b.tokens.gather(1, b.positions + 1), rtol=0, atol=0)
    assert b.positions.shape == (128, 30) and b.parts[0].tolist() == [0] * 15 + [1] * 15


def test_epoch_order_is_a_dataloaders():
    """After ``torch.manual_seed`` and the notebook's init, a shuffling DataLoader serves the
    permutations ``epoch_permutation`` replays (without touching the global generator)."""
    cfg = apply_overrides(get_preset("induction"), NB).resolved()
    data = build_task(cfg.task).data(128, cfg)
    torch.manual_seed(cfg.train.seed)
    weights, _ = notebook_init(cfg.model, cfg.train.seed)  # same draws as the notebook's modules
    torch.manual_seed(cfg.train.seed)
    for w in weights.values():
        torch.randn(w.numel())  # consume the global stream as the notebook's init does
    loader = torch.utils.data.DataLoader(list(range(512)), batch_size=128, shuffle=True)
    for epoch in range(5):
        served = torch.cat(list(loader))
        torch.testing.assert_close(served, data.epoch_permutation(epoch), rtol=0, atol=0)


def test_init_matches_the_notebook_modules():
    """``notebook_init`` equals a notebook-layout draw made by hand under ``torch.manual_seed``,
    transposed to TransformerLens layout; the model's init_weights uses it."""
    cfg = apply_overrides(get_preset("induction"), NB).resolved()
    torch.manual_seed(1)
    W_E = torch.randn(48, 128) / 48 ** 0.5
    W_pos = torch.randn(85, 48) / 48 ** 0.5
    W_K0 = torch.randn(4, 12, 48) / 12 ** 0.5
    W_Q0 = torch.randn(4, 12, 48) / 12 ** 0.5
    weights, _ = notebook_init(cfg.model, 1)
    torch.testing.assert_close(weights["embed.W_E"], W_E.T)
    torch.testing.assert_close(weights["pos_embed.W_pos"], W_pos)
    torch.testing.assert_close(weights["blocks.0.attn.W_K"], W_K0.transpose(1, 2))
    torch.testing.assert_close(weights["blocks.0.attn.W_Q"], W_Q0.transpose(1, 2))
    sd = dict(build_model(cfg).named_parameters())
    for k, v in weights.items():
        torch.testing.assert_close(sd[k].detach(), v)


def test_replays_the_saved_finite_run():
    """groklab's trainer with the notebook's draws follows the saved run: 64 steps (16 epochs) of
    per-step train losses and the test loss after each epoch, to float32 agreement (the saved
    run is float32 on a GPU). The notebook's loss is 85/84 x the true mean groklab reports."""
    assert FIXTURE["data_config"]["seed"] == 1 and FIXTURE["model_config"]["seed"] == 1
    cfg = apply_overrides(get_preset("induction"), {**NB, "train.steps": 64, "train.eval_every": 4,
                                                    "train.loss_dtype": "float32"})
    t = Trainer([Member(cfg, "unused")], progress=False)
    scale = 85 / 84
    train, test = [], []
    for s in range(64):
        if s % 4 == 0 and s:
            test.append(float(t.evaluate()[0]["test_loss"]) * scale)
        train.append(float(t.train_step(s)[0]) * scale)
    f64 = torch.float64
    torch.testing.assert_close(torch.tensor(train, dtype=f64),
                               torch.tensor(FIXTURE["train_losses"][:64], dtype=f64), rtol=2e-6, atol=0)
    torch.testing.assert_close(torch.tensor(test, dtype=f64),
                               torch.tensor(FIXTURE["test_losses"][:15], dtype=f64), rtol=2e-6, atol=0)


@pytest.mark.parametrize("infinite", [False, True], ids=["finite", "infinite"])
def test_exact_resume(tmp_path, monkeypatch, infinite):
    """Killed at step 23 and resumed from step 20, the run ends bit-equal to an uninterrupted one
    (the numpy stream is replayed; the epoch seeds are recomputed)."""
    cfg = apply_overrides(get_preset("induction"), {
        **NB, "train.steps": 30, "train.eval_every": 5, "train.checkpoint_every": 10,
        "model.d_model": 16, "model.n_heads": 2, "model.d_head": 4, "task.n_train": None if infinite else 40,
        "task.n_test": 16, "train.batch_size": 16}, from_strings=False)
    full, killed = interrupt_and_resume(cfg, tmp_path, 23, monkeypatch)
    assert_same_run(full, killed, [0, 10, 20, 30])


def test_refused_where_it_does_not_apply(tmp_path, capsys):
    """Another task has no task.rng (exit 2, the valid keys listed); a model with MLPs under the
    notebook's draws is refused with the reason."""
    rc = main(["train", "--preset", "digits5", "--task.rng", "notebook", "--out", str(tmp_path / "a"),
               "--no-progress"])
    assert rc == 2 and "task.rng" in capsys.readouterr().err
    cfg = replace(apply_overrides(get_preset("induction"), NB), model=replace(
        get_preset("induction").model, attn_only=False, doubled_residual=False)).resolved()
    with pytest.raises(Exception, match="attention-only"):
        build_model(cfg)
