"""AdamW over an ensemble: every parameter carries a leading member axis ``E``.

Each member has its own learning rate and weight decay, and nothing reduces across members, so
member ``e`` follows exactly the trajectory that ``torch.optim.AdamW`` would give it alone
(Loshchilov & Hutter 2019, Algorithm 2; PyTorch's ``AdamW`` update order, tested against it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class EnsembleAdamW:
    """Decoupled-weight-decay Adam with per-member ``lr`` and ``weight_decay``.

    Args:
        params: name -> ``[E, *shape]`` leaf tensors with ``requires_grad``.
        lr: ``[E]`` peak learning rates.
        weight_decay: ``[E]`` decoupled weight-decay coefficients.
        betas, eps: shared Adam constants.
        l1: PAIR's L1 regularisation instead of decoupled decay: ``g += wd * sign(p)`` before
            the moments (optax ``chain(l1_regularizer(wd), adam(lr))``, ``pair.md`` §1.1); the
            weights are not decayed directly.
        perp: ⊥AdamW (Prieto et al. 2025, arXiv 2501.04697, ⊥Grad): before anything else, each member's
            gradient of each tensor loses its component along the weights and is rescaled to its
            old norm (``orthogonal_gradients``); then the usual AdamW step, with these betas and
            eps (the reference code silently ran AdamW's defaults, ``peers.md`` §1.6).

    The update for step ``t`` (1-based), with ``s`` the schedule factor:
    ``p *= 1 - s*lr*wd; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
    p -= (s*lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)``.
    """

    def __init__(self, params: dict[str, Tensor], lr: Tensor, weight_decay: Tensor,
                 betas: tuple[float, float], eps: float, l1: bool = False, perp: bool = False):
        self.params = params
        self.perp = perp
        self.lr, self.wd = lr, weight_decay
        self.b1, self.b2 = betas
        self.eps = eps
        self.l1 = l1
        self.t = 0
        self.exp_avg = {k: torch.zeros_like(p) for k, p in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(p) for k, p in params.items()}
        # members that share (lr, weight decay) are updated by one call of PyTorch's fused Adam
        # kernel (the one torch.optim.AdamW(fused=True) uses): one pass over memory, ~5x faster
        # than the ~10 foreach passes below at 64 members of pair2023
        groups: dict[tuple[float, float], list[int]] = {}
        for e, key in enumerate(zip(lr.tolist(), weight_decay.tolist(), strict=True)):
            groups.setdefault(key, []).append(e)
        self._groups = groups
        self.fused = hasattr(torch, "_fused_adamw_") and hasattr(torch, "_fused_adam_")

    @torch.no_grad()
    def step(self, schedule: float) -> None:
        """Apply one update with learning rate ``schedule * lr`` per member."""
        self.t += 1
        bc1 = 1 - self.b1 ** self.t
        bc2_sqrt = math.sqrt(1 - self.b2 ** self.t)
        lr = self.lr * schedule
        live = [k for k, p in self.params.items() if p.grad is not None]
        if not live:
            return
        E = self.lr.shape[0]
        # every tensor as [E, numel]: the per-member factors [E, 1] broadcast over all of them,
        # so the whole update is ~10 multi-tensor (foreach) calls
        ps = [self.params[k].detach().view(E, -1) for k in live]
        gs = [self.params[k].grad.view(E, -1) for k in live]
        ms = [self.exp_avg[k].view(E, -1) for k in live]
        vs = [self.exp_avg_sq[k].view(E, -1) for k in live]
        n = len(live)
        if self.perp:
            gs = orthogonal_gradients(ps, gs)
        if self.l1:  # g += wd * sign(p) before Adam; no decoupled decay
            signs = torch._foreach_sign(ps)
            torch._foreach_mul_(signs, [self.wd.view(E, 1)] * n)
            gs = torch._foreach_add(gs, signs)
        if self.fused:
            self._fused_step(live, gs, schedule)
            return
        if not self.l1:
            torch._foreach_mul_(ps, [(1 - lr * self.wd).view(E, 1)] * n)
        torch._foreach_lerp_(ms, gs, 1 - self.b1)
        torch._foreach_mul_(vs, self.b2)
        torch._foreach_addcmul_(vs, gs, gs, value=1 - self.b2)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, self.eps)
        upd = torch._foreach_mul(ms, [(lr / bc1).view(E, 1)] * n)
        torch._foreach_div_(upd, denom)
        torch._foreach_sub_(ps, upd)

    def _fused_step(self, live: list[str], gs: list[Tensor], schedule: float) -> None:
        """The same update through ``torch._fused_adamw_`` (``_fused_adam_`` after the L1 term),
        one call per group of members sharing (lr, weight decay)."""
        step = torch.tensor(float(self.t), device=gs[0].device)
        E = self.lr.shape[0]
        for (lr, wd), members in self._groups.items():
            # one slice per run of consecutive members (the whole [E, ...] tensor when all share
            # lr and wd): the kernel is slow on many small tensors
            runs = _consecutive(members)
            P, G, M, V = [], [], [], []
            for k, g in zip(live, gs, strict=True):
                p, m, v = self.params[k].detach(), self.exp_avg[k], self.exp_avg_sq[k]
                g = g.view(E, *p.shape[1:])
                for lo, hi in runs:
                    P.append(p[lo:hi])
                    G.append(g[lo:hi])
                    M.append(m[lo:hi])
                    V.append(v[lo:hi])
            kernel = torch._fused_adam_ if self.l1 else torch._fused_adamw_
            kernel(P, G, M, V, [], [step] * len(P), lr=lr * schedule, beta1=self.b1, beta2=self.b2,
                   weight_decay=0.0 if self.l1 else wd, eps=self.eps, amsgrad=False, maximize=False)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def state_tensors(self) -> dict[str, Tensor]:
        """Moments as a flat dict (``exp_avg.<name>``, ``exp_avg_sq.<name>``) for saving."""
        out = {f"exp_avg.{k}": t for k, t in self.exp_avg.items()}
        out.update({f"exp_avg_sq.{k}": t for k, t in self.exp_avg_sq.items()})
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor], t: int) -> None:
        for k in self.exp_avg:
            self.exp_avg[k].copy_(tensors[f"exp_avg.{k}"])
            self.exp_avg_sq[k].copy_(tensors[f"exp_avg_sq.{k}"])
        self.t = t


def orthogonal_gradients(ws: list[Tensor], gs: list[Tensor], eps: float = 1e-30) -> list[Tensor]:
    """⊥Grad per member row: ``g_perp = g - (w.g)/(w.w) w``, rescaled to ``||g||``.

    Args:
        ws: ``[E, n]`` weights per tensor (each row one member's flattened tensor).
        gs: ``[E, n]`` gradients of the same shapes.
        eps: added to ``w.w`` and to ``||g_perp||`` (the reference's 1e-30), so a zero weight or
            a gradient parallel to ``w`` gives a finite result.

    Returns:
        New ``[E, n]`` tensors, each row orthogonal to its ``w`` row (up to rounding) with the
        norm of its ``g`` row (Prieto et al. 2025, "Grokking at the Edge of Numerical
        Stability", arXiv 2501.04697, the ⊥Grad section).
    """
    out = []
    for w, g in zip(ws, gs, strict=True):
        proj = (w * g).sum(1, keepdim=True) / ((w * w).sum(1, keepdim=True) + eps)  # (E, 1)
        g_perp = g - proj * w
        scale = g.norm(dim=1, keepdim=True) / (g_perp.norm(dim=1, keepdim=True) + eps)
        out.append(g_perp * scale)
    return out


def _consecutive(members: list[int]) -> list[tuple[int, int]]:
    """``[0, 1, 2, 5, 6]`` -> ``[(0, 3), (5, 7)]``: half-open runs of consecutive indices."""
    runs: list[tuple[int, int]] = []
    for e in members:
        if runs and runs[-1][1] == e:
            runs[-1] = (runs[-1][0], e + 1)
        else:
            runs.append((e, e + 1))
    return runs


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up ``min(step / warmup_steps, 1)`` for 0-based ``step``; step 0 has lr 0
    (the paper's ``LambdaLR(lambda step: min(step/10, 1))``)."""
    return 1.0 if warmup_steps == 0 else min(step / warmup_steps, 1.0)
