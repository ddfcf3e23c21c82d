"""Loss spikes ("slingshots") and loss / weight-norm oscillations in a run's logged curves.

Two stated rules on the curves of ``metrics.jsonl``, both in log10 of the loss:

**Spike** (``detect_spikes``). With ``y = log10(max(loss, floor))`` at the logged steps, a spike
starts where a logged loss is at least ``rise`` times (default 100x: two decades) the lowest loss of
the ``window`` logged points before it (the running minimum, the *baseline*). Then

* ``start``: the last logged step before that first point above ``rise`` x baseline;
* ``peak``: the step of the highest loss from there to the end of the spike;
* ``end``: the first later logged step whose loss is back below ``rise`` x baseline (``None``
  while the curve has not come back by its last point);
* ``rise``: peak loss / baseline (a factor, >= ``rise``).

Scanning resumes after ``end``, so spikes never overlap. Losses below ``floor`` (and 0) count as
``floor``: below ~1e-10 a float32 mean loss is at its resolution (a per-example log-softmax in
float32 is 0 or a multiple of ~1.19e-7, so a mean over N examples moves in steps of 1.19e-7 / N),
and a change there is rounding, not a spike. The sources: Nanda et al. 2023 (arXiv 2301.05217;
the code's ``cross_entropy_high_precision`` comment, ``../shared/reference/nanda.md`` §2) trace the
loss spikes of their float32 runs to log-softmax rounding and train in float64 to avoid them;
Thilak et al. 2022, "The Slingshot Mechanism" (arXiv 2206.04817), describe the same cyclic spikes
of the late training loss with Adam. The default 100x and the window are justified in
``docs/analysis.md`` ("Spikes and oscillations") from the float32 / float64 runs measured there.

**Oscillation cycle** (``detect_oscillations``). The turning points of the train log-loss are
found with hysteresis: a trough is confirmed once the loss has risen ``swing`` times (default 2x)
above it, a peak once it has fallen ``swing`` times below it; troughs and peaks alternate. Each
trough -> peak -> trough is a cycle *against the weight norm* when the weight norm fell by at
least ``min_norm_change`` (relative, default 1%) from the first trough to the peak and rose by
at least as much from the peak to the second trough: low loss with high weights, weight decay
shrinks the weights and the loss rises, the gradient grows the weights back and the loss falls.
That is the behaviour of PAIR's remark "AdamW oscillating between low train loss and low weights"
(Pearce et al. 2023, the LessWrong summary; the post itself has no section on it,
``../shared/reference/pair.md`` §1.5).

All functions are pure (lists and numbers in, small dataclasses out); ``run_spikes`` gives the
``analysis.json`` keys for a run's metrics rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

RISE = 100.0  # spike: a loss >= RISE x the running minimum (two decades; docs/analysis.md)
WINDOW = 20  # logged points before a point whose minimum is its baseline
FLOOR = 1e-10  # losses below this count as this (float32 resolution; module docstring)
SWING = 2.0  # oscillation: a turning point is confirmed by a reversal of this factor
MIN_NORM_CHANGE = 0.01  # oscillation: relative weight-norm fall (loss rising) and rise (loss falling)


@dataclass(frozen=True)
class Spike:
    """One loss spike (steps are logged steps of the curve).

    Attributes:
        start: last logged step before the loss first exceeded ``rise`` x baseline.
        peak: step of the highest loss of the spike.
        end: first logged step back below ``rise`` x baseline, or None if the curve ends first.
        rise: peak loss / baseline (a factor).
        baseline: the running-minimum loss the spike rose from (floored at ``floor``).
        peak_loss: the loss at ``peak``.
    """

    start: int
    peak: int
    end: int | None
    rise: float
    baseline: float
    peak_loss: float

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Cycle:
    """One trough -> peak -> trough cycle of the train loss against the weight norm.

    Attributes:
        start, peak, end: steps of the first trough, the peak and the second trough of the loss.
        loss_rise: loss at ``peak`` / loss at ``start`` (a factor >= ``swing``).
        norm_drop: 1 - norm at ``peak`` / norm at ``start`` (relative fall while the loss rose).
        norm_regain: norm at ``end`` / norm at ``peak`` - 1 (relative rise while the loss fell).
    """

    start: int
    peak: int
    end: int
    loss_rise: float
    norm_drop: float
    norm_regain: float

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Oscillations:
    """The cycles of ``detect_oscillations`` and a summary.

    Attributes:
        cycles: the loss cycles against the weight norm, in order.
        n_loss_cycles: every trough -> peak -> trough of the loss, against the norm or not.
        period: median steps from a cycle's start to its end (None without cycles).
        median_loss_rise: median ``loss_rise`` of the cycles (None without cycles).
        median_norm_drop: median ``norm_drop`` of the cycles (None without cycles).
        diff_corr: Pearson correlation of the step-to-step changes of log loss and log norm over
            the whole curve (negative: they move in opposite directions); None if undefined.
    """

    cycles: list[Cycle]
    n_loss_cycles: int
    period: float | None
    median_loss_rise: float | None
    median_norm_drop: float | None
    diff_corr: float | None

    @property
    def n_cycles(self) -> int:
        return len(self.cycles)

    def to_json(self) -> dict:
        return {"n_cycles": self.n_cycles, "n_loss_cycles": self.n_loss_cycles, "period": self.period,
                "median_loss_rise": self.median_loss_rise, "median_norm_drop": self.median_norm_drop,
                "diff_corr": self.diff_corr, "cycles": [c.to_json() for c in self.cycles]}


def _num(v) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"curve value {v!r} is not a number; pass numbers, with None or NaN where "
                         "nothing was logged") from None


def _curves(steps: Sequence, *curves: Sequence, names: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """Steps and curves as arrays, rows with any None/NaN dropped; steps strictly increasing."""
    n = len(steps)
    for name, c in zip(names, curves, strict=True):
        if len(c) != n:
            raise ValueError(f"steps has {n} entries but {name} has {len(c)}; pass one value per "
                             "logged step (None where not logged)")
    s = np.array([_num(v) for v in steps], dtype=np.float64)
    cs = [np.array([_num(v) for v in c], dtype=np.float64) for c in curves]
    if np.isnan(s).any():
        raise ValueError("steps contains None or NaN; every row needs its step")
    keep = np.logical_and.reduce([np.isfinite(c) for c in cs]) if cs else np.ones(n, bool)
    s, cs = s[keep], [c[keep] for c in cs]
    if s.size > 1 and not (np.diff(s) > 0).all():
        raise ValueError("steps must be strictly increasing; sort the rows by step and drop duplicate "
                         "rows (a resumed run's metrics.jsonl is read that way by groklab.runs.read_metrics)")
    return (s, *cs)


def _check_positive(**kw: float) -> None:
    for name, v in kw.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite positive number, got {v!r}")


def _log_loss(loss: np.ndarray, floor: float, name: str) -> np.ndarray:
    if (loss < 0).any():
        raise ValueError(f"{name} has negative values ({float(loss.min()):.3g}); pass a loss (>= 0), "
                         "not a log-loss")
    return np.log10(np.maximum(loss, floor))


def detect_spikes(steps: Sequence[int], loss: Sequence[float | None], rise: float = RISE,
                  window: int = WINDOW, floor: float = FLOOR) -> list[Spike]:
    """The loss spikes of one curve, by the rule of the module docstring.

    Args:
        steps: ``[S]`` logged steps, strictly increasing (after dropping rows without a loss).
        loss: ``[S]`` losses (any units, >= 0); None or NaN where not logged (the row is dropped).
        rise: the factor over the running minimum that makes a spike (> 1; default 100).
        window: how many logged points before a point its baseline is the minimum of (>= 1).
        floor: losses below it count as it (> 0; default 1e-10).

    Returns:
        The spikes in order of step. Fewer than 2 logged points give none.

    Raises:
        ValueError: ``steps`` and ``loss`` of different lengths, a None step, steps not strictly
            increasing, a negative loss or a non-number, ``rise`` <= 1, ``window`` < 1 or not an
            int, ``floor`` <= 0.

    Source: Nanda et al. 2023 (float32 log-softmax spikes); Thilak et al. 2022, "The Slingshot
    Mechanism".
    """
    _check_positive(rise=rise, floor=floor)
    if rise <= 1:
        raise ValueError(f"rise must be > 1 (a factor over the running minimum), got {rise!r}; "
                         "e.g. 100 for two decades")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be an int >= 1 (logged points), got {window!r}")
    s, raw = _curves(steps, loss, names=("loss",))
    y = _log_loss(raw, floor, "loss")
    thr = math.log10(rise)
    out: list[Spike] = []
    i, n = 1, len(y)
    while i < n:
        base = float(y[max(0, i - window):i].min())
        if y[i] < base + thr:
            i += 1
            continue
        j = i
        while j < n and y[j] >= base + thr:
            j += 1
        peak = i + int(np.argmax(y[i:j]))
        out.append(Spike(start=int(s[i - 1]), peak=int(s[peak]), end=int(s[j]) if j < n else None,
                         rise=float(10 ** (y[peak] - base)), baseline=float(10 ** base),
                         peak_loss=float(raw[peak])))
        i = j + 1
    return out


def turning_points(y: np.ndarray, swing_log: float) -> list[tuple[int, str]]:
    """Alternating confirmed troughs and peaks of ``y`` (indices, "trough"/"peak"), with hysteresis
    ``swing_log``: an extreme is confirmed when ``y`` has moved ``swing_log`` the other way. The
    first point is never one (the curve may have been moving before it was logged), and the last
    extreme is unconfirmed until the curve reverses."""
    pts: list[tuple[int, str]] = []
    if y.size == 0:
        return pts
    lo = hi = 0
    direction = None  # "up" after a confirmed trough, "down" after a confirmed peak
    for i in range(1, y.size):
        if direction != "down" and y[i] > y[hi]:
            hi = i
        if direction != "up" and y[i] < y[lo]:
            lo = i
        if direction != "up" and y[i] >= y[lo] + swing_log:
            pts += [(lo, "trough")] if lo > 0 else []
            direction, hi = "up", i
        elif direction != "down" and y[i] <= y[hi] - swing_log:
            pts += [(hi, "peak")] if hi > 0 else []
            direction, lo = "down", i
    return pts


def detect_oscillations(steps: Sequence[int], train_loss: Sequence[float | None],
                        weight_norm: Sequence[float | None], swing: float = SWING,
                        min_norm_change: float = MIN_NORM_CHANGE, floor: float = FLOOR) -> Oscillations:
    """Cycles of the train loss against the weight norm, by the rule of the module docstring.

    Args:
        steps: ``[S]`` logged steps, strictly increasing (after dropping incomplete rows).
        train_loss: ``[S]`` train losses (>= 0); None or NaN where not logged (row dropped).
        weight_norm: ``[S]`` weight norms (> 0; e.g. ``sqrt(sum_sq_weights)``); None or NaN where
            not logged (row dropped).
        swing: the loss factor that confirms a trough or a peak (> 1; default 2).
        min_norm_change: the relative fall and rise of the norm a cycle needs (>= 0; default 0.01).
        floor: losses below it count as it (> 0).

    Returns:
        An ``Oscillations``: the cycles, the number of loss cycles, the median period (steps) and
        swings, and the correlation of the changes of log loss and log norm.

    Raises:
        ValueError: lengths differ, a None step, steps not increasing, a negative loss, a norm
            <= 0, ``swing`` <= 1, ``min_norm_change`` < 0 or ``floor`` <= 0.

    Source: PAIR (Pearce et al. 2023), "AdamW oscillating between low train loss and low weights".
    """
    _check_positive(swing=swing, floor=floor)
    if swing <= 1:
        raise ValueError(f"swing must be > 1 (a loss factor), got {swing!r}; e.g. 2")
    if not (isinstance(min_norm_change, (int, float)) and 0 <= min_norm_change < 1):
        raise ValueError(f"min_norm_change must be in [0, 1) (a relative change), got {min_norm_change!r}")
    s, loss, norm = _curves(steps, train_loss, weight_norm, names=("train_loss", "weight_norm"))
    if (norm <= 0).any():
        raise ValueError("weight_norm must be > 0; pass the norm (e.g. sqrt(sum_sq_weights)), not "
                         "a log or a change")
    y, w = _log_loss(loss, floor, "train_loss"), np.log10(norm)
    pts = turning_points(y, math.log10(swing))
    lo_w, hi_w = math.log10(1 - min_norm_change), math.log10(1 + min_norm_change)
    cycles, n_loss = [], 0
    for (a, ka), (b, kb), (c, kc) in zip(pts, pts[1:], pts[2:], strict=False):
        if (ka, kb, kc) != ("trough", "peak", "trough"):
            continue
        n_loss += 1
        if w[b] - w[a] <= lo_w and w[c] - w[b] >= hi_w:
            cycles.append(Cycle(int(s[a]), int(s[b]), int(s[c]), float(10 ** (y[b] - y[a])),
                                float(1 - 10 ** (w[b] - w[a])), float(10 ** (w[c] - w[b]) - 1)))
    med = lambda v: float(np.median(v)) if v else None  # noqa: E731
    dy, dw = np.diff(y), np.diff(w)
    corr = None
    if dy.size >= 2 and dy.std() > 0 and dw.std() > 0:
        corr = float(np.corrcoef(dy, dw)[0, 1])
    return Oscillations(cycles, n_loss, med([c.end - c.start for c in cycles]),
                        med([c.loss_rise for c in cycles]), med([c.norm_drop for c in cycles]), corr)


SPIKE_RULE = (f"a spike starts where a logged loss is >= {RISE:g}x the minimum of the {WINDOW} logged "
              f"points before it (losses floored at {FLOOR:g}); peak = its highest loss; end = the first "
              "step back below that level (null: not yet); rise = peak / baseline")
OSCILLATION_RULE = (f"train-loss troughs and peaks confirmed by a {SWING:g}x reversal; a trough -> peak -> "
                    f"trough is a cycle when the weight norm sqrt(sum_sq_weights) fell by >= "
                    f"{MIN_NORM_CHANGE:.0%} while the loss rose and rose by >= {MIN_NORM_CHANGE:.0%} "
                    "while it fell")


def _col(rows: Sequence[Mapping], key: str) -> list[float | None]:
    return [r.get(key) for r in rows]


def run_spikes(metrics: Sequence[Mapping]) -> dict:
    """``analysis.json``'s ``spikes``, ``spike_rule``, ``oscillations`` and ``oscillation_rule`` for a
    run's ``metrics.jsonl`` rows, with the default rules. ``spikes`` is ``{"train_loss": [...],
    "test_loss": [...]}`` (each spike ``{start, peak, end, rise, baseline, peak_loss}``; a curve
    never logged gives ``[]``); ``oscillations`` is ``Oscillations.to_json()`` on ``train_loss``
    against ``sqrt(sum_sq_weights)``. A curve the detector rejects gets ``{"error": message}``
    instead, so that the rest of the analysis is still written."""
    rows = sorted(metrics, key=lambda r: r["step"])
    steps = [r["step"] for r in rows]
    spikes: dict = {}
    for key in ("train_loss", "test_loss"):
        try:
            spikes[key] = [sp.to_json() for sp in detect_spikes(steps, _col(rows, key))]
        except ValueError as e:
            spikes[key] = {"error": str(e)}
    ssw = [None if v is None else math.sqrt(max(float(v), 0.0)) or None for v in _col(rows, "sum_sq_weights")]
    try:
        osc = detect_oscillations(steps, _col(rows, "train_loss"), ssw).to_json()
    except ValueError as e:
        osc = {"error": str(e)}
    return {"spikes": spikes, "spike_rule": SPIKE_RULE, "oscillations": osc,
            "oscillation_rule": OSCILLATION_RULE}
