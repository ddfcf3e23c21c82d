"""Per-slot losses (softmax cross-entropy or StableMax) and the Softmax Collapse measures.

``train.loss`` picks the loss every model family trains on:

- ``cross_entropy``: ``-log_softmax(z)[y]``, the log-softmax taken in ``train.loss_dtype``
  (float64 is Nanda et al.'s ``cross_entropy_high_precision``).
- ``stablemax``: StableMax cross-entropy (Prieto et al. 2025, "Grokking at the Edge of Numerical
  Stability", arXiv 2501.04697): ``s(x) = x + 1`` for ``x >= 0`` and ``1 / (1 - x)`` for
  ``x < 0``; ``p_i = s(z_i) / sum_j s(z_j)``; loss ``-log p_y``. ``z`` is cast to
  ``train.loss_dtype`` first, so ``s``, the sum and the log are all taken in that precision (the
  reference code hard-codes float64; its PR #12 made it configurable, as here).

Softmax Collapse (Prieto et al. 2025): in finite precision, once one logit dominates,
``sum_j exp(z_j - max z)`` rounds to exactly 1, the correct class's probability to exactly 1,
its loss and gradient to exactly 0, and learning on that example stops. ``softmax_collapse`` is
the fraction of slots where that sum is exactly 1 in the given dtype (the reference's
``softmax_collapse`` metric); ``zero_loss_frac`` is the fraction with a loss of exactly 0 (its
``zero_terms``).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

LOSSES = ("cross_entropy", "stablemax")


def stablemax_s(x: Float[Tensor, "..."]) -> Float[Tensor, "..."]:
    """``s(x) = x + 1`` for ``x >= 0``, ``1 / (1 - x)`` for ``x < 0`` (Prieto et al. 2025).

    Positive everywhere and continuous with a continuous first derivative at 0 (both branches
    have value 1 and slope 1 there). The ``x < 0`` branch is evaluated on ``min(x, 0)`` so that
    neither branch divides by zero and autograd sees no ``inf`` in the branch it discards.
    """
    return torch.where(x >= 0, x + 1, 1 / (1 - x.clamp(max=0)))


def stablemax_log_probs(logits: Float[Tensor, "... V"], dtype: torch.dtype) -> Float[Tensor, "... V"]:
    """``log(s(z_i) / sum_j s(z_j))`` with ``z = logits.to(dtype)``; every step in ``dtype``."""
    s = stablemax_s(logits.to(dtype))
    return s.log() - s.sum(-1, keepdim=True).log()


def slot_loss(logits: Float[Tensor, "... V"], labels: Int[Tensor, "..."], dtype: torch.dtype,
              kind: str = "cross_entropy") -> Float[Tensor, "..."]:
    """Negative log-likelihood of every slot under ``kind`` (``LOSSES``), computed in ``dtype``.

    Args:
        logits: ``[..., V]`` logits, any float dtype.
        labels: ``[...]`` class ids in ``0 .. V-1``.
        dtype: precision of the (stable)softmax and its log, e.g. ``torch.float64``.
        kind: ``cross_entropy`` or ``stablemax``.

    Returns:
        ``[...]`` per-slot losses in ``dtype`` (nats).

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind == "cross_entropy":
        logp = logits.to(dtype).log_softmax(-1)
    elif kind == "stablemax":
        logp = stablemax_log_probs(logits, dtype)
    else:
        raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")
    return -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def collapsed(logits: Float[Tensor, "... V"], dtype: torch.dtype) -> Float[Tensor, "..."]:
    """1.0 where ``sum_j exp(z_j - max z)`` is exactly 1 in ``dtype`` (Softmax Collapse), else 0.

    The max term contributes exactly ``exp(0) = 1``, so the sum is 1 exactly when every other
    term is absorbed: it is below half an ulp of 1 (``2**-24`` in float32, ``2**-53`` in float64).
    """
    z = logits.to(dtype)
    total = (z - z.amax(-1, keepdim=True)).exp().sum(-1)
    return (total == 1).to(dtype)


def collapse_stats(logits: Float[Tensor, "E N K V"], nll: Float[Tensor, "E N K"], dtype: torch.dtype
                   ) -> tuple[Float[Tensor, " E"], Float[Tensor, " E"]]:
    """Per-member ``softmax_collapse`` and ``zero_loss_frac``: the share of the ``N * K`` slots
    whose softmax sum is exactly 1 in ``dtype``, and whose loss ``nll`` is exactly 0."""
    return collapsed(logits, dtype).mean((1, 2)), (nll == 0).to(dtype).mean((1, 2))
