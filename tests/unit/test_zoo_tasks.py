"""The phase-change zoo (``../shared/reference/zoo.md``): each task's generator against hand-worked
examples, determinism from the data seed, the loss decomposition, exact resume in infinite and
finite-minibatch mode, and the task-specific config keys."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from groklab.cli import main
from groklab.config import Config, ModelConfig, TrainConfig
from groklab.models.transformer import HookedTransformer
from groklab.tasks import (
    DigitAddition,
    DigitAdditionConfig,
    MaxElement,
    MaxElementConfig,
    RepeatedSubsequence,
    RepeatedSubsequenceConfig,
    build_task,
    generator,
)
from groklab.tasks.base import TRAIN_SET
from groklab.train.loop import Member, Trainer
from resume_helpers import assert_same_run, interrupt_and_resume


def _fake_randint(draws):
    """A ``torch.randint`` that returns ``draws`` in order (for hand-worked examples)."""
    it = iter(draws)

    def randint(low, high, size, generator=None):
        out = torch.as_tensor(next(it), dtype=torch.long)
        assert tuple(out.shape) == tuple(size) and bool((out >= low).all() and (out < high).all())
        return out

    return randint


# --- digit addition ----------------------------------------------------------------------------
def test_digit_addition_hand_worked(monkeypatch):
    """The paper's 13452 + 58321 = 071773, and 99999 + 00001 = 100000 (the carry digit)."""
    task = DigitAddition(DigitAdditionConfig())
    x = [[1, 3, 4, 5, 2], [9, 9, 9, 9, 9], [0, 0, 0, 0, 0]]
    y = [[5, 8, 3, 2, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]]
    monkeypatch.setattr(torch, "randint", _fake_randint([x, y]))
    b = task.sample(3, generator(0, TRAIN_SET))
    monkeypatch.undo()
    assert task.n_ctx == 18 and b.tokens.shape == (3, 18)
    assert task.describe(b.tokens[0]) == "1 3 4 5 2 + 5 8 3 2 1 = 0 7 1 7 7 3"
    assert task.describe(b.tokens[1]) == "9 9 9 9 9 + 0 0 0 0 1 = 1 0 0 0 0 0"
    assert task.describe(b.tokens[2]) == "0 0 0 0 0 + 0 0 0 0 0 = 0 0 0 0 0 0"
    assert b.positions.tolist() == [list(range(11, 17))] * 3  # '=' and the first 5 answer tokens
    assert b.labels.tolist() == [[0, 7, 1, 7, 7, 3], [1, 0, 0, 0, 0, 0], [0] * 6]
    assert task.part_names == ("digit0", "digit1", "digit2", "digit3", "digit4", "digit5")
    assert b.parts.tolist() == [list(range(6))] * 3
    assert b.labels[1, task.part_names.index("digit0")] == 1  # digit0 is the carry


def test_digit_addition_samples_are_sums():
    """Random draws: layout, labels = the next tokens, and the answer is x + y (python ints)."""
    for n_digits in (5, 2):
        task = DigitAddition(DigitAdditionConfig(n_digits=n_digits))
        b = task.sample(500, generator(3, TRAIN_SET))
        n = n_digits
        assert b.tokens.shape == (500, 3 * n + 3) and bool((b.tokens[:, n] == 10).all())
        assert bool((b.tokens[:, 2 * n + 1] == 11).all())
        torch.testing.assert_close(b.labels, b.tokens.gather(1, b.positions + 1))
        carries = 0
        for row in b.tokens.tolist():
            x = int("".join(map(str, row[:n])))
            y = int("".join(map(str, row[n + 1:2 * n + 1])))
            assert "".join(map(str, row[2 * n + 2:])) == f"{x + y:0{n + 1}d}"
            carries += row[2 * n + 2]
        assert 150 < carries < 350  # P(carry) = 0.45 for uniform digits


# --- repeated subsequences ---------------------------------------------------------------------
def test_repeated_subsequence_hand_worked():
    """The notebook's example: first copy at 7..22, second at 38; third at 60 here."""
    task = RepeatedSubsequence(RepeatedSubsequenceConfig())
    task.starts = lambda n, g: torch.tensor([[7, 38, 60]])
    b = task.sample(1, generator(5, TRAIN_SET))
    noise = torch.randint(1, 128, (1, 85), generator=generator(5, TRAIN_SET))[0]  # the same first draw
    tok = b.tokens[0]
    assert tok[0] == 0 and bool((tok[1:] > 0).all())  # BEGIN at 0 only
    first = noise[7:23]
    torch.testing.assert_close(tok[7:23], first)
    torch.testing.assert_close(tok[38:54], first)
    torch.testing.assert_close(tok[60:76], first)
    copied = set(range(38, 54)) | set(range(60, 76))
    for i in range(1, 85):
        if i not in copied:
            assert tok[i] == noise[i], i
    assert b.positions[0].tolist() == list(range(38, 53)) + list(range(60, 75))
    assert b.labels[0].tolist() == first[1:].tolist() * 2  # the 2nd..16th tokens of each copy
    assert b.parts[0].tolist() == [0] * 15 + [1] * 15 and task.part_names == ("copy1", "copy2")


def test_repeated_subsequence_copies_stay_in_their_intervals():
    task = RepeatedSubsequence(RepeatedSubsequenceConfig())
    n = 2000
    s = task.starts(n, generator(0, TRAIN_SET))
    for i in range(3):
        assert set(s[:, i].tolist()) == set(range(1 + 28 * i, 14 + 28 * i))  # every start in 13 choices
        assert bool((s[:, i] + 15 < 1 + 28 * (i + 1)).all())  # the copy ends inside its 28-token interval
    b = task.sample(300, generator(1, TRAIN_SET))
    assert b.positions.shape == (300, 30)
    for tok, pos in zip(b.tokens, b.positions, strict=True):
        s1, s2 = int(pos[0]), int(pos[15])
        assert pos.tolist() == list(range(s1, s1 + 15)) + list(range(s2, s2 + 15))
        assert 29 <= s1 <= 41 and 57 <= s2 <= 69
        copy = tok[s1:s1 + 16]
        torch.testing.assert_close(tok[s2:s2 + 16], copy)
        s0 = [j for j in range(1, 14) if torch.equal(tok[j:j + 16], copy)]
        assert len(s0) == 1  # the first occurrence, in the first interval
        assert tok[0] == 0 and bool((tok[1:] >= 1).all() and (tok < 128).all())
    torch.testing.assert_close(b.labels, b.tokens.gather(1, b.positions + 1))


# --- max element -------------------------------------------------------------------------------
def test_max_element_one_special_token():
    task = MaxElement(MaxElementConfig())
    b = task.sample(1000, generator(2, TRAIN_SET))
    assert task.n_ctx == 42 and b.tokens.shape == (1000, 42)
    assert bool((b.tokens[:, 0] == 0).all() and (b.tokens[:, 41] == 1).all())  # START, END
    body = b.tokens[:, 1:41]
    special = body >= 12
    assert special.sum(1).tolist() == [1] * 1000  # exactly one special token per sequence
    assert bool(((body >= 2) & (body <= 21)).all())
    torch.testing.assert_close(b.labels[:, 0], body[special] - 12)  # label = special - 12
    assert bool((b.positions == 41).all()) and b.positions.shape == (1000, 1)  # the END slot
    torch.testing.assert_close(b.parts, b.labels)
    assert task.part_names == tuple(f"label{i}" for i in range(10))
    assert set(b.labels[:, 0].tolist()) == set(range(10))
    where = special.float().argmax(1)
    assert set(where.tolist()) == set(range(40))  # the special token can sit anywhere


def test_max_element_display_names_follow_the_paper():
    """Paper notation: noise 0..9, special 10..19 (ids shifted by 2)."""
    task = MaxElement(MaxElementConfig(seq_len=3))
    tokens = torch.tensor([0, 2, 16, 11, 1])
    assert task.describe(tokens) == "START 0 14 9 END"
    assert task.out_vocab[16 - 12] == "14"


# --- seeds -------------------------------------------------------------------------------------
SMALL_TASKS = [
    DigitAdditionConfig(n_digits=3, n_train=40, n_test=16),
    RepeatedSubsequenceConfig(seq_len=13, subseq_len=4, num_repeats=2, vocab_size=16, n_train=40, n_test=16),
    MaxElementConfig(rand_size=4, seq_len=6, n_train=40, n_test=16),
]


def _eq(a, b) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("tokens", "positions", "labels", "parts"))


@pytest.mark.parametrize("cfg", SMALL_TASKS, ids=lambda c: c.name)
def test_data_is_a_function_of_the_data_seed(cfg):
    a, b = build_task(cfg).data(8), build_task(cfg).data(8)
    assert _eq(a.train, b.train) and _eq(a.test_batch(10), b.test_batch(10))
    assert _eq(a.train_batch(7), b.train_batch(7))
    other = build_task(replace(cfg, data_seed=1)).data(8)
    assert not torch.equal(other.train.tokens, a.train.tokens)
    assert not torch.equal(a.train.tokens[:16], a.test_batch(0).tokens)  # train and test streams differ
    inf, inf2 = build_task(replace(cfg, n_train=None)).data(8), build_task(replace(cfg, n_train=None)).data(8)
    assert _eq(inf.train_batch(5), inf2.train_batch(5)) and not _eq(inf.train_batch(5), inf.train_batch(6))


@pytest.mark.parametrize("cfg", SMALL_TASKS, ids=lambda c: c.name)
def test_minibatch_epochs_cover_the_training_set(cfg):
    d = build_task(cfg).data(16)  # 40 examples: batches of 16, 16, 8 per epoch
    assert not d.full_batch
    sizes = [len(d.train_batch(s)) for s in range(6)]
    assert sizes == [16, 16, 8, 16, 16, 8]
    for epoch in range(2):
        rows = torch.cat([d.train_batch(3 * epoch + i).tokens for i in range(3)])
        key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
        assert key(rows) == key(d.train.tokens)
    assert not torch.equal(d.train_batch(0).tokens, d.train_batch(3).tokens)  # reshuffled per epoch


def test_generators_touch_no_global_rng():
    def draws():
        return random.random(), np.random.rand(), torch.rand(1).item()

    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = draws()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    for cfg in SMALL_TASKS:
        for c in (cfg, replace(cfg, n_train=None, test_fresh=True)):
            d = build_task(c).data(8)
            d.train_batch(3), d.test_batch(3)
    build_task(RepeatedSubsequenceConfig()).sample(4, generator(0, TRAIN_SET))
    assert draws() == expected


# --- training: the loss decomposition and exact resume ----------------------------------------
def _config(task, **train) -> Config:
    n_layers = 2 if task.name == "repeated_subsequence" else 1
    model = ModelConfig(n_layers=n_layers, d_model=16, n_heads=2, d_head=4, d_mlp=32,
                        attn_only=task.name != "digit_addition")
    kw = dict(steps=30, lr=3e-3, eval_every=5, checkpoint_every=10, warmup_steps=3)
    return Config(task=task, model=model, train=TrainConfig(**{**kw, **train}))


def _weighted(parts: dict[str, float | None], counts: dict[str, int]) -> float:
    total = sum(counts.values())
    return sum(counts[k] * v for k, v in parts.items() if counts[k]) / total


def _counts(batch, names) -> dict[str, int]:
    c = torch.bincount(batch.parts.flatten(), minlength=len(names)).tolist()
    return dict(zip(names, c, strict=True))


@pytest.mark.parametrize("cfg", SMALL_TASKS, ids=lambda c: c.name)
def test_loss_parts_average_to_the_loss(cfg, tmp_path):
    """``_stats``: the parts weighted by their slot counts average to the loss, which is the mean
    NLL of the model's logits over the loss slots."""
    tr = Trainer([Member(_config(cfg), tmp_path / "run")], progress=False)
    batch = tr.train_set
    st = tr._eval_stats(batch)
    counts = _counts(batch, tr.part_names)
    by_part = dict(zip(tr.part_names, st["by_part"][0].tolist(), strict=True))
    assert _weighted(by_part, counts) == pytest.approx(st["loss"][0].item(), rel=1e-12)
    # and by hand, from the model's own forward over every position: the mean NLL over the slots
    model = HookedTransformer(tr.cfg)
    model.load_state_dict({k: v.detach() for k, v in tr.member_state(0).items()})
    with torch.no_grad():
        full = model(batch.tokens[0]).double()  # (N, n_ctx, d_vocab_out)
    logits = full.gather(1, batch.positions[0, :, :, None].expand(-1, -1, full.shape[-1]))
    nll = -torch.log_softmax(logits, -1).gather(-1, batch.labels[0, ..., None]).squeeze(-1)
    batch = batch.index(0)
    assert nll.mean().item() == pytest.approx(st["loss"][0].item(), rel=1e-5)
    for k, name in enumerate(tr.part_names):
        if counts[name]:
            assert nll[batch.parts == k].mean().item() == pytest.approx(by_part[name], rel=1e-5)


def test_metrics_rows_decompose(tmp_path):
    """A tiny max-element run: in each row the parts of the train and test loss, weighted by the
    slot counts of the training set and of that evaluation's fresh test batch, average to the loss."""
    cfg = _config(replace(SMALL_TASKS[2], n_train=12, n_test=10, test_fresh=True), steps=10)
    tr = Trainer([Member(cfg, tmp_path / "run")], progress=False)
    rows = tr.run()[0]
    train_counts = _counts(tr.train_set, tr.part_names)
    assert [r["step"] for r in rows] == [0, 5, 10]
    for r in rows:
        test_counts = _counts(tr.test_batch(r["step"]), tr.part_names)
        assert set(r["train_loss_by_part"]) == set(tr.part_names) == set(r["test_loss_by_part"])
        for split, counts in (("train", train_counts), ("test", test_counts)):
            parts = r[f"{split}_loss_by_part"]
            assert all((v is None) == (counts[k] == 0) for k, v in parts.items())
            assert _weighted(parts, counts) == pytest.approx(r[f"{split}_loss"], rel=1e-12)


@pytest.mark.parametrize("test_fresh", [False, True])
def test_exact_resume_infinite(tmp_path, monkeypatch, test_fresh):
    """Infinite data (a fresh batch per step, fresh or fixed test set): killed at step 23, resumed
    from step 20, the run ends bit-equal to an uninterrupted one."""
    task = replace(SMALL_TASKS[0], n_train=None, test_fresh=test_fresh)
    cfg = _config(task, batch_size=8)
    full, killed = interrupt_and_resume(cfg, tmp_path, 23, monkeypatch)
    assert_same_run(full, killed, [0, 10, 20, 30])


def test_exact_resume_finite_minibatch(tmp_path, monkeypatch):
    """40 fixed sequences in minibatches of 16 (3 steps per epoch, reshuffled each epoch): killed
    mid-epoch at step 25, resumed from step 20 (also mid-epoch), bit-equal at the end."""
    cfg = _config(SMALL_TASKS[1], batch_size=16)
    full, killed = interrupt_and_resume(cfg, tmp_path, 25, monkeypatch)
    assert_same_run(full, killed, [0, 10, 20, 30])


# --- config ------------------------------------------------------------------------------------
TINY = ["--model.d_model", "16", "--model.n_heads", "2", "--model.d_mlp", "32", "--train.steps", "4",
        "--no-progress"]


def test_keys_of_another_task_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--task.name", "digit_addition", "--task.p", "7", *TINY]) == 2
    err = capsys.readouterr().err
    assert "task.p" in err and "digit_addition" in err
    assert "task.n_digits" in err and "task.n_train" in err  # the valid keys of the chosen task
    assert not out.exists()


def test_unknown_task_exits_2(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--task.name", "sorting", *TINY]) == 2
    err = capsys.readouterr().err
    assert "sorting" in err and "digit_addition" in err and "max_element" in err
    assert not out.exists()


def test_zoo_task_trains_from_the_cli(tmp_path):
    out = tmp_path / "run"
    args = ["--task.name", "max_element", "--task.seq_len", "6", "--task.rand_size", "4",
            "--task.n_train", "12", "--model.attn_only", "true", "--train.eval_every", "2"]
    assert main(["train", "--out", str(out), *args, *TINY]) == 0
    from groklab import load_run

    run = load_run(out)
    assert run.config.task.name == "max_element" and run.steps == [0, 4]
    assert set(run.metrics[-1]["train_loss_by_part"]) == {f"label{i}" for i in range(4)}
