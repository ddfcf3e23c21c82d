"""PAIR's four-way outcome of a training run: can't fit, memorise, together, grok.

The rule of the PAIR explorable's sweep charts (Pearce et al. 2023, "Do Machine Learning Models
Memorize or Generalize?", sparse-parity sweep; ``sweep-sparse-parity/init.js`` ``circleFillFn``,
the same code as the modular sweep's; reference notes ``pair.md`` §1.3 "Classification"). With
``min_loss`` = 1e-5 and ``max_ratio`` = 5e4 (the page's default slider values), in order:

1. min train loss > ``min_loss`` -> ``"cant_fit"`` ("High Train Loss", grey);
2. else min test loss > ``min_loss`` -> ``"memorise"`` ("High Test Loss", white);
3. else max over logged steps of test loss / train loss < ``max_ratio`` -> ``"together"``
   ("Train/Test Drop Together", blue);
4. else ``"grok"`` ("Grokking", yellow).

Units: the thresholds apply to the losses in the units the run recorded. PAIR's runs record the
cross-entropy divided by the number of classes (CE/67 for the p = 67 models), and its defaults
1e-5 and 5e4 are in those units: a run that records plain CE (nats) needs ``min_loss`` scaled by
the same factor to mean the same thing (the ratio threshold is unit-free).

``classify_outcome`` takes one run's metrics rows; ``classify_curves`` is the vectorised form for
a sweep, with NaN for "not logged", and agrees with it run by run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

OUTCOMES = ("cant_fit", "memorise", "together", "grok")
MIN_LOSS = 1e-5  # PAIR's default "minEvalLoss" slider, in the run's recorded loss units
MAX_RATIO = 5e4  # PAIR's default "maxRatio" slider (test loss / train loss)


@dataclass(frozen=True)
class Outcome:
    """A run's outcome and the three statistics that decided it.

    Attributes:
        outcome: one of ``OUTCOMES``.
        min_train_loss: min train loss over the logged rows.
        min_test_loss: min test loss over the rows that logged one.
        max_ratio: max of test loss / train loss over the rows with both logged and train loss
            > 0; NaN if there is no such row (then rule 3 was never reached).
        min_loss: the loss threshold used (rules 1 and 2).
        max_ratio_threshold: the ratio threshold used (rule 3).
    """

    outcome: str
    min_train_loss: float
    min_test_loss: float
    max_ratio: float
    min_loss: float
    max_ratio_threshold: float

    def to_json(self) -> dict:
        """A JSON-safe dict of the fields (a non-finite number becomes ``None``)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


def _check_thresholds(min_loss: float, max_ratio: float) -> None:
    for name, v in (("min_loss", min_loss), ("max_ratio", max_ratio)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite positive number, got {v!r} "
                             f"(PAIR's defaults: min_loss={MIN_LOSS}, max_ratio={MAX_RATIO})")


def _decide(min_train: float, min_test: float, ratio: float, min_loss: float, max_ratio: float,
            where: str) -> str:
    """Rules 1-4 on a run's three statistics (a NaN ratio is an error only if rule 3 needs it)."""
    if min_train > min_loss:
        return "cant_fit"
    if min_test > min_loss:
        return "memorise"
    if math.isnan(ratio):
        raise ValueError(f"{where}: no logged step has both losses with train_loss > 0, so the "
                         "test/train ratio (rule 3) is undefined; log the test loss at some step "
                         "where the train loss is still positive")
    return "together" if ratio < max_ratio else "grok"


def _value(row: Mapping, key: str, i: int) -> float | None:
    if key not in row:
        raise ValueError(f"metrics row {i} has no {key!r} key (keys: {sorted(row)}); each row needs "
                         "'step', 'train_loss' and 'test_loss' (None where not logged)")
    v = row[key]
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def classify_outcome(rows: Sequence[Mapping], min_loss: float = MIN_LOSS,
                     max_ratio: float = MAX_RATIO) -> Outcome:
    """Classify one run by PAIR's four-way rule (module docstring; ``pair.md`` §1.3).

    Args:
        rows: the run's metrics rows, dicts with ``step``, ``train_loss`` and ``test_loss``.
            A loss that is ``None`` or NaN was not logged at that step: the row is left out of
            that loss's minimum and of the ratio. Row order does not matter.
        min_loss: loss threshold of rules 1 and 2, in the units the run recorded (PAIR: CE/67).
        max_ratio: threshold on max(test loss / train loss) of rule 3; the ratio is taken only
            over rows with both losses logged and train loss > 0.

    Returns:
        An ``Outcome``. Ties go to the later rule: a min loss equal to ``min_loss`` passes rules
        1 and 2, and a max ratio equal to ``max_ratio`` is ``"grok"``.

    Raises:
        ValueError: if ``rows`` is empty, a row lacks one of the keys, no row has a train loss or
            no row has a test loss (a run without test losses cannot be classified: log them),
            a threshold is not finite and positive, or rule 3 is reached with no row usable for
            the ratio.

    Source: PAIR grokking explorable, ``sweep-sparse-parity/init.js`` ``circleFillFn``.
    """
    _check_thresholds(min_loss, max_ratio)
    if len(rows) == 0:
        raise ValueError("rows is empty: pass the run's metrics rows (dicts with 'step', "
                         "'train_loss', 'test_loss')")
    train = [_value(r, "train_loss", i) for i, r in enumerate(rows)]
    test = [_value(r, "test_loss", i) for i, r in enumerate(rows)]
    trains = [t for t in train if t is not None]
    tests = [t for t in test if t is not None]
    if not trains:
        raise ValueError("no row has a train_loss: every row's train_loss is None or NaN")
    if not tests:
        raise ValueError("no row has a test_loss, so memorising cannot be told from generalising; "
                         "log the test loss at least at some steps")
    ratios = [te / tr for tr, te in zip(train, test, strict=True)
              if tr is not None and te is not None and tr > 0]
    ratio = max(ratios) if ratios else math.nan
    outcome = _decide(min(trains), min(tests), ratio, min_loss, max_ratio, "run")
    return Outcome(outcome, min(trains), min(tests), ratio, min_loss, max_ratio)


def _as_runs_steps(x, name: str) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).to(torch.float64)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D [runs, steps] (NaN where not logged), "
                         f"got shape {tuple(t.shape)}; for one run use classify_outcome")
    return t


def classify_curves(train: Float[Tensor, "runs steps"] | Float[np.ndarray, "runs steps"],
                    test: Float[Tensor, "runs steps"] | Float[np.ndarray, "runs steps"],
                    min_loss: float = MIN_LOSS, max_ratio: float = MAX_RATIO) -> list[str]:
    """``classify_outcome`` for a sweep of runs at once.

    Args:
        train: ``[runs, steps]`` train losses, NaN where not logged (column s is the same row
            of every run only by convention; the rule does not use the steps).
        test: ``[runs, steps]`` test losses, NaN where not logged.
        min_loss: as in ``classify_outcome`` (run's recorded units; PAIR: CE/67).
        max_ratio: as in ``classify_outcome``.

    Returns:
        ``runs`` outcome names from ``OUTCOMES``, equal to ``classify_outcome`` on each run's
        rows (computed in float64).

    Raises:
        ValueError: if the inputs are not 2-D with the same shape, have no runs or no steps, a
            run has no train or no test loss, a threshold is not finite and positive, or a run
            that reaches rule 3 has no step usable for the ratio (the message names the run).

    Source: PAIR grokking explorable, ``sweep-sparse-parity/init.js`` ``circleFillFn``.
    """
    _check_thresholds(min_loss, max_ratio)
    tr, te = _as_runs_steps(train, "train"), _as_runs_steps(test, "test")
    if tr.shape != te.shape:
        raise ValueError(f"train and test must have the same [runs, steps] shape, got "
                         f"{tuple(tr.shape)} and {tuple(te.shape)}; pad shorter runs with NaN")
    if tr.numel() == 0:
        raise ValueError(f"no runs or no steps (shape {tuple(tr.shape)}): pass [runs, steps] losses")
    inf = torch.tensor(math.inf, dtype=torch.float64)
    has_tr, has_te = ~tr.isnan(), ~te.isnan()
    for name, has in (("train", has_tr), ("test", has_te)):
        empty = (~has.any(dim=1)).nonzero()[:, 0].tolist()
        if empty:
            raise ValueError(f"runs {empty[:10]} have no {name} loss (all NaN); "
                             "every run needs at least one logged train and test loss")
    min_tr = torch.where(has_tr, tr, inf).amin(dim=1)  # (runs,)
    min_te = torch.where(has_te, te, inf).amin(dim=1)  # (runs,)
    ok = has_tr & has_te & (tr > 0)
    ratio = torch.where(ok, te / torch.where(ok, tr, 1.0), -inf).amax(dim=1)  # (runs,)
    ratio = torch.where(ok.any(dim=1), ratio, torch.nan)
    return [_decide(a, b, r, min_loss, max_ratio, f"run {i}")
            for i, (a, b, r) in enumerate(zip(min_tr.tolist(), min_te.tolist(), ratio.tolist(),
                                              strict=True))]


def run_outcome(metrics: Sequence[Mapping], **thresholds: float) -> dict:
    """``analysis.json``'s ``outcome`` and ``outcome_detail`` for a run's ``metrics.jsonl`` rows,
    with PAIR's default thresholds. A run without a test loss (or whose ratio is undefined) gets
    ``outcome: None`` and the reason in ``outcome_detail``."""
    try:
        o = classify_outcome(metrics, **thresholds)
    except ValueError as e:
        return {"outcome": None, "outcome_detail": {"error": str(e)}}
    return {"outcome": o.outcome, "outcome_detail": o.to_json()}
