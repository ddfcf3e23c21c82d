"""EnsembleAdamW against torch.optim.AdamW + LambdaLR warm-up (the paper's recipe) as the oracle."""

from __future__ import annotations

import torch

from groklab.train.optim import EnsembleAdamW, warmup_factor


def _problem(seed: int):
    g = torch.Generator().manual_seed(seed)
    w = {"a": torch.randn(5, 3, generator=g), "b": torch.randn(7, generator=g)}
    target = torch.randn(5, 3, generator=g)

    def loss_fn(p):
        return ((p["a"] - target) ** 2).sum() + (p["b"] ** 4).sum() + (p["a"].sum() * p["b"].sum())

    return w, loss_fn


def _torch_run(seed, lr, wd, steps, warmup):
    w, loss_fn = _problem(seed)
    p = {k: v.clone().requires_grad_() for k, v in w.items()}
    opt = torch.optim.AdamW(p.values(), lr=lr, weight_decay=wd, betas=(0.9, 0.98), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s / warmup, 1))
    for _ in range(steps):
        loss_fn(p).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return {k: v.detach() for k, v in p.items()}


def test_one_member_matches_torch_adamw_with_warmup():
    ref = _torch_run(0, lr=1e-2, wd=1.0, steps=30, warmup=10)
    w, loss_fn = _problem(0)
    p = {k: v.clone().unsqueeze(0).requires_grad_() for k, v in w.items()}
    opt = EnsembleAdamW(p, lr=torch.tensor([1e-2]), weight_decay=torch.tensor([1.0]),
                        betas=(0.9, 0.98), eps=1e-8)
    for step in range(30):
        loss_fn({k: v[0] for k, v in p.items()}).backward()
        opt.step(warmup_factor(step, 10))
        opt.zero_grad()
    for k in ref:
        torch.testing.assert_close(p[k][0].detach(), ref[k], rtol=1e-6, atol=1e-7)


def test_members_follow_their_own_lr_and_wd():
    settings = [(1e-2, 1.0, 0), (3e-3, 0.3, 1), (1e-2, 3.0, 2)]
    refs = [_torch_run(s, lr, wd, steps=20, warmup=5) for lr, wd, s in settings]
    problems = [_problem(s) for _, _, s in settings]
    p = {k: torch.stack([w[k] for w, _ in problems]).requires_grad_() for k in problems[0][0]}
    opt = EnsembleAdamW(p, lr=torch.tensor([s[0] for s in settings]),
                        weight_decay=torch.tensor([s[1] for s in settings]), betas=(0.9, 0.98), eps=1e-8)
    for step in range(20):
        sum(fn({k: v[e] for k, v in p.items()}) for e, (_, fn) in enumerate(problems)).backward()
        opt.step(warmup_factor(step, 5))
        opt.zero_grad()
    for e, ref in enumerate(refs):
        for k in ref:
            torch.testing.assert_close(p[k][e].detach(), ref[k], rtol=1e-6, atol=1e-7)


def test_warmup_factor_is_the_papers_lambda():
    assert [warmup_factor(s, 10) for s in (0, 1, 5, 10, 11)] == [0.0, 0.1, 0.5, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
