"""When a sweep member's outcome is settled, so that it can leave its batch early.

Three rules (``stop`` in the spec, ``--stop`` on the command line), checked at every evaluation:

- ``settled`` (default): both the minimum train loss and the minimum test loss so far are at or
  below ``min_loss`` (PAIR's 1e-5). From then on PAIR's rules 1 and 2 (``analysis.outcome``) can no
  longer say "can't fit" or "memorise", and the member is "grok" or "together" by its test/train
  ratio so far. Only a later ratio above ``max_ratio`` could still change the class (from together
  to grok), which would take a test loss 5e4 times the train loss after both went below 1e-5; the
  rule accepts that and says so. "Can't fit" and "memorise" are never settled early: they are
  decided by the whole budget.
- ``grokked``: test accuracy has reached 99% (the grok step is known). For budget questions such
  as ``groklab crossover`` ("does it grok within N steps?"); the outcome class of a member stopped
  this way is computed from a truncated curve.
- ``never``: every member trains its full ``train.steps``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..analysis.outcome import MIN_LOSS

STOP_RULES = ("settled", "grokked", "never")
GROK_ACC = 0.99  # the grok step: first step with test accuracy >= 99%


def _finite(v) -> bool:
    return v is not None and v == v


def grok_step(rows: Sequence[Mapping]) -> int | None:
    """The first logged step with test accuracy >= 99%, or None."""
    return next((int(r["step"]) for r in rows if _finite(r.get("test_acc")) and r["test_acc"] >= GROK_ACC),
                None)


def stop_reason(rows: Sequence[Mapping], rule: str, min_loss: float = MIN_LOSS) -> str | None:
    """``rule`` if a member with these metrics rows may stop now, else None.

    Raises:
        ValueError: an unknown rule (valid: ``STOP_RULES``).
    """
    if rule not in STOP_RULES:
        raise ValueError(f"stop rule {rule!r} is not one of {', '.join(STOP_RULES)}")
    if rule == "never" or not rows:
        return None
    if rule == "grokked":
        return rule if grok_step(rows) is not None else None
    trains = [r["train_loss"] for r in rows if _finite(r.get("train_loss"))]
    tests = [r["test_loss"] for r in rows if _finite(r.get("test_loss"))]
    if trains and tests and min(trains) <= min_loss and min(tests) <= min_loss:
        return rule
    return None
