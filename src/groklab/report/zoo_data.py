"""What the report of a non-modular run (the phase-change "zoo") reads, and the few numbers it
computes itself from the checkpoints.

The run (config, metrics with ``train_loss_by_part`` / ``test_loss_by_part``, checkpoints) and,
where present, the zoo analysis (``RUN/analysis.json``: ``analyses``, ``parts``,
``phase_changes``, ``induction``, ``skip_trigrams``; ``RUN/analysis.npz``: ``steps``,
``prev_token_score``, ``induction_score``, ``attn_on_special``). Every key is optional: a figure
whose numbers are missing says so in its caption. What the report computes itself: the attention
patterns of every head on one example sequence (the slider) and, only when the analysis lacks
them, the previous-token / induction scores and the END -> special attention, on a few sequences
drawn from the task at the slider's checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..analysis.zoo import attn_on_special, copy_starts, induction_scores, prev_token_scores
from ..runs import Run, RunError, load_run
from ..tasks import Batch, Task, build_task, generator
from .data import _analysis_present, read_analysis

EXAMPLE_SEED = 0  # the example sequence: generator(EXAMPLE_SEED, EXAMPLE_STREAM, 0), any run
EXAMPLE_STREAM = 101  # streams 1-5 are the trainer's
SCORE_STREAM = 102  # sequences of the report's own scores (when the analysis has none)
SCORE_SEQS = 64


def as_run(run: Run | str | Path) -> Run:
    """A loaded run, from a ``Run`` or a run directory."""
    return run if isinstance(run, Run) else load_run(run)


def part_label(task: Task, part: str) -> str:
    """A part's name for people: ``digit0 (carry)``, ``digit5 (units)``, ``copy1 (2nd copy)``."""
    if task.name == "digit_addition" and part.startswith("digit"):
        i = int(part[5:])
        return f"{part} (carry)" if i == 0 else f"{part} (units)" if i == len(task.part_names) - 1 else part
    if task.name == "repeated_subsequence" and part.startswith("copy"):
        i = int(part[4:]) + 1
        return f"{part} ({i}{ {2: 'nd', 3: 'rd'}.get(i, 'th')} copy)"
    return part


@dataclass
class ZooData:
    """A non-modular run and whatever of its analysis exists.

    Attributes:
        run: the loaded run.
        task: its ``Task`` (vocabulary, parts, sampler).
        summary: ``analysis.json`` as a dict (empty if there is none).
        arrays: ``analysis.npz`` as numpy arrays (empty if there is none).
        notes: sentences for the page about what is missing or stale.
    """

    run: Run
    task: Task
    summary: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def parts(self) -> list[str]:
        return list(self.summary.get("parts") or self.task.part_names)

    @property
    def n_layers(self) -> int:
        return int(self.run.config.model.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.run.config.model.n_heads)

    @property
    def finite(self) -> bool:
        return getattr(self.run.config.task, "n_train", None) is not None

    @property
    def phase_changes(self) -> dict[str, dict[str, int] | None]:
        """``{curve: {"start", "steepest", "end"} | None}``; curves ``train``, ``test``,
        ``train.<part>``, ``test.<part>`` (empty without an analysis)."""
        pc = self.summary.get("phase_changes")
        return pc if isinstance(pc, dict) else {}

    @cached_property
    def metric_steps(self) -> np.ndarray:
        return np.array([r["step"] for r in self.run.metrics], dtype=np.int64)

    def loss(self, split: str) -> np.ndarray:
        """``[S]`` total ``split`` loss at every evaluation (NaN where missing)."""
        return np.array([_num(r.get(f"{split}_loss")) for r in self.run.metrics])

    def loss_by_part(self, split: str) -> np.ndarray:
        """``[S, P]`` mean loss of each part at every evaluation (NaN where missing)."""
        rows = [r.get(f"{split}_loss_by_part") or {} for r in self.run.metrics]
        return np.array([[_num(row.get(p)) for p in self.parts] for row in rows]).reshape(len(rows),
                                                                                          len(self.parts))

    @cached_property
    def example(self) -> Batch:
        """The example sequence of the attention figures: one draw from the task, fixed seed."""
        return self.task.sample(1, generator(EXAMPLE_SEED, EXAMPLE_STREAM, 0))

    def token_names(self, tokens: torch.Tensor | None = None) -> list[str]:
        t = self.example.tokens[0] if tokens is None else tokens
        return [self.task.vocab[int(i)] for i in t]


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def load_zoo_data(run: Run | str | Path, analyze: bool = True) -> ZooData:
    """Load a non-modular run and its analysis.

    Args:
        analyze: run ``groklab analyze`` first when the analysis files are missing; if that fails
            the page is built without it and says so.

    Raises:
        RunError: the directory is not a readable run, has no checkpoints, or its analysis files
            exist but are corrupt.
    """
    run = as_run(run)
    if not run.steps:
        raise RunError(f"{run.path}: no checkpoints yet; train first (`groklab train --out {run.path}`)")
    d = ZooData(run, build_task(run.config.task))
    if analyze and not _analysis_present(run.path):
        try:
            from ..analysis.pipeline import analyze_run

            analyze_run(run.path, progress=False)
        except Exception as e:  # noqa: BLE001 - the page is still useful without the analysis
            d.notes.append(f"`groklab analyze` failed on this run ({type(e).__name__}: {e}); the "
                           "figures below that need it are computed by the report or left out.")
    if not _analysis_present(run.path):
        if not d.notes:
            d.notes.append(f"No analysis yet: run `groklab analyze {run.path}` to mark the phase "
                           "changes and name the circuit's heads.")
        return d
    d.summary, d.arrays = read_analysis(run.path)
    task = d.summary.get("task")
    if task is not None and task != d.name:
        d.notes.append(f"analysis.json describes a {task} run, not {d.name}; re-run `groklab analyze`.")
        d.summary, d.arrays = {}, {}
    last = d.arrays.get("steps")
    if last is not None and len(last) and int(last[-1]) < run.steps[-1]:
        d.notes.append(f"The analysis covers steps up to {int(last[-1]):,} but the run has checkpoints "
                       f"to {run.steps[-1]:,}; re-run `groklab analyze`.")
    return d


@torch.no_grad()
def attention_patterns(d: ZooData, step: int, tokens: torch.Tensor | None = None) -> np.ndarray:
    """``[n_layers, n_heads, n, n]`` attention (query, key) of every head on ``tokens``
    (``[n]``, default the example sequence) at checkpoint ``step``, from ``run_with_cache``."""
    t = d.example.tokens if tokens is None else tokens.reshape(1, -1)
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(d.n_layers)]
    _, cache = d.run.model_at(step).run_with_cache(t, names=names)
    return np.stack([cache[n][0].float().numpy() for n in names])


def score_sequences(d: ZooData, n: int = SCORE_SEQS) -> Batch:
    return d.task.sample(n, generator(EXAMPLE_SEED, SCORE_STREAM, 0))


def head_scores(pattern0: torch.Tensor, pattern1: torch.Tensor, batch: Batch,
                task_cfg) -> tuple[np.ndarray, np.ndarray]:
    """Per-head previous-token score of layer 0 and induction score of layer 1 on ``batch`` (the
    analysis's definitions, ``analysis.zoo.prev_token_scores`` / ``induction_scores``).

    Args:
        pattern0, pattern1: ``[N, H, n, n]`` attention of layers 0 and 1 on ``batch.tokens``.
        task_cfg: the run's ``RepeatedSubsequenceConfig``.
    """
    starts = copy_starts(batch.tokens, batch.positions, task_cfg.num_repeats, task_cfg.subseq_len)
    return (prev_token_scores(pattern0).numpy(),
            induction_scores(pattern1, starts, task_cfg.subseq_len).numpy())


def report_scores(d: ZooData, steps: list[int]) -> dict[str, np.ndarray]:
    """The report's own per-checkpoint scores at ``steps`` (used only when the analysis has none):
    ``prev_token_score``/``induction_score`` ``[C, H]`` (repeated subsequences) or
    ``attn_on_special`` ``[C, R]`` (max element)."""
    batch = score_sequences(d)
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(min(d.n_layers, 2))]
    out: dict[str, list] = {}
    for s in steps:
        with torch.no_grad():
            _, cache = d.run.model_at(s).run_with_cache(batch.tokens, names=names)
        if d.name == "repeated_subsequence" and len(names) == 2:
            prev, ind = head_scores(cache[names[0]], cache[names[1]], batch, d.run.config.task)
            out.setdefault("prev_token_score", []).append(prev)
            out.setdefault("induction_score", []).append(ind)
        elif d.name == "max_element":
            out.setdefault("attn_on_special", []).append(attn_on_special(
                cache[names[0]], batch.tokens, batch.labels[:, 0], d.run.config.task.rand_size).numpy())
    return {k: np.stack(v) for k, v in out.items()}
