"""Phase-change detector: the reverse-S drops of a loss curve.

A phase change (Nanda & Lieberum 2022, "Phase Changes"; Olsson et al. 2022) shows up in a loss
curve as a plateau, a sudden steep fall, then a slower tail: a reverse S. ``find_drops`` finds
every such drop in one curve and ``phase_change`` picks the main one. The rule (also in
``docs/analysis_zoo.md``):

1. **Log-loss with a floor.** ``y = ln(max(loss, floor))`` with ``floor = floor_frac`` (1%) of the
   curve's initial level (the median of its first 2% of points, at least 3). A loss that has
   reached 1% of where it started counts as learnt: without the floor the endless slide of a
   solved task's log-loss towards 0 (1e-3 -> 1e-9) would read as one very long drop.
2. **Smoothing.** A Gaussian of ``sigma = max(1, n / 150)`` points (``smooth``), edges padded
   with the end values: metrics from fresh batches are noisy.
3. **Steepest descent.** ``slope = d y_s / d step`` (``numpy.gradient`` on the true steps). The
   most negative slope not yet claimed by a drop is the next candidate's steepest point.
4. **Its local fall.** From that point, walk left and right while the slope stays below
   ``edge_frac`` (5%) of the candidate's peak slope (and the points are unclaimed): that run of
   points is the drop's extent; it is claimed. The walk reads the slope of the curve smoothed
   4 times more (``4 sigma``; either slope below the threshold continues it), so the noise of a
   fresh-batch curve does not cut a drop's slower tail off. The extent's ends are the first
   points beyond it; its fall is ``y_s[left] - y_s[right]``.
5. **Start and end.** ``start`` is the first step of the extent at which ``y_s`` has covered 10%
   of that fall, ``end`` the first at which it has covered 90%; ``steepest`` is the candidate.
6. **Significance.** A drop counts if the loss at least halves across it (``fall >= ln 2``,
   ``min_fall``) and it is a drop, not a trend: ``end - start`` is at most half of the curve's
   step span (``max_width_frac``), so a steady decline of log-loss over the whole run is none.

Steps 3-6 repeat until no unclaimed point has a negative slope, so several drops are found
(each digit of a sum, a curve that falls twice). ``phase_change`` returns the drop with the
largest fall, or None. All returned steps are steps of the input curve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

FLOOR_FRAC = 1e-2  # floor of the loss, relative to its initial level
EDGE_FRAC = 0.05  # a drop's extent: slope below this fraction of its peak slope
MIN_FALL = math.log(2.0)  # the loss must at least halve across a drop
EXTENT_SMOOTH = 4.0  # the extent is walked on a curve smoothed this many times more
MAX_WIDTH_FRAC = 0.5  # a drop's 10-90% width is at most this share of the curve's step span
LO, HI = 0.1, 0.9  # start and end: this share of the drop's fall covered


@dataclass(frozen=True)
class Drop:
    """One reverse-S drop of a curve. Steps are those of the input curve.

    Attributes:
        start: first step at which 10% of the drop's (smoothed log-loss) fall is covered.
        steepest: the step of the steepest descent of the smoothed log-loss.
        end: first step at which 90% of the fall is covered.
        fall: the drop's fall in smoothed log-loss (nats of ln(loss); ln 2 = the loss halves).
        top, bottom: smoothed loss (not log) at the two ends of the drop's extent.
    """

    start: int
    steepest: int
    end: int
    fall: float
    top: float
    bottom: float

    def as_json(self) -> dict:
        """``{"start", "steepest", "end"}`` (the schema of ``phase_changes``)."""
        return {"start": self.start, "steepest": self.steepest, "end": self.end}

    def as_dict(self) -> dict:
        return asdict(self)


def gaussian_smooth(y: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing over points (``sigma`` in points), edges padded with the end values."""
    if sigma <= 0 or len(y) < 2:
        return np.asarray(y, dtype=np.float64).copy()
    r = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.concatenate([np.full(r, y[0]), y, np.full(r, y[-1])])
    return np.convolve(pad, k, mode="valid")


def _clean_curve(steps: Sequence, loss: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """The points whose loss is a finite number (negative values clipped to 0, then floored)."""
    x, v = [], []
    for s, val in zip(steps, loss, strict=True):
        if val is None:
            continue
        f = float(val)
        if math.isfinite(f):
            x.append(float(s))
            v.append(max(f, 0.0))
    return np.array(x, dtype=np.float64), np.array(v, dtype=np.float64)


def find_drops(steps: Sequence, loss: Sequence, *, smooth: float | None = None,
               floor_frac: float = FLOOR_FRAC, edge_frac: float = EDGE_FRAC, min_fall: float = MIN_FALL,
               max_width_frac: float = MAX_WIDTH_FRAC) -> list[Drop]:
    """Every significant reverse-S drop of a loss curve, in step order (rule: module docstring).

    Args:
        steps: ascending steps of the curve's points.
        loss: the loss at each step (None or non-finite values are skipped).
        smooth: Gaussian sigma in points; None means ``max(1, n / 150)``.
        floor_frac, edge_frac, min_fall, max_width_frac: the rule's constants (module docstring).

    Returns:
        The drops, sorted by ``steepest``; empty for a curve of fewer than 5 points or without a
        significant drop.
    """
    x, v = _clean_curve(steps, loss)
    n = len(x)
    if n < 5:
        return []
    head = max(3, int(math.ceil(0.02 * n)))
    level = float(np.median(v[:head]))
    if not level > 0:
        return []
    floor = floor_frac * level
    y = np.log(np.maximum(v, floor))
    sigma = max(1.0, n / 150) if smooth is None else smooth
    ys = gaussian_smooth(y, sigma)
    slope = np.gradient(ys, x)
    walk = np.gradient(gaussian_smooth(y, EXTENT_SMOOTH * sigma), x)  # the extent's slope
    span = x[-1] - x[0]
    claimed = np.zeros(n, dtype=bool)
    drops: list[Drop] = []
    masked = np.where(slope < 0, slope, np.inf)
    while True:
        i = int(np.argmin(masked))
        peak = masked[i]
        if not np.isfinite(peak):
            break
        thr = edge_frac * peak
        a = i
        while a > 0 and not claimed[a - 1] and min(walk[a - 1], slope[a - 1]) < thr:
            a -= 1
        b = i
        while b < n - 1 and not claimed[b + 1] and min(walk[b + 1], slope[b + 1]) < thr:
            b += 1
        # the extent's ends: one point beyond the run of steep slopes, where the fall starts/stops
        lo = a - 1 if a > 0 and not claimed[a - 1] else a
        hi = b + 1 if b < n - 1 and not claimed[b + 1] else b
        claimed[a:b + 1] = True
        masked[a:b + 1] = np.inf
        top, bottom = ys[lo], ys[hi]
        fall = float(top - bottom)
        if fall < min_fall:
            continue
        seg = ys[lo:hi + 1]
        k0 = lo + int(np.argmax(seg <= top - LO * fall))
        k1 = lo + int(np.argmax(seg <= top - HI * fall))
        if x[k1] - x[k0] > max_width_frac * span:
            continue
        drops.append(Drop(int(x[k0]), int(x[i]), int(x[k1]), fall, float(math.exp(top)),
                          float(math.exp(bottom))))
    return sorted(drops, key=lambda d: d.steepest)


def phase_change(steps: Sequence, loss: Sequence, **kw) -> Drop | None:
    """The main drop of a loss curve (the one with the largest fall), or None. See ``find_drops``."""
    drops = find_drops(steps, loss, **kw)
    return max(drops, key=lambda d: d.fall) if drops else None
