"""The report marks loss spikes and loss / weight-norm cycles from the metrics rows
(report/base.py ``mark_spikes``): markers at the detector's peaks, a caption sentence, nothing on a
smooth run."""

import numpy as np

from groklab.analysis.spikes import detect_oscillations, detect_spikes
from groklab.report.base import mark_spikes, new_figure


def _rows(train, test, ssw):
    return [{"step": 10 * i, "train_loss": a, "test_loss": b, "sum_sq_weights": c}
            for i, (a, b, c) in enumerate(zip(train, test, ssw, strict=True))]


def test_spikes_and_cycles_are_marked_at_the_detected_peaks():
    n = 200
    t = np.arange(n) * (2 * np.pi / 50)
    train = 10 ** (-6 + 0.4 * np.sin(t))  # swings 0.8 decade: cycles against the norm, no spike
    ssw = (10 ** (1 - 0.05 * np.sin(t - 0.3))) ** 2
    test = np.full(n, 1e-3)
    test[120] = 1.0  # one 1000x spike
    rows = _rows(train.tolist(), test.tolist(), ssw.tolist())
    fig = new_figure()
    cap = mark_spikes(fig, rows[::-1], {"train_loss": "#00f", "test_loss": "#f80"})
    by_name = {tr.name: tr for tr in fig.data}
    steps = [r["step"] for r in rows]
    assert "train loss spike" not in by_name
    assert list(by_name["test loss spike"].x) == [s.peak for s in detect_spikes(steps, test)] == [1200]
    np.testing.assert_allclose(by_name["test loss spike"].y, [1.0])
    cycles = detect_oscillations(steps, train, np.sqrt(ssw)).cycles
    assert len(cycles) == 3 and list(by_name["loss / weight-norm cycle"].x) == [c.peak for c in cycles]
    assert "1 test loss spike (peaks at 1,200)" in cap and "3 cycles" in cap


def test_a_smooth_run_gets_no_marks_and_no_caption():
    n = 100
    rows = _rows(np.geomspace(4, 1e-8, n).tolist(), [None] * n, np.linspace(100, 50, n).tolist())
    fig = new_figure()
    assert mark_spikes(fig, rows, {"train_loss": "#00f", "test_loss": "#f80"}) == ""
    assert len(fig.data) == 0
