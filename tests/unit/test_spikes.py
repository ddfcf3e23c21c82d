"""The spike and oscillation rules (analysis/spikes.py) on hand-built curves whose answers are known
by construction: a smooth decay has no spike; a decay with spikes injected at known steps gives
exactly those, with their peaks, starts, ends and rises; a limit cycle of loss against weight norm
gives its cycles, and the same curves in phase give none."""

import math

import numpy as np
import pytest

from groklab.analysis.spikes import (
    FLOOR,
    OSCILLATION_RULE,
    SPIKE_RULE,
    detect_oscillations,
    detect_spikes,
    run_spikes,
    turning_points,
)

STEPS = list(range(0, 3000, 10))  # 300 logged points, eval_every 10


def _decay(lo=1e-7):
    """Smooth exponential decay from 4 to ``lo``: its log falls linearly."""
    return np.geomspace(4.0, lo, len(STEPS))


def _with_spikes(y, at, height):
    """``y`` with a triangular spike (in log10) peaking ``height`` decades above it at index ``at``:
    up over 2 points, down over 6."""
    y = np.log10(y).copy()
    for i, h in zip(at, height, strict=True):
        for k, f in ((-2, 0.3), (-1, 0.7), (0, 1.0), (1, 0.8), (2, 0.6), (3, 0.4), (4, 0.25), (5, 0.1)):
            y[i + k] += f * h
    return 10 ** y


def test_smooth_decay_has_no_spike():
    assert detect_spikes(STEPS, _decay()) == []
    # and a noisy one (noise 0.2 decade, well under the one-decade rule)
    rng = np.random.default_rng(0)
    noisy = _decay() * 10 ** rng.uniform(-0.2, 0.2, len(STEPS))
    assert detect_spikes(STEPS, noisy) == []


def test_two_injected_spikes_are_found_with_their_steps():
    """Worked by hand, default rule (100x = 2 decades). The decay falls d = log10(4e7)/299 = 0.0254
    decades a point, so index at+k of a spike of height h sits f_k h - (k + 3) d decades above the
    baseline y[at-3] (the running minimum: the last point before the spike). h = 4: at-1 is 2.75 up
    (the first >= 2: start = at-2), at+3 is 1.45 up (< 2: end). h = 2.5: at-1 is 1.70 up, at 2.42
    (start = at-1), at+1 is 1.90 (end)."""
    y = _with_spikes(_decay(), at=[100, 220], height=[4.0, 2.5])
    sp = detect_spikes(STEPS, y)
    d = math.log10(4.0 / 1e-7) / (len(STEPS) - 1)
    assert [(s.start, s.peak, s.end) for s in sp] == [(980, 1000, 1030), (2190, 2200, 2210)]
    for s, at, h in ((sp[0], 100, 4.0), (sp[1], 220, 2.5)):
        np.testing.assert_allclose(math.log10(s.rise), h - 3 * d, rtol=0, atol=1e-9)
        np.testing.assert_allclose(s.baseline, y[at - 3], rtol=1e-12)
        np.testing.assert_allclose(s.peak_loss, y[at], rtol=1e-12)
    # a 1.5-decade bump is under the default rule, over a 10x one
    y = _with_spikes(_decay(), at=[150], height=[1.5])
    assert detect_spikes(STEPS, y) == []
    assert [s.peak for s in detect_spikes(STEPS, y, rise=10.0)] == [1500]


def test_rise_threshold_is_two_sided():
    """A spike of exactly 1.5 decades over the baseline is found at rise = 10**1.4 and not at
    10**1.6."""
    y = np.full(50, 1e-6)
    y[20] = 1e-6 * 10 ** 1.5
    steps = list(range(50))
    assert [s.peak for s in detect_spikes(steps, y, rise=10 ** 1.4)] == [20]
    assert detect_spikes(steps, y, rise=10 ** 1.6) == []
    (s,) = detect_spikes(steps, y, rise=10 ** 1.4)
    assert (s.start, s.peak, s.end) == (19, 20, 21)
    np.testing.assert_allclose(s.rise, 10 ** 1.5, rtol=1e-12)


def test_window_limits_the_baseline():
    """A slow 100x rise over 100 points is a 10x spike with an unlimited window, none with window 5."""
    y = np.geomspace(1e-6, 1e-4, 100)
    steps = list(range(100))
    assert detect_spikes(steps, y, rise=10.0, window=5) == []
    (s,) = detect_spikes(steps, y, rise=10.0, window=1000)
    assert s.end is None  # never comes back
    assert s.start == next(i for i in steps if y[i] >= 10 * y[0]) - 1


def test_floor_hides_rounding_level_changes():
    """0 -> 1e-11 -> 0 (below float32 resolution) is no spike; 0 -> 1e-3 is one, with the floor as
    its baseline."""
    y = np.zeros(30)
    y[10] = 1e-11
    assert detect_spikes(list(range(30)), y) == []
    y[20] = 1e-3
    (s,) = detect_spikes(list(range(30)), y)
    assert s.peak == 20 and s.baseline == FLOOR
    np.testing.assert_allclose(s.rise, 1e-3 / FLOOR, rtol=1e-12)


def test_none_and_nan_rows_are_dropped():
    y = list(_with_spikes(_decay(), at=[100], height=[3.0]))
    steps = list(STEPS)
    y[50], y[101] = None, float("nan")  # 101: inside the spike
    (s,) = detect_spikes(steps, y)
    assert s.peak == STEPS[100]


@pytest.mark.parametrize("n", [0, 1])
def test_too_short_curves_have_no_spikes(n):
    assert detect_spikes(list(range(n)), [1.0] * n) == []
    osc = detect_oscillations(list(range(n)), [1.0] * n, [1.0] * n)
    assert osc.n_cycles == 0 and osc.n_loss_cycles == 0 and osc.period is None and osc.diff_corr is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=[0, 1], loss=[1.0]), "one value per logged step"),
    (dict(steps=[0, None], loss=[1.0, 1.0]), "needs its step"),
    (dict(steps=[0, 0], loss=[1.0, 1.0]), "strictly increasing"),
    (dict(steps=[0, 1], loss=[1.0, -2.0]), "not a log-loss"),
    (dict(steps=[0, 1], loss=[1.0, "x"]), "not a number"),
    (dict(steps=[0, 1], loss=[1.0, 1.0], rise=1.0), "rise must be > 1"),
    (dict(steps=[0, 1], loss=[1.0, 1.0], rise=float("nan")), "finite positive"),
    (dict(steps=[0, 1], loss=[1.0, 1.0], window=0), "window must be an int"),
    (dict(steps=[0, 1], loss=[1.0, 1.0], window=2.5), "window must be an int"),
    (dict(steps=[0, 1], loss=[1.0, 1.0], floor=0.0), "floor must be"),
])
def test_spike_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        detect_spikes(**kwargs)


# --- oscillations --------------------------------------------------------------------------------
def _limit_cycle(n_cycles=5, per=60, lag=0.5):
    """log10 loss = -6 + 1.5 sin(t) and log10 norm = 1 - 0.05 sin(t - lag) (anti-phase up to a lag):
    the loss troughs are at t = -pi/2 + 2 pi k, the peaks at pi/2 + 2 pi k. t starts at 0 (mid-rise)
    and runs 5.5 periods: troughs at t = 3 pi/2, ..., 19 pi/2 (5 of them), so 4 full cycles."""
    t = np.arange(n_cycles * per + per // 2) * (2 * np.pi / per)
    steps = (np.arange(t.size) * 10).tolist()
    return steps, t, 10 ** (-6 + 1.5 * np.sin(t)), 10 ** (1 - 0.05 * np.sin(t - lag))


def test_limit_cycle_gives_its_cycles():
    steps, t, loss, norm = _limit_cycle()
    osc = detect_oscillations(steps, loss, norm)
    troughs = [steps[i] for i in range(1, t.size - 1) if loss[i] < loss[i - 1] and loss[i] <= loss[i + 1]]
    peaks = [steps[i] for i in range(1, t.size - 1) if loss[i] > loss[i - 1] and loss[i] >= loss[i + 1]]
    # every trough -> peak -> trough of the construction, with the construction's extremes
    assert [(c.start, c.peak, c.end) for c in osc.cycles] == [
        (a, p, b) for a, b in zip(troughs, troughs[1:], strict=False) for p in peaks if a < p < b]
    assert osc.n_cycles == len(troughs) - 1 == osc.n_loss_cycles == 4
    assert osc.period == 600  # 60 points of 10 steps
    np.testing.assert_allclose(osc.median_loss_rise, 10 ** 3.0, rtol=1e-2)  # 3 decades, sampled
    # norm: 1 - 0.05 sin(t - lag) between t = -pi/2 and pi/2 falls by 0.05 * 2 sin(pi/2) cos(lag) decades
    drop = 1 - 10 ** (-0.05 * 2 * math.cos(0.5))
    np.testing.assert_allclose(osc.median_norm_drop, drop, rtol=2e-2)
    assert -1.0 <= osc.diff_corr < -0.8


def test_in_phase_curves_are_not_oscillations_against_the_norm():
    steps, t, loss, _ = _limit_cycle()
    norm_in_phase = 10 ** (1 + 0.05 * np.sin(t))
    osc = detect_oscillations(steps, loss, norm_in_phase)
    assert osc.n_cycles == 0 and osc.n_loss_cycles == 4
    assert 0.99 <= osc.diff_corr <= 1.0


def test_min_norm_change_is_two_sided():
    steps, t, loss, _ = _limit_cycle()
    norm = 10 ** (1 - 0.02 * np.sin(t))  # falls and rises by 1 - 10**-0.04 = 8.8%
    assert detect_oscillations(steps, loss, norm, min_norm_change=0.08).n_cycles == 4
    assert detect_oscillations(steps, loss, norm, min_norm_change=0.095).n_cycles == 0


def test_swing_sets_which_reversals_count():
    """The loss swings 3 decades: its cycles count at swing 10, none at swing 10**3.1."""
    steps, t, loss, norm = _limit_cycle()
    assert detect_oscillations(steps, loss, norm, swing=10.0).n_cycles == 4
    assert detect_oscillations(steps, loss, norm, swing=10 ** 3.1).n_cycles == 0


def test_turning_points_by_hand():
    y = np.array([0.0, -1.0, 1.0, 0.5, 2.0, -0.5, -0.4, 1.0])
    # index 0 would be a peak (confirmed by the drop to -1) but the first point never counts; 0.5 is
    # no trough (1 -> 0.5 is a reversal of only 0.5); -0.5 is confirmed by the rise to 1.0
    assert turning_points(y, 1.0) == [(1, "trough"), (4, "peak"), (5, "trough")]
    assert turning_points(y, 3.0) == [(1, "trough")]  # -1 -> 2 is a rise of exactly 3
    assert turning_points(y, 3.01) == []


@pytest.mark.parametrize("kwargs, match", [
    (dict(weight_norm=[1.0, 0.0, 1.0]), "weight_norm must be > 0"),
    (dict(weight_norm=[1.0, 1.0]), "one value per logged step"),
    (dict(swing=0.5), "swing must be > 1"),
    (dict(min_norm_change=-0.1), r"min_norm_change must be in \[0, 1\)"),
])
def test_oscillation_bad_arguments(kwargs, match):
    args = dict(steps=[0, 1, 2], train_loss=[1.0, 0.1, 1.0], weight_norm=[1.0, 1.0, 1.0]) | kwargs
    with pytest.raises(ValueError, match=match):
        detect_oscillations(**args)


def test_run_spikes_on_metrics_rows():
    y = _with_spikes(_decay(), at=[100], height=[3.0])
    rows = [{"step": s, "train_loss": float(v), "test_loss": None, "sum_sq_weights": 100.0}
            for s, v in zip(STEPS, y, strict=True)]
    js = run_spikes(rows[::-1])  # any order
    assert [s["peak"] for s in js["spikes"]["train_loss"]] == [STEPS[100]]
    assert set(js["spikes"]["train_loss"][0]) == {"start", "peak", "end", "rise", "baseline", "peak_loss"}
    assert js["spikes"]["test_loss"] == []
    assert js["oscillations"]["n_cycles"] == 0 and js["spike_rule"] == SPIKE_RULE
    assert js["oscillation_rule"] == OSCILLATION_RULE
    rows[3]["train_loss"] = -1.0  # a broken curve is reported, not raised
    assert "not a log-loss" in run_spikes(rows)["spikes"]["train_loss"]["error"]
