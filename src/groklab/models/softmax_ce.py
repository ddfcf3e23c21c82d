"""Cross-entropy and its logit gradient in one pass, for the fused losses (``mlp_fused``,
``multipos``).

``softmax_ce`` picks the form for a loss dtype. ``softmax_ce_exact`` keeps a float64
log-softmax's precision in float32 by a form without cancellation; ``softmax_ce_plain`` is the
plain log-softmax in a chosen dtype (float32 on float32 logits keeps the rounding that
``train.loss_dtype: float32`` asks for, and so the slingshots).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from . import attn_kernel

__all__ = ["softmax_ce", "softmax_ce_exact", "softmax_ce_exact_torch", "softmax_ce_plain"]

USE_KERNEL = True  # False: always the torch form (tests compare the two)


def softmax_ce_exact(lg: Float[Tensor, "c N C"], lab: Int[Tensor, "c N 1"], N: int
                     ) -> tuple[Float[Tensor, "c N"], Float[Tensor, "c N C"]]:
    """Cross-entropy per example and ``d mean-loss / d logits`` without cancellation, in the
    logits' dtype: with ``z = lg - max``, ``e = exp(z)`` and ``R = sum_{j != y} e_j`` (summed
    without the label's term), ``loss = log1p(R)`` when the label is the max (``z_y = 0``), else
    ``log(R + e_y) - z_y``; ``g_j = e_j / (S N)`` for ``j != y`` and ``g_y = -R / (S N)``, with
    ``S = R + e_y``. Every quantity keeps the relative precision of the logits' dtype, which
    the float64 log-softmax of float32 logits buys with two casts and float64 passes: where
    the model is sure (loss ~1e-7), the plain float32 form rounds ``log S`` and ``p_y - 1`` to
    multiples of 2^-23, this one does not (tested against float64).

    float32 logits on the CPU take the compiled kernel's one-pass version
    (``attn_kernel.softmax_ce_rows``: the same form, its scalar steps in float64; 0.73 -> 0.38 ms
    on induction's [3840, 128], 2 threads) where it is built; otherwise ``softmax_ce_exact_torch``."""
    if lg.dtype == torch.float32 and lg.device.type == "cpu" and USE_KERNEL and attn_kernel.available():
        c, n, C = lg.shape
        loss, g = attn_kernel.softmax_ce_rows(lg.reshape(c * n, C), lab.reshape(c * n), N)
        return loss.view(c, n), g.view(c, n, C)
    return softmax_ce_exact_torch(lg, lab, N)


def softmax_ce_exact_torch(lg: Float[Tensor, "c N C"], lab: Int[Tensor, "c N 1"], N: int
                           ) -> tuple[Float[Tensor, "c N"], Float[Tensor, "c N C"]]:
    """``softmax_ce_exact`` by torch ops (any dtype and device)."""
    z = lg - lg.amax(-1, keepdim=True)
    z_y = z.gather(-1, lab)
    e = z.exp_()  # in place: z_y is kept
    e_y = e.gather(-1, lab)
    e.scatter_(-1, lab, 0.0)
    R = e.sum(-1, keepdim=True)
    S = R + e_y
    loss = torch.where(z_y == 0, torch.log1p(R), S.log() - z_y).squeeze(-1)
    inv = S.reciprocal_().div_(N)
    e.mul_(inv).scatter_(-1, lab, -(R * inv))
    return loss, e


def softmax_ce_plain(lg: Float[Tensor, "c N C"], lab: Int[Tensor, "c N 1"], N: int, loss_dtype: torch.dtype
                     ) -> tuple[Float[Tensor, "c N"], Float[Tensor, "c N C"]]:
    """The same as ``softmax_ce_exact`` by the plain log-softmax in ``loss_dtype`` (float32 on
    float32 logits: the rounding that ``train.loss_dtype: float32`` asks for); the gradient comes
    back in the logits' dtype."""
    z = lg.to(loss_dtype, copy=True)
    z.sub_(z.amax(-1, keepdim=True))
    z_y = z.gather(-1, lab)
    prob = z.exp_()  # in place: z is not needed again
    ssum = prob.sum(-1, keepdim=True)
    loss = (ssum.log() - z_y).squeeze(-1)
    prob.mul_(ssum.reciprocal_().div_(N))  # softmax / N
    prob.scatter_add_(-1, lab, torch.full_like(lab, -1.0 / N, dtype=loss_dtype))
    return loss, prob.to(lg.dtype)


def softmax_ce(lg: Float[Tensor, "c N C"], lab: Int[Tensor, "c N 1"], N: int, loss_dtype: torch.dtype
               ) -> tuple[Float[Tensor, "c N"], Float[Tensor, "c N C"]]:
    """Cross-entropy per example and ``d mean-loss / d logits`` for ``train.loss_dtype``: a float64
    loss takes the exact form, as precise as a float64 log-softmax without casting the logits; any
    other keeps the plain log-softmax in that dtype, whose rounding is the point of
    ``train.loss_dtype: float32`` (the slingshots)."""
    if loss_dtype == torch.float64:
        return softmax_ce_exact(lg, lab, N)
    return softmax_ce_plain(lg, lab, N, loss_dtype)
