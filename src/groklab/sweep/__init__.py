"""Sweeps: a grid over config keys plus seeds, trained as batched groups on a local process pool
or a Ray cluster, summarised in ``results.csv`` and drawn as PAIR's phase diagram
(``groklab report SWEEP``). Formats in ``docs/sweep.md``."""

from .results import read_results, write_results
from .rules import STOP_RULES, grok_step, stop_reason
from .run import BACKENDS, run_sweep
from .spec import SweepSpec, expand, group_members, read_sweep_json

__all__ = ["BACKENDS", "STOP_RULES", "SweepSpec", "expand", "grok_step", "group_members", "read_results",
           "read_sweep_json", "run_sweep", "stop_reason", "write_results"]
