"""Progress measures (Nanda et al. 2023, §5.1): restricted and excluded loss, Gini, weight norm.

All losses are mean cross-entropy computed in float64 (``cross_entropy_high_precision``) over the
p output classes, the '=' class dropped (notebook ``test_logits``). The logits are ``[p*p, p]``
in the task's lexicographic pair order. ``U`` is the matrix of unit cos/sin(w_k(a+b)) directions
from ``fourier.sum_directions``; projecting a logit column on ``U`` keeps exactly the
cos(w_k(a+b)) and sin(w_k(a+b)) components of the 2D DFT over (a, b).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def cross_entropy64(logits: Float[Tensor, "n c"], labels: Int[Tensor, " n"]) -> float:
    """Mean cross-entropy in float64 (nats). Source: progress-measures-paper
    ``cross_entropy_high_precision`` (float64, as its comment intends; see nanda.md §2a)."""
    lp = logits.to(torch.float64).log_softmax(-1)
    return float(-lp.gather(-1, labels[:, None]).mean())


def accuracy(logits: Float[Tensor, "n c"], labels: Int[Tensor, " n"]) -> float:
    """Fraction of rows whose argmax equals the label."""
    return float((logits.argmax(-1) == labels).to(torch.float64).mean())


@dataclass(frozen=True)
class SplitScores:
    """Loss (nats) and accuracy on the train split, the test split and all pairs."""

    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    all_loss: float
    all_acc: float


def split_scores(logits: Float[Tensor, "pairs c"], labels: Int[Tensor, " pairs"],
                 is_train: Bool[Tensor, " pairs"]) -> SplitScores:
    """Float64 CE and accuracy on train / test / all rows with a single log-softmax.

    An empty split gets NaN.
    """
    lp = logits.to(torch.float64).log_softmax(-1)
    nll = -lp.gather(-1, labels[:, None])[:, 0]
    hit = (logits.argmax(-1) == labels).to(torch.float64)
    w_tr = is_train.to(torch.float64)
    n_tr, n = float(w_tr.sum()), labels.numel()
    n_te = n - n_tr
    s_nll, s_hit = float(nll.sum()), float(hit.sum())
    tr_nll, tr_hit = float(nll @ w_tr), float(hit @ w_tr)
    nan = float("nan")
    div = lambda a, b: a / b if b else nan  # noqa: E731
    return SplitScores(div(tr_nll, n_tr), div(tr_hit, n_tr), div(s_nll - tr_nll, n_te),
                       div(s_hit - tr_hit, n_te), s_nll / n, s_hit / n)


def restricted_logits(logits: Float[Tensor, "pairs c"], U: Float[Tensor, "pairs twoK"]
                      ) -> Float[Tensor, "pairs c"]:
    """Keep only the cos/sin(w_k(a+b)) components of each class's logits, plus its mean.

    ``U (U^T L) + mean_pairs(L)``: the notebook's ``trig_logits`` with ``bias_correction=True``
    (the per-class mean is the (Const, Const) component, since the directions have zero mean).

    Args:
        logits: ``[p*p, p]`` float64.
        U: ``[p*p, 2K]`` orthonormal directions for the key frequencies.

    Source: paper §5.1 "restricted loss"; notebook ``trig_loss``; nanda.md §3.5.
    """
    L = logits.to(torch.float64)
    return U @ (U.T @ L) + L.mean(0, keepdim=True)


def restricted_scores_fast(coef: Float[Tensor, "twoK c"], class_mean: Float[Tensor, " c"],
                           V: Float[Tensor, "p twoK"], x: Int[Tensor, " pairs"],
                           labels: Int[Tensor, " pairs"], is_train: Bool[Tensor, " pairs"]
                           ) -> SplitScores:
    """``split_scores(restricted_logits(L, U), ...)`` without the ``[p*p, p]`` matrix.

    The directions ``U`` are functions of ``x = (a + s b) mod p`` only (``U = V[x]``), so the
    restricted logits have just p distinct rows ``V coef + mean``: the log-softmax is taken on
    that ``[p, p]`` table and gathered per pair. Exact, and p times cheaper.

    Args:
        coef: ``U^T L``, ``[2K, p]``. class_mean: ``L.mean(0)``, ``[p]``.
        V: ``[p, 2K]`` the directions as functions of x. x: ``[p*p]`` int, x of each pair.
    """
    R = V.to(torch.float64) @ coef.to(torch.float64) + class_mean.to(torch.float64)  # (p, c)
    lp = R.log_softmax(-1)
    nll = -lp[x, labels]
    hit = (R.argmax(-1)[x] == labels).to(torch.float64)
    w_tr = is_train.to(torch.float64)
    n_tr, n = float(w_tr.sum()), labels.numel()
    s_nll, s_hit = float(nll.sum()), float(hit.sum())
    tr_nll, tr_hit = float(nll @ w_tr), float(hit @ w_tr)
    nan = float("nan")
    div = lambda a, b: a / b if b else nan  # noqa: E731
    return SplitScores(div(tr_nll, n_tr), div(tr_hit, n_tr), div(s_nll - tr_nll, n - n_tr),
                       div(s_hit - tr_hit, n - n_tr), s_nll / n, s_hit / n)


def excluded_logits(logits: Float[Tensor, "pairs c"], U: Float[Tensor, "pairs twoK"]
                    ) -> Float[Tensor, "pairs c"]:
    """Remove the cos/sin(w_k(a+b)) components of each class's logits (no bias correction).

    ``L - U (U^T L)``. Source: paper §5.1 "excluded loss"; notebook
    ``calculate_excluded_loss_2D_full``; nanda.md §3.6.
    """
    L = logits.to(torch.float64)
    return L - U @ (U.T @ L)


def gini(c: Float[Tensor, " n"]) -> float:
    """Gini coefficient (Hurley & Rickard 2009) of a non-negative vector.

    ``G = 1 - 2 sum_i (c_(i) / ||c||_1) (N - i + 1/2) / N`` with c sorted ascending (i from 1).
    Uniform -> 0; one-hot -> 1 - 1/N. A zero vector gets 0.

    Raises:
        ValueError: empty input or negative entries.
    """
    c = c.to(torch.float64).flatten()
    if c.numel() == 0:
        raise ValueError("gini of an empty vector is undefined")
    if bool((c < 0).any()):
        raise ValueError("gini needs non-negative entries (pass norms, not signed coefficients)")
    total = c.sum()
    if float(total) == 0.0:
        return 0.0
    n = c.numel()
    cs = torch.sort(c).values
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(1 - 2 * ((cs / total) * (n - i + 0.5) / n).sum())


def sum_sq_weights(state: dict[str, Tensor]) -> tuple[float, dict[str, float]]:
    """Total and per-parameter sum of squared weights (biases and '=' rows included).

    Parameters are taken in sorted name order (safetensors does not fix the order), so the total
    is reproducible to the last bit.

    Source: notebook ``sum_sq_weights`` (nanda.md §3.10); paper Fig. 7 (bottom right).
    """
    per = {k: float(state[k].to(torch.float64).pow(2).sum()) for k in sorted(state)}
    return float(sum(per.values())), per


def _first(n: int, start: int, pred) -> int | None:
    return next((i for i in range(start, n) if pred(i)), None)


def _decay_rate(steps: list[int], ssw: list[float], w: int) -> list[float]:
    """-d log(ssw)/d step by central differences over +-w checkpoints (clamped at the ends)."""
    n, out = len(steps), []
    for i in range(n):
        lo, hi = max(0, i - w), min(n - 1, i + w)
        dt = steps[hi] - steps[lo]
        out.append((math.log(ssw[lo]) - math.log(ssw[hi])) / dt if dt > 0 else 0.0)
    return out


def phase_boundaries(steps: list[int], train_acc: list[float], test_loss: list[float],
                     test_acc: list[float], p: int, sum_sq_weights: list[float] | None = None
                     ) -> dict[str, int | None]:
    """The ends of memorisation, circuit formation and cleanup (paper §5.2), from the curves.

    Rule (``docs/analysis.md``), over the checkpoints in step order, with ln p the loss of the
    uniform predictor:

    * ``memorization_end``: the checkpoint with the highest test loss among those from the first
      with train accuracy >= 0.99 up to (not including) the first after it with test loss
      <= ln p. Null if train accuracy never reaches 0.99.
    * ``circuit_formation_end``: the first checkpoint after ``memorization_end`` with test loss
      <= ln p: the generalising circuit now beats chance on unseen pairs and the test loss
      falls steeply. Null if that never happens.
    * ``cleanup_end``: the first checkpoint after ``circuit_formation_end`` at which log test loss
      has covered 90% of its fall from the ``circuit_formation_end`` value to the final level
      (median over the last 10% of checkpoints). Null unless the final test
      accuracy is >= 0.99 and the fall spans at least two decades (a run still grokking).
      With ``sum_sq_weights``, cleanup also needs the weights to have stopped falling sharply:
      the end is the first such checkpoint at which the decay rate of the sum of squared
      weights (-d log / d step, central differences over +-max(1, n/50) checkpoints) is at most
      25% of its peak after ``circuit_formation_end``; null while it is still above.

    Calibration: on the TransformerLens demo run's published losses (nanda.md §4.3) the rule puts
    the boundaries at the test-loss peak (~1.4k), just after 13.3k (test loss 4.78 at 13299) and
    near 16.6k (1.1e-6 at 16599 is ~90% of the log fall from 4.7 to 2e-7), against the
    1500 / 13300 / 16600 of its derived scripts.

    Args:
        steps, train_acc, test_loss, test_acc: per checkpoint, ascending steps.
        p: the modulus. sum_sq_weights: per checkpoint, optional (see cleanup).

    Returns:
        ``{"memorization_end", "circuit_formation_end", "cleanup_end"}``: steps or None.
    """
    out: dict[str, int | None] = dict.fromkeys(
        ("memorization_end", "circuit_formation_end", "cleanup_end"))
    n, ln_p = len(steps), math.log(p)
    mem0 = _first(n, 0, lambda i: train_acc[i] >= 0.99)
    if mem0 is None:
        return out
    stop = _first(n, mem0, lambda i: test_loss[i] <= ln_p)
    stop = n if stop is None else stop
    i_mem = mem0 if stop <= mem0 else max(range(mem0, stop), key=lambda i: test_loss[i])
    out["memorization_end"] = steps[i_mem]
    i_circ = _first(n, i_mem + 1, lambda i: test_loss[i] <= ln_p)
    if i_circ is None:
        return out
    out["circuit_formation_end"] = steps[i_circ]
    tail = sorted(test_loss[n - max(1, n // 10):])
    final = tail[len(tail) // 2]
    start = test_loss[i_circ]
    if test_acc[-1] < 0.99 or final <= 0 or math.log10(start / final) < 2:
        return out
    target = math.log(start) - 0.9 * (math.log(start) - math.log(final))
    i_clean = _first(n, i_circ + 1, lambda i: 0 < test_loss[i] and math.log(test_loss[i]) <= target)
    if i_clean is not None and sum_sq_weights is not None:
        rate = _decay_rate(steps, sum_sq_weights, max(1, n // 50))
        peak = max(rate[i_circ:])
        if peak > 0:
            i_clean = _first(n, i_clean, lambda i: rate[i] <= 0.25 * peak)
    out["cleanup_end"] = steps[i_clean] if i_clean is not None else None
    return out
