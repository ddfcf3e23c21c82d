"""``EnsembleAdamW(l1=True)``: PAIR's L1 branch, ``g += wd * sign(p)`` and then plain Adam
(optax ``chain(l1_regularizer(wd), adam(lr))``, ``pair.md`` §1.1), checked against steps worked
out by hand."""

from __future__ import annotations

import math

import torch

from groklab.train.optim import EnsembleAdamW

F64 = torch.float64
B1, B2, EPS = 0.9, 0.98, 1e-8


def _opt(p: torch.Tensor, lr: list[float], wd: list[float]) -> EnsembleAdamW:
    return EnsembleAdamW({"w": p}, lr=torch.tensor(lr, dtype=F64), weight_decay=torch.tensor(wd, dtype=F64),
                         betas=(B1, B2), eps=EPS, l1=True)


def test_first_l1_step_by_hand():
    """p = (0.5, -2, 0), g = (0.1, 0.3, -0.2), lr 0.1, wd 0.01.

    g' = g + wd sign(p) = (0.11, 0.29, -0.2)    (sign(0) = 0: no pull on a zero weight)
    m1 = (1 - b1) g' = (0.011, 0.029, -0.02)
    v1 = (1 - b2) g'^2 = (0.000242, 0.001682, 0.0008)
    m1 / (1 - b1) = g',  sqrt(v1 / (1 - b2)) = |g'|, so the step is lr g' / (|g'| + eps):
    p1 = (0.5 - 0.1 * 0.11 / (0.11 + 1e-8), -2 - 0.1 * 0.29 / (0.29 + 1e-8), 0.1 * 0.2 / (0.2 + 1e-8))
    = (0.40000000909..., -2.09999999655..., 0.09999999500...). No decoupled decay: AdamW's
    would also take lr * wd * p = (5e-4, -2e-3, 0) off, far outside the tolerance.
    """
    p = torch.tensor([[0.5, -2.0, 0.0]], dtype=F64, requires_grad=True)
    opt = _opt(p, [0.1], [0.01])
    p.grad = torch.tensor([[0.1, 0.3, -0.2]], dtype=F64)
    opt.step(1.0)
    torch.testing.assert_close(opt.exp_avg["w"], torch.tensor([[0.011, 0.029, -0.02]], dtype=F64),
                               rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(opt.exp_avg_sq["w"], torch.tensor([[0.000242, 0.001682, 0.0008]], dtype=F64),
                               rtol=1e-12, atol=1e-16)
    expected = torch.tensor([[0.5 - 0.1 * 0.11 / (0.11 + EPS), -2.0 - 0.1 * 0.29 / (0.29 + EPS),
                              0.1 * 0.2 / (0.2 + EPS)]], dtype=F64)
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-14)
    torch.testing.assert_close(p.detach(), torch.tensor([[0.4, -2.1, 0.1]], dtype=F64), rtol=0, atol=1e-7)


def test_l1_pull_alone_and_per_member_wd():
    """Zero gradient: member 0 (wd 0.01) is moved only by wd sign(p), a full lr step towards 0
    (Adam normalises it: m_hat / sqrt(v_hat) = sign(p)); member 1 (wd 0) does not move at all."""
    p = torch.tensor([[0.5, -0.25], [0.5, -0.25]], dtype=F64, requires_grad=True)
    opt = _opt(p, [0.1, 0.1], [0.01, 0.0])
    p.grad = torch.zeros(2, 2, dtype=F64)
    opt.step(1.0)
    step = 0.1 * 0.01 / (0.01 + EPS)
    expected = torch.tensor([[0.5 - step, -0.25 + step], [0.5, -0.25]], dtype=F64)
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-14)


def test_second_l1_step_bias_correction_by_hand():
    """Two steps on one weight, so that the bias corrections no longer cancel.

    p0 = 1, lr 0.01, wd 0.5; g1 = 0.3 -> g1' = 0.8; p1 = 1 - 0.01 * 0.8 / (0.8 + eps).
    g2 = -1.5 -> g2' = -1.0 (p1 > 0); m2 = b1 (1 - b1) 0.8 + (1 - b1)(-1) = 0.072 - 0.1 = -0.028;
    v2 = b2 (1 - b2) 0.64 + (1 - b2) 1 = 0.0125440 + 0.02 = 0.032544;
    p2 = p1 - 0.01 * (m2 / (1 - b1^2)) / (sqrt(v2 / (1 - b2^2)) + eps).
    """
    p = torch.tensor([[1.0]], dtype=F64, requires_grad=True)
    opt = _opt(p, [0.01], [0.5])
    p.grad = torch.tensor([[0.3]], dtype=F64)
    opt.step(1.0)
    p1 = 1.0 - 0.01 * 0.8 / (0.8 + EPS)
    torch.testing.assert_close(p.detach(), torch.tensor([[p1]], dtype=F64), rtol=0, atol=1e-14)
    p.grad = torch.tensor([[-1.5]], dtype=F64)
    opt.step(1.0)
    m2, v2 = -0.028, 0.032544
    torch.testing.assert_close(opt.exp_avg["w"], torch.tensor([[m2]], dtype=F64), rtol=1e-12, atol=0)
    torch.testing.assert_close(opt.exp_avg_sq["w"], torch.tensor([[v2]], dtype=F64), rtol=1e-12, atol=0)
    p2 = p1 - 0.01 * (m2 / (1 - B1 ** 2)) / (math.sqrt(v2 / (1 - B2 ** 2)) + EPS)
    # m_hat = -0.028 / 0.19 = -0.147368..., v_hat = 0.032544 / 0.0396 = 0.821818..., sqrt = 0.906542...
    # so p2 = p1 + 0.01 * 0.147368 / 0.906542 = p1 + 0.0016256...
    torch.testing.assert_close(p.detach(), torch.tensor([[p2]], dtype=F64), rtol=0, atol=1e-14)
    torch.testing.assert_close(p.detach(), torch.tensor([[p1 + 0.0016256]], dtype=F64), rtol=0, atol=1e-7)
