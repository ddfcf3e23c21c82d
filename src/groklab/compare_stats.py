"""The statistics of ``groklab compare``: medians of censored values and a distribution-free
confidence interval for the median from order statistics.

A seed that did not reach 99% test accuracy within the budget has a grok step (and a wall time at
it) of +inf: it is *right-censored*, known only to lie beyond the budget. Order statistics handle
that without a model: sort the n values (+inf last); the median is finite exactly when more than
half of them are, and an interval between two order statistics has a coverage that depends only on
n, never on the distribution of the values.

Coverage: for a continuous distribution with median m, the number B of values below m is
Binomial(n, 1/2), and ``x_(j) <= m < x_(k)`` (1-based order statistics) exactly when
``j <= B < k``, so ``P(x_(j) <= m < x_(k)) = sum_{i=j}^{k-1} C(n, i) / 2^n``.
Source: Conover, *Practical Nonparametric Statistics* (3rd ed., 1999), §3.2, the confidence
interval for a quantile; David & Nagaraja, *Order Statistics* (3rd ed., 2003), §7.1.
Derivation and examples in docs/compare.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

LEVEL = 0.95  # the confidence level asked of the interval


def coverage(n: int, j: int, k: int) -> float:
    """``P(j <= B < k)`` for ``B ~ Binomial(n, 1/2)``: the coverage of ``[x_(j), x_(k)]``.

    Args:
        n: number of values (>= 1).
        j, k: 1-based ranks with ``1 <= j <= k <= n``.

    Raises:
        ValueError: ranks out of range.
    """
    if not 1 <= j <= k <= n:
        raise ValueError(f"ranks j={j}, k={k} must satisfy 1 <= j <= k <= n={n}")
    return sum(math.comb(n, i) for i in range(j, k)) / 2**n


def median_ci_ranks(n: int, level: float = LEVEL) -> tuple[int, int, float]:
    """The ranks ``(j, k)`` of the shortest order-statistic interval ``[x_(j), x_(k)]`` whose
    coverage for the median is at least ``level``, and that coverage.

    "Shortest" is in ranks (smallest ``k - j``); among intervals of equal width the most central
    one (the largest coverage, then the smaller ``j``). When no interval reaches ``level`` (n = 5
    gives at most 1 - 2/32 = 0.9375) it is the widest, ``[x_(1), x_(n)]``, with its coverage.

    Examples: n = 5 -> (1, 5, 0.9375); n = 6 -> (1, 6, 0.96875); n = 10 -> (2, 9, 0.978515625).

    Raises:
        ValueError: ``n < 1`` or ``level`` outside (0, 1).
    """
    if n < 1:
        raise ValueError(f"need at least one value for a median interval, got n={n}")
    if not 0 < level < 1:
        raise ValueError(f"level {level} must lie strictly between 0 and 1")
    for width in range(n):  # k - j
        best = max((coverage(n, j, j + width), -j) for j in range(1, n - width + 1))
        if best[0] >= level:
            return -best[1], -best[1] + width, best[0]
    return 1, n, coverage(n, 1, n)


def median(values: Sequence[float]) -> float:
    """The sample median (the mean of the two middle values for even n); +inf values sort last, so
    the result is +inf unless more than half of the values are finite.

    Raises:
        ValueError: no values, or a NaN.
    """
    if not values:
        raise ValueError("median of no values")
    if any(v != v for v in values):
        raise ValueError("median: NaN among the values; a censored value is +inf, not NaN")
    xs = sorted(values)
    n = len(xs)
    lo, hi = xs[(n - 1) // 2], xs[n // 2]
    return lo if lo == hi else (lo + hi) / 2


@dataclass(frozen=True)
class MedianCI:
    """A median with its order-statistic confidence interval.

    Attributes:
        n: number of values (seeds), censored ones included.
        n_finite: values that are not censored (+inf).
        median: the median, or None when at most half of the values are finite.
        lo, hi: ``x_(j)`` and ``x_(k)``; ``hi`` (and ``lo``) may be ``math.inf`` (censored).
        j, k: the 1-based ranks (``median_ci_ranks``).
        coverage: the interval's exact coverage, ``P(j <= B < k)``.
    """

    n: int
    n_finite: int
    median: float | None
    lo: float
    hi: float
    j: int
    k: int
    coverage: float


def median_ci(values: Sequence[float | None], level: float = LEVEL) -> MedianCI:
    """Median and order-statistic CI of ``values``, where None (or +inf) is a censored value.

    Args:
        values: one value a seed (a grok step in steps, or a wall time in seconds); None or +inf
            for a seed that did not get there.
        level: the coverage asked of the interval (default 0.95).

    Raises:
        ValueError: no values, a NaN, or a bad level.
    """
    xs = sorted(math.inf if v is None else float(v) for v in values)
    med = median(xs)
    j, k, cov = median_ci_ranks(len(xs), level)
    n_fin = sum(math.isfinite(x) for x in xs)
    return MedianCI(len(xs), n_fin, med if math.isfinite(med) else None, xs[j - 1], xs[k - 1], j, k, cov)
