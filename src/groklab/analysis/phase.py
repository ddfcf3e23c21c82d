"""Phase-change detector: the reverse-S drops of a loss curve.

A phase change (Nanda & Lieberum 2022, "Phase Changes"; Olsson et al. 2022) shows up in a loss
curve as a plateau, a sudden steep fall, then a slower tail: a reverse S. ``find_drops`` finds
every such drop in one curve and ``phase_change`` picks the main one. The rule (also in
``docs/analysis_zoo.md``):

1. **Log-loss with a floor.** ``y = ln(max(loss, floor))`` with ``floor = floor_frac`` (5%) of the
   curve's initial level (the median of its first 2% of points, at least 3; 0.12 for a 10-way
   output). A loss at 5% of where it started counts as learnt: below it, the log of a fresh-batch
   loss is dominated by the noise of a few rare errors (a digit's loss on 64 sums jumps between
   0.005 and 0.08 from batch to batch), which would otherwise make the steepest "descent" a dive
   of noise in the tail; and a solved task's log-loss slides on by decades (max element: 1e-3 ->
   1e-9), which would otherwise read as one drop lasting the whole run.
2. **Smoothing.** A Gaussian of ``sigma = max(1, n / 150)`` points (``smooth``), edges padded
   with the end values: metrics from fresh batches are noisy.
3. **Steepest descent.** ``slope = d y_s / d step`` (``numpy.gradient`` on the true steps). The
   most negative slope not yet claimed by a drop is the next candidate's steepest point.
4. **Its local fall.** From that point, walk left and right over the points whose slope is below
   ``edge_frac`` (5%) of the candidate's peak slope, crossing at most ``patience`` x sigma points
   (2 sigma, at least 2) above it in a row, so that the noise of a fresh-batch curve does not cut
   a drop's slower tail off, and never a point claimed by an earlier drop. The points walked are
   the drop's extent and are claimed; its ends are the first points beyond it and its fall is
   ``y_s[left] - y_s[right]``.
5. **Start and end.** ``start`` is the first step of the extent at which ``y_s`` has covered 10%
   of that fall, ``end`` the first at which it has covered 90%; ``steepest`` is the candidate
   (``start <= steepest <= end`` is enforced for lopsided drops).
6. **Significance.** A drop counts if all three hold:

   a. *a new low*: ``y_s`` at its end is at least ``min_fall`` (ln 2) below every earlier
      smoothed value (the loss halves, and the return after a noise spike does not count);
   b. *not a slow trend*: if its 10-90% width exceeds half the curve's step span
      (``max_width_frac``), its peak slope is at least 1.5 x its mean slope over its extent
      (``min_sharpness``), so a steady decline of log-loss all run is none;
   c. *it starts from a plateau*: over a window as long as its extent just before it, the
      curve's mean slope is at most a third of the drop's mean slope over its extent
      (``max_around``; the window stops at an earlier drop and leaves out the first sigma points,
      which the edge padding flattens). A drop with fewer than 3 points in that window (one at the
      start) must instead slow down after it: the same test on the window just after its extent
      (untested if that is short too). So a piece of a noisy steady decline is none either.

Steps 3-4 repeat until no unclaimed point has a negative slope; then 5-6 judge the extents in
step order (so "an earlier drop" is known when a later one is judged). Several drops can be found
(a digit's unigram fall and then its phase change, a curve that falls twice). ``phase_change``
returns the drop with the largest fall, or None. All returned steps are steps of the input curve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

FLOOR_FRAC = 0.05  # floor of the loss, relative to its initial level
EDGE_FRAC = 0.05  # a drop's extent: slope below this fraction of its peak slope
MIN_FALL = math.log(2.0)  # the loss must at least halve across a drop
PATIENCE = 2.0  # the extent's walk crosses at most this many sigma of points above the threshold
MAX_WIDTH_FRAC = 0.5  # a drop wider than this share of the curve's span (10-90%) ...
MIN_SHARPNESS = 1.5  # ... must have a peak slope of at least this x its mean slope over its extent
MAX_AROUND = 1 / 3  # just before and after a drop, the curve's mean slope is at most this x the drop's
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


def _flat(x: np.ndarray, ys: np.ndarray, accepted: np.ndarray, k: int, d: int, width: float,
          edge: int, limit: float) -> bool | None:
    """Whether the curve falls by at most ``limit`` per step, on average, over the window of
    length ``width`` next to point ``k`` (before it for d = -1, after it for d = 1). The window
    stops at a point of an accepted drop and leaves out the ``edge`` points at either end of the
    curve (the padding flattens them). None when it has fewer than 3 points."""
    n = len(x)
    idx = [k]
    j = k + d
    while edge <= j < n - edge and not accepted[j] and abs(x[j] - x[k]) <= width:
        idx.append(j)
        j += d
    if len(idx) < 3:
        return None
    far = idx[-1]
    fall = (ys[far] - ys[k]) * (1 if d < 0 else -1)  # how much lower the later point is
    return bool(fall / abs(x[far] - x[k]) <= limit)


def find_drops(steps: Sequence, loss: Sequence, *, smooth: float | None = None,
               floor_frac: float = FLOOR_FRAC, edge_frac: float = EDGE_FRAC, min_fall: float = MIN_FALL,
               patience: float = PATIENCE, max_width_frac: float = MAX_WIDTH_FRAC,
               min_sharpness: float = MIN_SHARPNESS, max_around: float = MAX_AROUND) -> list[Drop]:
    """Every significant reverse-S drop of a loss curve, in step order (rule: module docstring).

    Args:
        steps: ascending steps of the curve's points.
        loss: the loss at each step (None or non-finite values are skipped).
        smooth: Gaussian sigma in points; None means ``max(1, n / 150)``.
        floor_frac, edge_frac, min_fall, patience, max_width_frac, min_sharpness, max_around: the
            rule's constants (module docstring).

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
    sigma = max(1.0, n / 150) if smooth is None else smooth
    ys = gaussian_smooth(np.log(np.maximum(v, floor_frac * level)), sigma)
    slope = np.gradient(ys, x)
    gap = max(2, int(math.ceil(patience * sigma)))
    span = x[-1] - x[0]
    claimed = np.zeros(n, dtype=bool)
    accepted = np.zeros(n, dtype=bool)  # points of the drops accepted so far (in step order)
    edge = int(math.ceil(sigma))
    drops: list[Drop] = []
    masked = np.where(slope < 0, slope, np.inf)

    def walk(i: int, d: int, thr: float) -> int:
        """The farthest point in direction d whose slope is below thr, crossing at most ``gap``
        points above it in a row and no claimed point."""
        last = k = i
        while True:
            k += d
            if k < 0 or k >= n or claimed[k] or abs(k - last) > gap:
                return last
            if slope[k] < thr:
                last = k

    extents = []  # (steepest, a, b, lo, hi, peak slope), steepest first
    while True:
        i = int(np.argmin(masked))
        peak = float(masked[i])
        if not math.isfinite(peak):
            break
        a, b = walk(i, -1, edge_frac * peak), walk(i, 1, edge_frac * peak)
        # the extent's ends: one point beyond the steep points, where the fall starts / stops
        lo = a - 1 if a > 0 and not claimed[a - 1] else a
        hi = b + 1 if b < n - 1 and not claimed[b + 1] else b
        claimed[a:b + 1] = True
        masked[a:b + 1] = np.inf
        extents.append((i, a, b, lo, hi, peak))
    for i, a, b, lo, hi, peak in sorted(extents, key=lambda e: e[1]):  # judged in step order
        top, bottom = float(ys[lo]), float(ys[hi])
        fall = top - bottom
        if float(ys[:lo + 1].min()) - bottom < min_fall:  # not a new low by a factor 2
            continue
        seg = ys[lo:hi + 1]
        k0 = lo + int(np.argmax(seg <= top - LO * fall))
        k1 = lo + int(np.argmax(seg <= top - HI * fall))
        sharp = -peak * (x[hi] - x[lo]) / fall
        if x[k1] - x[k0] > max_width_frac * span and sharp < min_sharpness:  # a trend, not a drop
            continue
        w, lim = x[hi] - x[lo], max_around * fall / (x[hi] - x[lo])
        flat = _flat(x, ys, accepted, lo, -1, w, edge, lim)  # a plateau before it
        if flat is None:  # no room before it (a drop at the start): the curve must slow after it
            flat = _flat(x, ys, accepted, hi, 1, w, edge, lim)
        if flat is False:
            continue  # part of a trend
        accepted[a:b + 1] = True
        drops.append(Drop(int(min(x[k0], x[i])), int(x[i]), int(max(x[k1], x[i])), fall,
                          float(math.exp(top)), float(math.exp(bottom))))
    return sorted(drops, key=lambda d: d.steepest)


def phase_change(steps: Sequence, loss: Sequence, **kw) -> Drop | None:
    """The main drop of a loss curve (the one with the largest fall), or None. See ``find_drops``."""
    drops = find_drops(steps, loss, **kw)
    return max(drops, key=lambda d: d.fall) if drops else None
