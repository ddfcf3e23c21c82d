"""Grokfast gradient filters over an ensemble (Lee et al. 2024, arXiv 2405.20233, Alg. 1-2).

Both filters amplify the slow part of the gradient: after ``backward`` and before the optimizer
step, every parameter's gradient ``g`` becomes ``g + lamb * h``, where ``h`` is a low-pass
filtered gradient:

- ``ema`` (Grokfast, Alg. 2): ``h <- alpha * h + (1 - alpha) * g``, with ``h`` starting at the
  first gradient and no bias correction (so the first filtered gradient is ``(1 + lamb) g``).
- ``ma`` (Grokfast-MA, Alg. 1): ``h`` is the mean of the last ``window`` gradients, the current
  one included. With ``warmup`` the gradient is left unchanged until ``window`` gradients have
  been seen (the reference's ``warmup=True``); without it, ``h`` is the mean of those seen so far.

Every tensor carries the leading member axis ``E`` and nothing reduces over it, so each member of
an ensemble has its own filter. The state (``h``; or the ring buffer of past gradients, their
running sum and the count) is saved with the AdamW moments, so a resumed run continues exactly.

Defaults (``train.grad_filter_*``): the reference repository disagrees with itself. ``grokfast.py``
uses alpha 0.98, lamb 2 (EMA) and window 100, lamb 5 (MA); README.md's snippet uses alpha 0.99,
lamb 5 and window 128; ``main.py`` defaults to alpha 0.99, lamb 5, window 100. We take
``grokfast.py``'s values: they are the ones in the commands behind the README's headline table
(``--filter ema --alpha 0.98 --lamb 2.0`` and ``--filter ma --window_size 100 --lamb 5.0``), and
its FAQ's rule (alpha^N ~ 0.1 for a speed-up of N ~ 100) gives alpha ~ 0.98 too.
"""

from __future__ import annotations

import torch
from torch import Tensor

FILTERS = ("none", "ema", "ma")
DEFAULT_LAMB = {"ema": 2.0, "ma": 5.0}


class EnsembleGradFilter:
    """Grokfast EMA or MA filter applied in place to ``p.grad`` of ``[E, *shape]`` parameters.

    Args:
        params: name -> ``[E, *shape]`` leaf tensors (the optimizer's).
        kind: ``ema`` or ``ma``.
        alpha: EMA momentum in [0, 1).
        lamb: amplification ``lamb`` of the filtered gradient (None: 2 for ema, 5 for ma).
        window: MA window in gradients (>= 1).
        warmup: MA only: leave the gradient unchanged until ``window`` gradients are seen.

    Raises:
        ValueError: an unknown ``kind``.
    """

    def __init__(self, params: dict[str, Tensor], kind: str, alpha: float = 0.98,
                 lamb: float | None = None, window: int = 100, warmup: bool = True):
        if kind not in ("ema", "ma"):
            raise ValueError(f"grad filter {kind!r} is not one of ema, ma")
        self.params, self.kind = params, kind
        self.alpha, self.window, self.warmup = alpha, window, warmup
        self.lamb = DEFAULT_LAMB[kind] if lamb is None else lamb
        self.count = 0  # gradients seen
        if kind == "ema":
            self.h = {k: torch.zeros_like(p) for k, p in params.items()}
        else:
            self.buf = {k: torch.zeros(window, *p.shape, dtype=p.dtype, device=p.device)
                        for k, p in params.items()}
            self.sum = {k: torch.zeros_like(p) for k, p in params.items()}

    @torch.no_grad()
    def apply(self) -> None:
        """Filter every ``p.grad`` in place: ``g <- g + lamb * h`` (see the module docstring)."""
        live = [k for k, p in self.params.items() if p.grad is not None]
        if not live:
            return
        gs = [self.params[k].grad for k in live]
        first = self.count == 0
        self.count += 1
        if self.kind == "ema":
            hs = [self.h[k] for k in live]
            if first:  # h starts at the first gradient
                torch._foreach_copy_(hs, gs)
            else:
                torch._foreach_lerp_(hs, gs, 1 - self.alpha)  # h = alpha h + (1 - alpha) g
            torch._foreach_add_(gs, hs, alpha=self.lamb)
            return
        slot = (self.count - 1) % self.window
        for k, g in zip(live, gs, strict=True):
            old = self.buf[k][slot]
            if self.count > self.window:
                self.sum[k].sub_(old)
            self.sum[k].add_(g)
            old.copy_(g)
            if slot == self.window - 1:  # the ring is full again: refresh the sum from it exactly
                torch.sum(self.buf[k], 0, out=self.sum[k])
        n = min(self.count, self.window)
        if self.warmup and n < self.window:
            return
        torch._foreach_add_(gs, [self.sum[k] for k in live], alpha=self.lamb / n)

    def state_tensors(self) -> dict[str, Tensor]:
        """The filter state as flat ``grad_filter.*`` tensors for the optimizer checkpoint."""
        out = {"grad_filter.count": torch.tensor([self.count], dtype=torch.int64)}
        if self.kind == "ema":
            out.update({f"grad_filter.h.{k}": t for k, t in self.h.items()})
        else:
            out.update({f"grad_filter.buf.{k}": t for k, t in self.buf.items()})
            out.update({f"grad_filter.sum.{k}": t for k, t in self.sum.items()})
        return out

    def member_state(self, e: int) -> dict[str, Tensor]:
        """Member ``e``'s slice of ``state_tensors`` (the count is shared)."""
        out = {}
        for k, t in self.state_tensors().items():
            if k == "grad_filter.count":
                out[k] = t
            elif k.startswith("grad_filter.buf."):
                out[k] = t[:, e]
            else:
                out[k] = t[e]
        return out

    def load_member_state(self, e: int, tensors: dict[str, Tensor]) -> None:
        """Restore member ``e`` from ``member_state`` output. Raises KeyError if a tensor is
        missing (a checkpoint written without this filter)."""
        self.count = int(tensors["grad_filter.count"].item())
        if self.kind == "ema":
            for k in self.h:
                self.h[k][e].copy_(tensors[f"grad_filter.h.{k}"])
            return
        for k in self.buf:
            self.buf[k][:, e].copy_(tensors[f"grad_filter.buf.{k}"])
            self.sum[k][e].copy_(tensors[f"grad_filter.sum.{k}"])
