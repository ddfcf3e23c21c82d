"""PAIR's four-way outcome rule (pair.md §1.3) on hand-made loss curves, one per class, each also
pushed just across each rule's boundary; the vectorised form agrees row by row."""

import json
import math

import numpy as np
import pytest
import torch

from groklab.analysis.outcome import OUTCOMES, Outcome, classify_curves, classify_outcome

STEPS = 40


def _rows(train, test):
    """Metrics rows from two curves; NaN in ``test`` becomes ``None`` (not logged)."""
    return [{"step": 100 * i, "train_loss": float(tr), "test_loss": None if math.isnan(te) else float(te)}
            for i, (tr, te) in enumerate(zip(train, test, strict=True))]


def _cant_fit(floor=1e-3):
    """Train loss flattens at ``floor`` (above 1e-5): the model can't fit. Test equals it."""
    train = np.geomspace(1.0, floor, STEPS)
    train[-1] = floor  # exactly, for the tie case
    return train, train.copy()


def _memorise(test_floor=0.5):
    """Train loss falls to 1e-9, test loss (twice train) bottoms out at ``test_floor``: memorised.

    Past rule 2 the max ratio is ``test_floor / 1e-9`` (about 1e4 for a floor near 1e-5).
    """
    train = np.geomspace(1.0, 1e-9, STEPS)
    train[-1] = 1e-9
    return train, np.maximum(2 * train, test_floor)


def _together(peak=3.0):
    """Both fall to ~1e-9 with test/train equal to 1 except one step where it is ``peak``."""
    train = np.geomspace(1.0, 1e-9, STEPS)
    ratio = np.ones(STEPS)
    ratio[STEPS // 2] = peak
    return train, train * ratio


def _grok():
    """Train falls to 1e-9 by step 10; test sits at 1 until step 30 then drops to 1e-7."""
    train = np.concatenate([np.geomspace(1.0, 1e-9, 10), np.full(STEPS - 10, 1e-9)])
    test = np.concatenate([np.full(30, 1.0), np.geomspace(1.0, 1e-7, STEPS - 30)])
    return train, test


CURVES = {"cant_fit": _cant_fit(), "memorise": _memorise(), "together": _together(), "grok": _grok()}


@pytest.mark.parametrize("name", OUTCOMES)
def test_each_obvious_curve_gets_its_class(name):
    out = classify_outcome(_rows(*CURVES[name]))
    assert out.outcome == name
    train, test = CURVES[name]
    assert out.min_train_loss == pytest.approx(train.min(), rel=1e-12)
    assert out.min_test_loss == pytest.approx(test.min(), rel=1e-12)
    assert out.max_ratio == pytest.approx((test / train).max(), rel=1e-12)
    assert (out.min_loss, out.max_ratio_threshold) == (1e-5, 5e4)


@pytest.mark.parametrize(("curve", "expected"), [
    # rule 1: min train loss just above / just below / at 1e-5
    (_cant_fit(1.1e-5), "cant_fit"),
    (_cant_fit(0.9e-5), "together"),  # test = train: ratio 1
    (_cant_fit(1e-5), "together"),  # a tie passes rule 1 (strict >) and, test = train, rule 2
    # rule 2: min test loss just above / just below / at 1e-5 (train reaches 1e-9)
    (_memorise(1.1e-5), "memorise"),
    (_memorise(0.9e-5), "together"),  # max ratio 0.9e-5 / 1e-9 = 9e3
    (_memorise(1e-5), "together"),
    # rule 3: max ratio 4.9e4 / 5.1e4 (test = train except at one step, where it is 4.9e4 / 5.1e4 x)
    (_together(4.9e4), "together"),
    (_together(5.1e4), "grok"),
])
def test_boundaries(curve, expected):
    out = classify_outcome(_rows(*curve))
    assert out.outcome == expected, out
    assert classify_curves(curve[0][None], curve[1][None]) == [expected]


def test_ratio_tie_is_grok():
    """A max ratio equal to the threshold is not "< max_ratio" (x4 and /4 are exact in binary)."""
    train, test = _together(4.0)
    out = classify_outcome(_rows(train, test), max_ratio=4.0)
    assert (out.max_ratio, out.outcome) == (4.0, "grok")
    assert classify_curves(train[None], test[None], max_ratio=4.0) == ["grok"]


def test_thresholds_are_the_callers():
    train, test = CURVES["cant_fit"]  # floor 1e-3
    assert classify_outcome(_rows(train, test), min_loss=2e-3).outcome == "together"
    train, test = CURVES["grok"]
    assert classify_outcome(_rows(train, test), max_ratio=1e10).outcome == "together"


def test_unlogged_and_zero_train_rows_are_left_out():
    train, test = _together(3.0)
    test = test.copy()
    test[5] = np.nan  # not logged: left out of the test minimum and the ratio
    rows = _rows(train, test)
    rows[7]["test_loss"] = 1e3  # would make the ratio > 5e4 ...
    rows[7]["train_loss"] = 0.0  # ... but train 0 leaves the row out of the ratio
    out = classify_outcome(rows)
    assert out.outcome == "together"
    assert out.max_ratio == pytest.approx(3.0, rel=1e-12)
    assert out.min_test_loss == pytest.approx(np.nanmin(np.delete(test, 7)), rel=1e-12)
    t = np.array([r["train_loss"] for r in rows])
    e = np.array([np.nan if r["test_loss"] is None else r["test_loss"] for r in rows])
    assert classify_curves(t[None], e[None]) == ["together"]


def test_curves_agree_with_rows_on_random_sweep():
    rng = np.random.default_rng(0)
    runs = [CURVES[n] for n in OUTCOMES]
    for _ in range(200):
        start = rng.uniform(-1, 1)
        train = 10 ** (start - rng.uniform(0, 10) * np.linspace(0, 1, STEPS) ** rng.uniform(0.3, 3))
        lag = rng.uniform(0, 0.6)
        prog = np.clip((np.linspace(0, 1, STEPS) - lag) / (1 - lag), 0, 1)
        test = 10 ** (start + 0.3 - rng.uniform(0, 11) * prog)
        test[rng.random(STEPS) < 0.5] = np.nan
        test[rng.integers(STEPS)] = 10 ** (start + 0.3)  # at least one logged test loss
        runs.append((train, test))
    T = np.stack([r[0] for r in runs])
    E = np.stack([r[1] for r in runs])
    expected = [classify_outcome(_rows(tr, te)).outcome for tr, te in runs]
    assert set(expected) == set(OUTCOMES)  # the random sweep covers every class
    assert classify_curves(T, E) == expected
    assert classify_curves(torch.tensor(T), torch.tensor(E)) == expected
    assert classify_curves(torch.tensor(T, dtype=torch.float32), torch.tensor(E, dtype=torch.float32))[:4] \
        == list(OUTCOMES)


def test_to_json():
    out = classify_outcome(_rows(*CURVES["grok"]))
    d = out.to_json()
    assert set(d) == {"outcome", "min_train_loss", "min_test_loss", "max_ratio", "min_loss",
                      "max_ratio_threshold"}
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    nan = Outcome("cant_fit", 1.0, 1.0, math.nan, 1e-5, 5e4).to_json()
    assert nan["max_ratio"] is None


@pytest.mark.parametrize(("rows", "match"), [
    ([], "empty"),
    ([{"step": 0, "train_loss": 1.0, "test_loss": None}, {"step": 1, "train_loss": 0.1, "test_loss": None}],
     "no row has a test_loss"),
    ([{"step": 0, "train_loss": None, "test_loss": 1.0}], "no row has a train_loss"),
    ([{"step": 0, "train_loss": 1.0}], "no 'test_loss' key"),
    ([{"step": 0, "train_loss": 0.0, "test_loss": 0.0}], "ratio"),  # reaches rule 3, nothing to divide
])
def test_invalid_rows_raise(rows, match):
    with pytest.raises(ValueError, match=match):
        classify_outcome(rows)


def test_invalid_curves_and_thresholds_raise():
    t = np.ones((2, 3))
    with pytest.raises(ValueError, match="same"):
        classify_curves(t, np.ones((2, 4)))
    with pytest.raises(ValueError, match="2-D"):
        classify_curves(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="no runs or no steps"):
        classify_curves(np.ones((0, 3)), np.ones((0, 3)))
    e = t.copy()
    e[1] = np.nan
    with pytest.raises(ValueError, match=r"runs \[1\] have no test loss"):
        classify_curves(t, e)
    with pytest.raises(ValueError, match="run 0: no logged step"):
        classify_curves(np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="min_loss must be"):
        classify_outcome(_rows(*CURVES["grok"]), min_loss=0.0)
    with pytest.raises(ValueError, match="max_ratio must be"):
        classify_curves(t, t, max_ratio=math.inf)
