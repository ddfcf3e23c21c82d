"""The zoo analyses' pure parts: the phase-change detector on hand-made curves, and the
previous-token / induction / skip-trigram scores on hand-built attention patterns and a hand-set
model whose answer is known."""

import math

import numpy as np
import pytest
import torch

from groklab import Config
from groklab.analysis.phase import find_drops, gaussian_smooth, phase_change
from groklab.analysis.zoo import (
    attn_on_special,
    copy_starts,
    first_crossing,
    induction_scores,
    prev_token_by_position,
    prev_token_scores,
    uniform_pattern,
)
from groklab.config import ModelConfig
from groklab.models.transformer import HookedTransformer
from groklab.tasks import MaxElementConfig, RepeatedSubsequenceConfig, build_task, generator

STEPS = np.arange(0, 6000, 10)


def logistic_log_loss(t0, width, hi, lo, t=STEPS):
    """ln(loss) falling from ln(hi) to ln(lo) as a logistic centred at t0: a reverse S."""
    return math.log(hi) + (math.log(lo) - math.log(hi)) / (1 + np.exp(-(t - t0) / width))


def noisy(log_loss, sd, seed=0):
    return np.exp(log_loss + np.random.default_rng(seed).normal(0, sd, len(log_loss)))


# --- phase-change detector --------------------------------------------------------------------------
@pytest.mark.parametrize("t0,width,sd",
                         [(2000, 50, 0.0), (2000, 50, 0.1), (700, 30, 0.15), (4500, 120, 0.05)])
def test_logistic_drop_is_found_at_its_step(t0, width, sd):
    loss = noisy(logistic_log_loss(t0, width, 2.3, 0.2), sd, seed=t0)  # above the 5% floor
    drops = find_drops(STEPS, loss)
    assert len(drops) == 1
    d = drops[0]
    assert abs(d.steepest - t0) <= max(30, width)
    # 10% / 90% of a logistic's fall: t0 -/+ ln(9) width
    assert abs(d.start - (t0 - math.log(9) * width)) <= 2 * width
    assert abs(d.end - (t0 + math.log(9) * width)) <= 2 * width
    assert d.start < d.steepest < d.end
    assert d.fall == pytest.approx(math.log(2.3 / 0.2), rel=0.1)
    assert phase_change(STEPS, loss) == d
    assert d.as_json() == {"start": d.start, "steepest": d.steepest, "end": d.end}


@pytest.mark.parametrize("sd", [0.0, 0.05, 0.2])
def test_flat_curve_has_no_phase_change(sd):
    loss = noisy(np.full(len(STEPS), math.log(2.3)), sd, seed=1)
    assert find_drops(STEPS, loss) == []
    assert phase_change(STEPS, loss) is None


def test_two_drops_are_found_separately():
    y = logistic_log_loss(1000, 40, 2.3, 0.8) + logistic_log_loss(3500, 80, 1.0, 0.1)
    for sd in (0.0, 0.1):
        drops = find_drops(STEPS, noisy(y, sd, seed=3))
        assert [abs(d.steepest - t) <= 60 for d, t in zip(drops, (1000, 3500), strict=True)] == [True, True]
        assert drops[0].end < drops[1].start
        main = phase_change(STEPS, noisy(y, sd, seed=3))  # the larger fall: ln 10 > ln(2.3/0.8)
        assert abs(main.steepest - 3500) <= 60


def test_small_drop_and_steady_decline_are_not_phase_changes():
    # a 30% dip is below the ln 2 threshold
    assert find_drops(STEPS, np.exp(logistic_log_loss(3000, 50, 2.3, 1.6))) == []
    # exponential decay: log-loss falls linearly over the whole run: a trend, not a drop
    assert find_drops(STEPS, 2.3 * np.exp(-STEPS / 1500)) == []


def test_noise_is_not_a_phase_change():
    # a spike of the loss and its return (a bad fresh test batch) is no drop: not a new low
    loss = np.full(len(STEPS), 2.3)
    loss[300:304] = 12.0
    assert find_drops(STEPS, loss) == []
    # a steady exponential decay with noise: no sharp core
    assert find_drops(STEPS, noisy(np.log(2.3) - STEPS / 1500, 0.1, seed=4)) == []


def test_drop_with_a_slow_tail_and_an_early_fall():
    """As digit curves look: a fall in the first steps (unigram statistics), a plateau, a phase
    change with a long, noisy, slowly flattening tail. Two drops; the tail belongs to the second."""
    tail = -np.maximum(STEPS - 1300, 0) / 1000  # ln-loss keeps falling, slower, after the drop
    y = logistic_log_loss(20, 5, 2.7, 0.7) + logistic_log_loss(1200, 60, 1.0, 0.15) + tail
    drops = find_drops(STEPS, noisy(y, 0.08, seed=5))
    assert len(drops) == 2
    first, second = drops
    assert first.steepest <= 40 and first.start <= first.steepest <= first.end <= 200
    assert abs(second.steepest - 1200) <= 60 and 900 <= second.start <= 1200 and second.end > 1600
    assert second.fall > math.log(1 / 0.15) + 0.5  # the tail's fall is part of the drop
    assert phase_change(STEPS, noisy(y, 0.08, seed=5)) == second


def test_noisy_low_tail_does_not_move_the_steepest_point():
    """A fresh-batch loss near zero is mostly noise in log space (a few rare errors per batch): the
    digit curves of digits5-infinite jump between 0.005 and 0.08. The floor keeps that noise from
    outdoing the real drop."""
    rng = np.random.default_rng(6)
    y = logistic_log_loss(200, 20, 2.3, 0.8) - np.maximum(STEPS - 300, 0) / 300
    sd = np.where(y < np.log(0.2), 1.0, 0.05)
    drops = find_drops(STEPS, np.exp(y + rng.normal(0, 1, len(y)) * sd))
    assert len(drops) == 1 and abs(drops[0].steepest - 200) <= 40


def test_drop_then_endless_slide_is_one_drop():
    """A solved task's loss keeps falling by decades (max element: 1e-3 -> 1e-9); the floor at 5% of
    the initial level keeps that slide from stretching the drop's end to the end of the run."""
    t = np.arange(0, 3000, 5)
    y = logistic_log_loss(150, 15, 2.3, 0.01, t) - np.maximum(t - 300, 0) / 100
    drops = find_drops(t, np.exp(y))
    assert len(drops) == 1 and abs(drops[0].steepest - 150) <= 15 and drops[0].end < 300


def test_detector_skips_missing_points_and_short_curves():
    loss = list(np.exp(logistic_log_loss(2000, 50, 2.3, 0.05)))
    loss[10] = None
    loss[20] = float("nan")
    assert abs(find_drops(STEPS, loss)[0].steepest - 2000) <= 50
    assert find_drops([0, 10, 20], [2.0, 1.0, 0.1]) == []
    assert find_drops(STEPS, [None] * len(STEPS)) == []


def test_gaussian_smooth_keeps_constants_and_sums():
    np.testing.assert_allclose(gaussian_smooth(np.full(50, 3.0), 4), 3.0)
    y = np.zeros(101)
    y[50] = 1.0
    s = gaussian_smooth(y, 3)
    assert s.shape == y.shape and s.argmax() == 50 and s.sum() == pytest.approx(1.0)


# --- previous-token and induction scores -----------------------------------------------------------
def _rep_task(n=8, seed=0):
    cfg = RepeatedSubsequenceConfig(seq_len=40, subseq_len=8, num_repeats=3, vocab_size=50, n_train=None)
    task = build_task(cfg)
    g = generator(seed, 1000)
    batch = task.sample(n, g)
    return cfg, task, batch


def test_copy_starts_match_the_sampled_copies():
    cfg, task, batch = _rep_task(n=32)
    s = copy_starts(batch.tokens, batch.positions, cfg.num_repeats, cfg.subseq_len)
    # the draw inside sample(): noise tokens, then the starts
    g = generator(0, 1000)
    torch.randint(1, cfg.vocab_size, (32, cfg.seq_len), generator=g)
    torch.testing.assert_close(s, task.starts(32, g))
    L = cfg.subseq_len
    for b in range(32):
        for i in range(1, 3):
            assert torch.equal(batch.tokens[b, s[b, 0]:s[b, 0] + L], batch.tokens[b, s[b, i]:s[b, i] + L])


def _hand_patterns(batch, starts, L, n_ctx):
    """Heads: 0 previous token, 1 uniform causal, 2 induction onto the most recent earlier copy,
    3 induction onto copy 0, 4 self."""
    B = len(batch)
    pat = torch.zeros(B, 5, n_ctx, n_ctx, dtype=torch.float64)
    idx = torch.arange(n_ctx)
    pat[:, 0, idx[1:], idx[:-1]] = 1.0
    pat[:, 0, 0, 0] = 1.0
    pat[:, 1] = uniform_pattern(B, n_ctx)[:, 0]
    pat[:, 4, idx, idx] = 1.0
    pat[:, 2:4] = pat[:, 4:5]  # self by default; induction queries overwritten below
    for b in range(B):
        for i in range(1, starts.shape[1]):
            for j in range(L - 1):
                q = int(starts[b, i]) + j
                for h, m in ((2, i - 1), (3, 0)):
                    pat[b, h, q] = 0.0
                    pat[b, h, q, int(starts[b, m]) + j + 1] = 1.0
    return pat


def test_scores_on_hand_built_patterns():
    cfg, task, batch = _rep_task()
    starts = copy_starts(batch.tokens, batch.positions, cfg.num_repeats, cfg.subseq_len)
    pat = _hand_patterns(batch, starts, cfg.subseq_len, cfg.seq_len)
    prev = prev_token_scores(pat)
    ind = induction_scores(pat, starts, cfg.subseq_len)
    n = cfg.seq_len
    uniform_prev = sum(1 / (i + 1) for i in range(1, n)) / (n - 1)
    assert prev[0] == pytest.approx(1.0) and prev[1] == pytest.approx(uniform_prev) and prev[4] == 0.0
    assert ind[2] == pytest.approx(1.0) and ind[3] == pytest.approx(1.0)
    assert ind[0] == 0.0 and ind[4] == 0.0  # a previous-token or a self head is no induction head
    assert 0 < ind[1] < 0.1  # uniform: about (#earlier copies) / (query position + 1)
    by_pos = prev_token_by_position(pat)
    assert by_pos.shape == (5, n - 1) and torch.allclose(by_pos[1], 1 / torch.arange(2, n + 1).double())


def test_prev_token_score_of_a_hand_set_model():
    """Layer 0 head 0 reads one-hot positions: its query at i matches the key of position i - 1."""
    n = 25
    cfg = Config(task=RepeatedSubsequenceConfig(seq_len=n, subseq_len=6, num_repeats=3, vocab_size=16,
                                                n_train=None),
                 model=ModelConfig(n_layers=2, n_heads=2, d_model=32, d_head=n, attn_only=True)).resolved()
    model = HookedTransformer(cfg)
    with torch.no_grad():
        for prm in model.parameters():
            prm.zero_()
        model.pos_embed.W_pos[:, :n] = torch.eye(n)
        model.embed.W_E[:, n:] = torch.randn(16, 32 - n, generator=torch.Generator().manual_seed(0))
        a0 = model.blocks[0].attn
        a0.W_Q[0, :n, :n] = 100.0 * torch.eye(n)  # logit 100 / sqrt(d_head) = 20
        a0.W_K[0, :n - 1, 1:n] = torch.eye(n - 1)  # key of position j -> direction j + 1
    task = build_task(cfg.task)
    batch = task.sample(16, generator(0, 1000))
    _, cache = model.run_with_cache(batch.tokens, names=["blocks.0.attn.hook_pattern"])
    prev = prev_token_scores(cache["blocks.0.attn.hook_pattern"])
    assert prev[0] > 0.99  # the hand-set previous-token head
    assert prev[1] == pytest.approx(sum(1 / (i + 1) for i in range(1, n)) / (n - 1), rel=1e-5)  # uniform


# --- skip trigrams ---------------------------------------------------------------------------------
def test_attn_on_special_per_label():
    cfg = MaxElementConfig(rand_size=4, seq_len=10, n_train=None)
    task = build_task(cfg)
    batch = task.sample(200, generator(0, 1000))
    B, n = batch.tokens.shape
    where = (batch.tokens >= 6).int().argmax(1)
    labels = batch.labels[:, 0]
    pat = torch.zeros(B, 2, n, n)
    pat[torch.arange(B), 0, -1, where] = 1.0  # head 0: END on the special token
    pat[:, 1] = uniform_pattern(B, n)[:, 0].float()  # head 1: uniform
    a = attn_on_special(pat, batch.tokens, labels, cfg.rand_size)
    torch.testing.assert_close(a, torch.full((4,), (1.0 + 1.0 / n) / 2, dtype=torch.float64))
    # a label without examples is NaN
    a = attn_on_special(pat[labels != 2], batch.tokens[labels != 2], labels[labels != 2], cfg.rand_size)
    assert torch.isnan(a[2]) and not torch.isnan(a[[0, 1, 3]]).any()


def test_first_crossing():
    assert first_crossing([0, 10, 20, 30], np.array([0.0, 0.2, 0.6, 0.5]), 0.5) == 20
    assert first_crossing([0, 10], np.array([0.0, 0.2]), 0.5) is None
