"""Progress measures (restricted/excluded loss, logit fit, Gini, phases) against naive oracles."""

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from groklab.analysis import (
    cross_entropy64,
    excluded_logits,
    gini,
    logit_fit,
    phase_boundaries,
    restricted_logits,
    split_scores,
    sum_directions,
    sum_sq_weights,
)
from groklab.analysis.circuit import CosFitter
from groklab.analysis.progress import restricted_scores_fast
from reference import naive_analysis as naive

P, KEY = 7, [1, 3]


@pytest.fixture
def grid():
    """Structured logits on the p=7 grid: two cos(w(a+b-c)) terms plus noise and class offsets."""
    g = torch.Generator().manual_seed(0)
    a = torch.arange(P).repeat_interleave(P)
    b = torch.arange(P).repeat(P)
    c = torch.arange(P)
    w = lambda k: 2 * math.pi * k / P  # noqa: E731
    L = sum(amp * torch.cos(w(k) * (a + b)[:, None] - w(k) * c[None])
            for k, amp in ((1, 3.0), (3, 1.5)))
    L = L + 0.7 * torch.randn(P * P, P, generator=g, dtype=torch.float64) + torch.linspace(0, 1, P)
    labels = (a + b) % P
    is_train = torch.rand(P * P, generator=g) < 0.4
    return L.double(), labels, is_train


def _rows(mask):
    return [i for i, m in enumerate(mask.tolist()) if m]


def test_restricted_loss_matches_naive(grid):
    L, labels, is_train = grid
    U = sum_directions(P, KEY)
    got = split_scores(restricted_logits(L, U), labels, is_train)
    Ln, ln = L.numpy(), labels.numpy()
    for split, rows in (("train", _rows(is_train)), ("test", _rows(~is_train)), ("all", range(P * P))):
        exp = naive.naive_restricted_loss(Ln, ln, KEY, rows)
        assert_close(getattr(got, f"{split}_loss"), exp, atol=1e-10, rtol=1e-10)


def test_fast_restricted_equals_matrix_version(grid):
    L, labels, is_train = grid
    U = sum_directions(P, KEY)
    a = torch.arange(P).repeat_interleave(P)
    b = torch.arange(P).repeat(P)
    x = (a + b) % P
    V = torch.zeros(P, U.shape[1], dtype=torch.float64)
    V[x] = U
    slow = split_scores(restricted_logits(L, U), labels, is_train)
    fast = restricted_scores_fast(U.T @ L, L.mean(0), V, x, labels, is_train)
    assert_close(torch.tensor(list(vars(fast).values())), torch.tensor(list(vars(slow).values())),
                 atol=1e-12, rtol=1e-12)


def test_excluded_loss_matches_naive(grid):
    L, labels, is_train = grid
    U = sum_directions(P, KEY)
    rows = _rows(is_train)
    got = cross_entropy64(excluded_logits(L, U)[is_train], labels[is_train])
    assert_close(got, naive.naive_excluded_loss(L.numpy(), labels.numpy(), KEY, rows),
                 atol=1e-10, rtol=1e-10)
    # per frequency
    U3 = sum_directions(P, [3])
    got3 = cross_entropy64(excluded_logits(L, U3)[is_train], labels[is_train])
    assert_close(got3, naive.naive_excluded_loss(L.numpy(), labels.numpy(), [3], rows),
                 atol=1e-10, rtol=1e-10)


def test_logit_fit_matches_naive_ols(grid):
    L, labels, is_train = grid
    fit = logit_fit(L, KEY)
    alpha, fve, fitted = naive.naive_logit_fit(L.numpy(), KEY)
    # naive regressors are unnormalised cos(w(a+b-c)); ours carry a sqrt(2)/p factor
    assert_close(fit.alpha * math.sqrt(2) / P, torch.from_numpy(alpha), atol=1e-10, rtol=1e-10)
    assert_close(fit.fve, fve, atol=1e-10, rtol=1e-10)
    assert_close(fit.fitted, torch.from_numpy(fitted), atol=1e-10, rtol=1e-10)
    loss = split_scores(fit.fitted, labels, is_train).all_loss
    assert_close(loss, naive.naive_ce(fitted, labels.numpy(), range(P * P)), atol=1e-10, rtol=1e-10)
    # FVE computed from U^T L alone (per checkpoint) equals the one from the fitted matrix
    f = CosFitter(P, KEY)
    assert_close(f.fit(L).fve, fve, atol=1e-10, rtol=1e-10)


def test_logit_fit_recovers_exact_cosines():
    p = 11
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    c = torch.arange(p)
    L = 2.0 * torch.cos(2 * math.pi * 4 * ((a + b)[:, None] - c[None]).double() / p) + 5.0
    fit = logit_fit(L, [2, 4])
    assert_close(fit.alpha * math.sqrt(2) / p, torch.tensor([0.0, 2.0], dtype=torch.float64),
                 atol=1e-12, rtol=0)
    assert_close(fit.fve, 1.0, atol=1e-12, rtol=0)


def test_cos_coeffs_match_unit_cube():
    p = 7
    g = torch.Generator().manual_seed(3)
    L = torch.randn(p * p, p, generator=g, dtype=torch.float64)
    f = CosFitter(p, [2])
    cube = np.array([[math.cos(2 * math.pi * 2 * (a + b - c) / p) for c in range(p)]
                     for a in range(p) for b in range(p)])
    expected = (cube / np.linalg.norm(cube) * L.numpy()).sum()
    assert_close(float(f.cos_coeffs(f.project(L))[0]), float(expected), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("n", [1, 5, 113])
def test_gini_uniform_and_onehot(n):
    assert_close(gini(torch.full((n,), 0.3)), 0.0, atol=1e-12, rtol=0)
    onehot = torch.zeros(n)
    onehot[n // 2] = 2.0
    assert_close(gini(onehot), 1 - 1 / n, atol=1e-12, rtol=0)


def test_gini_matches_pairwise_definition():
    x = torch.rand(40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert_close(gini(x), naive.naive_gini(x.numpy()), atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError):
        gini(torch.tensor([1.0, -1.0]))


def test_sum_sq_weights():
    st = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[3.0]])}
    tot, per = sum_sq_weights(st)
    assert_close(tot, 14.0, atol=0, rtol=0)
    assert per == {"a": 5.0, "b": 9.0}


def _curves():
    """Hand-made grokking curves over steps 0..990: memorise by 100, test-loss peak at 200,
    below ln p at 600, test loss decays log-linearly to 1e-7 at 800 and stays there."""
    steps = list(range(0, 1000, 10))
    ln_p = math.log(113)
    train_acc = [min(1.0, s / 100) for s in steps]
    test_loss, test_acc = [], []
    for s in steps:
        if s <= 200:
            tl = ln_p + 20 * s / 200
        elif s < 600:
            tl = ln_p + 20 - (20 + 0.05) * (s - 200) / 400
        elif s <= 800:
            tl = math.exp(math.log(ln_p - 0.05) + (math.log(1e-7) - math.log(ln_p - 0.05)) * (s - 600) / 200)
        else:
            tl = 1e-7
        test_loss.append(tl)
        test_acc.append(1.0 if s >= 700 else 0.0)
    return steps, train_acc, test_loss, test_acc


def test_phase_boundaries_on_hand_made_curves():
    steps, tra, tl, ta = _curves()
    got = phase_boundaries(steps, tra, tl, ta, 113)
    # cleanup: 90% of the log fall from tl(600) to 1e-7 happens 0.9 * 200 steps after 600
    assert got == {"memorization_end": 200, "circuit_formation_end": 600, "cleanup_end": 780}


def test_phase_boundaries_wait_for_the_weights():
    steps, tra, tl, ta = _curves()
    # log of the weight norm falls at 0.01/step from 600 to 850, at 1e-4/step elsewhere
    logw = [-1e-4 * s - (0.01 - 1e-4) * min(max(s - 600, 0), 250) for s in steps]
    ssw = [1000 * math.exp(v) for v in logw]
    got = phase_boundaries(steps, tra, tl, ta, 113, ssw)
    # window +-2 checkpoints: at 860 the rate is (0.1 + 0.003)/40 > 0.25 * 0.01; at 870 it is 1e-4
    assert got == {"memorization_end": 200, "circuit_formation_end": 600, "cleanup_end": 870}
    got = phase_boundaries(steps[:82], tra[:82], tl[:82], ta[:82], 113, ssw[:82])  # ends at 810
    assert got["cleanup_end"] is None  # weights still falling fast


def test_phase_boundaries_unfinished_run():
    steps, tra, tl, ta = _curves()
    got = phase_boundaries(steps[:50], tra[:50], tl[:50], ta[:50], 113)  # stops at 490
    assert got == {"memorization_end": 200, "circuit_formation_end": None, "cleanup_end": None}
    got = phase_boundaries(steps[:5], tra[:5], tl[:5], ta[:5], 113)  # never memorised
    assert got == dict.fromkeys(("memorization_end", "circuit_formation_end", "cleanup_end"))
