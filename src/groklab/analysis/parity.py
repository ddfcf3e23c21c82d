"""Sparse parity in PAIR's one-layer MLP: parity and distractor weights, and when the distractors
are pruned.

Pure functions on ``mlp.W_in`` ``[n_bits + 1, H]`` (rows 0 .. k-1 read the parity bits, rows
k .. n_bits-1 the distractors, row n_bits the constant-1 bias feature; ``models/mlp.py``). The
run-level driver is ``analysis.mlp_run``; the rules are documented in ``docs/analysis_mlp.md``.
Source: PAIR, "Generalizing With 1s and 0s" (``../shared/reference/pair.md`` §1.3, §2.4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

LIVE_THRESHOLD = 0.05  # a distractor weight with |w| > this is live (not yet pruned); docs/analysis_mlp.md
LIVE_REL_FRAC = 0.1  # relative rule: live if |w| > this x max |parity-bit weight| at that checkpoint
ACC_LEVEL = 0.9  # acc_jump_step: first logged step with test accuracy >= this


def parity_weights(W_in: Float[Tensor, "n_bits_1 H"], k: int) -> dict[str, Tensor]:
    """Split a sparse-parity ``W_in`` [n_bits + 1, H] (parity bits first, bias row last).

    Returns:
        ``{"parity": [k, H], "distractor": [n_bits - k, H], "bias": [H]}``.

    Raises:
        ValueError: ``k`` not in ``1..n_bits``.

    Source: PAIR "Generalizing With 1s and 0s": the first three of 30 digits decide the label, the
    last W_input row is the fixed 1 (pair.md §1.3, §2.4).
    """
    n_bits = W_in.shape[0] - 1
    if not 1 <= k <= n_bits:
        raise ValueError(f"k={k} parity bits do not fit W_in with {n_bits} bit rows (+ the bias row)")
    return {"parity": W_in[:k], "distractor": W_in[k:n_bits], "bias": W_in[n_bits]}


def live_distractors(W_in: Float[Tensor, "n_bits_1 H"], k: int, threshold: float = LIVE_THRESHOLD) -> int:
    """How many distractor weights have ``|w| > threshold`` (not yet pruned by weight decay)."""
    return int((parity_weights(W_in, k)["distractor"].abs() > threshold).sum())


def live_distractors_rel(W_in: Float[Tensor, "n_bits_1 H"], k: int, frac: float = LIVE_REL_FRAC) -> int:
    """How many distractor weights have ``|w| > frac * max |parity-bit weight|`` (same ``W_in``).

    A scale-free version of ``live_distractors``: an absolute threshold means something else in
    a model whose weights are 10 times larger. With all parity weights 0 every non-zero
    distractor weight counts.
    """
    parts = parity_weights(W_in, k)
    cut = frac * float(parts["parity"].abs().max())
    return int((parts["distractor"].abs() > cut).sum())


def parity_norms(W_in: Float[Tensor, "n_bits_1 H"], k: int) -> dict[str, float]:
    """Frobenius (L2) norms of the parity rows, the distractor rows and the bias row of ``W_in``,
    and the largest ``|w|`` of the parity and distractor rows."""
    parts = {n: t.to(torch.float64) for n, t in parity_weights(W_in, k).items()}
    out = {f"{n}_weight_norm": float(t.norm()) for n, t in parts.items()}
    d = parts["distractor"]
    out["parity_weight_max"] = float(parts["parity"].abs().max())
    out["distractor_weight_max"] = float(d.abs().max()) if d.numel() else 0.0  # k == n_bits: none
    return out


@dataclass(frozen=True)
class PruningSteps:
    """``prune_step``: first step from which live distractors stay <= ``max_live``;
    ``acc_step``: first step with test accuracy >= ``acc_level``. ``None`` if never."""

    prune_step: int | None
    acc_step: int | None


def pruning_step(steps: Sequence[int], live_counts: Sequence[int], test_acc_steps: Sequence[int],
                 test_acc: Sequence[float], acc_level: float = ACC_LEVEL, max_live: int = 0) -> PruningSteps:
    """When the last distractor weights are pruned, and when test accuracy takes off.

    PAIR: "the rapid generalization occurs when the last weights connected to the distracting
    digits are pruned by weight decay" (pair.md §1.3). ``prune_step`` is the first checkpoint step
    after which the live count (``live_distractors`` per checkpoint) **stays** <= ``max_live`` to
    the end; the default 0 means fully pruned (the ``threshold`` given to ``live_distractors`` is
    where "small" is decided). ``None`` if the last count is above ``max_live``.

    Args:
        steps, live_counts: per checkpoint, same length. test_acc_steps, test_acc: the metrics.

    Raises:
        ValueError: mismatched lengths.
    """
    if len(steps) != len(live_counts) or len(test_acc_steps) != len(test_acc):
        raise ValueError("steps/live_counts and test_acc_steps/test_acc must pair up (same lengths)")
    prune = None
    for s, c in zip(reversed(steps), reversed(live_counts), strict=True):
        if c > max_live:
            break
        prune = int(s)
    acc = next((int(s) for s, a in zip(test_acc_steps, test_acc, strict=True) if a >= acc_level), None)
    return PruningSteps(prune, acc)
