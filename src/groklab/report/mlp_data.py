"""What the report of an MLP-family run (``model.family: mlp``; PAIR, Pearce et al. 2023) reads.

The run (config, metrics, checkpoints) and its MLP analysis (``docs/analysis_mlp.md``):
modular addition reads ``analysis.json`` (``outcome``, ``grokking_step``, ``key_frequencies``,
``neuron_clusters``, ``stars``, ...) and ``analysis.npz`` (``W_input`` [C, p, H], ``W_output``
[C, H, p], the final DFTs, ``sort_order``, ``dft_gini``, ``weight_l2``); sparse parity reads
``prune_step``, ``acc_jump_step`` and ``W_in`` [C, n_bits + 1, H], ``W_out`` [C, H],
``live_distractors`` [C]. What the report computes itself: nothing but the slider's choice of
checkpoints, the five-neuron model's projections (read from its checkpoints) and the per-group
logits of one (a, b) pair (``group_logits``, the same sum the page's script runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..runs import Run, RunError, load_run
from .data import ensure_analysis, read_analysis
from .trajectory import frame_indices

MODULAR_NPZ = ("steps", "W_input", "W_output", "dft_W_input", "dft_W_output", "fourier_labels",
               "neuron_k", "sort_order", "dft_gini", "weight_l2")
PARITY_NPZ = ("steps", "W_in", "W_out", "live_distractors")
MODULAR_JSON = ("key_frequencies", "stars", "sort_order")


@dataclass
class MLPData:
    """An MLP-family run and its analysis.

    Attributes:
        run: the loaded run.
        summary: ``analysis.json`` as a dict.
        arrays: ``analysis.npz`` as numpy arrays.
        notes: sentences for the page about what is stale.
    """

    run: Run
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        """``"modular"`` or ``"sparse_parity"``."""
        return self.run.config.task.name

    @property
    def act(self) -> str:
        return str(self.run.config.model.act_fn)

    @property
    def is_circle(self) -> bool:
        """The five-neuron model: ``W_E`` fixed to PAIR's circle (``model.embed: circle``)."""
        return self.run.config.model.embed == "circle"

    @property
    def is_construction(self) -> bool:
        """Hand-set weights (``groklab construct``): one checkpoint at step 0, no training."""
        return str(self.run.config.preset or "").startswith("construct")

    @property
    def p(self) -> int:
        return int(self.run.config.task.p)

    @property
    def steps(self) -> np.ndarray:
        """``[C]`` the analysed checkpoint steps."""
        return self.arrays["steps"].astype(np.int64)

    @property
    def final_step(self) -> int:
        return int(self.steps[-1])

    @property
    def key_freqs(self) -> list[int]:
        return [int(k) for k in self.summary.get("key_frequencies") or []]

    @property
    def sort_order(self) -> np.ndarray:
        """``[H]`` neuron indices sorted by (frequency, in-angle): PAIR's display order."""
        return self.arrays["sort_order"].astype(np.int64)

    @property
    def n_neurons(self) -> int:
        return int(self.run.config.model.d_hidden)

    @cached_property
    def metric_steps(self) -> np.ndarray:
        return np.array([r["step"] for r in self.run.metrics], dtype=np.int64)

    def metric(self, key: str) -> np.ndarray:
        """``[S]`` ``key`` (``train_loss``, ``test_acc``, ...) at every evaluation (NaN where missing)."""
        return np.array([np.nan if r.get(key) is None else float(r[key]) for r in self.run.metrics])

    def star(self, k: int) -> dict[str, Any]:
        """``analysis.json`` ``stars[k]``: ``neurons`` (in in-angle order), angles, fits."""
        return self.summary["stars"][str(k)]

    def groups(self) -> list[tuple[str, list[int]]]:
        """``(label, neurons)`` per key frequency (neurons in in-angle order), then the neurons in
        no key frequency (label ``"other"``) if there are any."""
        out = [(f"k = {k}", [int(n) for n in self.star(k)["neurons"]]) for k in self.key_freqs]
        seen = {n for _, ns in out for n in ns}
        rest = [int(n) for n in self.sort_order if int(n) not in seen]
        return out + ([("other", rest)] if rest else [])

    @cached_property
    def frames(self) -> list[int]:
        """Indices into ``steps`` of the slider's checkpoints (at most 40, the first and last)."""
        steps = [int(s) for s in self.steps]
        need_disk = self.task == "modular" and self.is_circle  # its projections come from the state
        return frame_indices(steps, self.run.steps if need_disk else steps)


def load_mlp_data(run_dir: str | Path) -> MLPData:
    """Load an MLP-family run and its analysis, running ``groklab analyze`` first if the analysis
    files are missing.

    Raises:
        RunError: the directory is not a readable MLP run, has no checkpoints, or its analysis
            files are corrupt, of another task, or lack a key of the schema (the message says to
            re-run ``groklab analyze``).
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    if run.config.model.family != "mlp":
        raise RunError(f"{run_dir}: model.family is {run.config.model.family!r}; this page is for "
                       "model.family mlp runs (`groklab report` picks the right page itself)")
    if run.config.task.name not in ("modular", "sparse_parity"):
        raise RunError(f"{run_dir}: task {run.config.task.name!r}: the MLP page knows modular and "
                       "sparse_parity")
    if not run.steps:
        raise RunError(f"{run_dir}: no checkpoints yet; train first (`groklab train --out {run_dir}`)")
    ensure_analysis(run_dir)
    summary, arrays = read_analysis(run_dir)
    d = MLPData(run, summary, arrays)
    fix = f"delete analysis.json and analysis.npz and run `groklab analyze {run_dir}`"
    if summary.get("family") not in (None, "mlp") or summary.get("task") not in (None, d.task):
        raise RunError(f"{run_dir}/analysis.json describes a {summary.get('family')} {summary.get('task')} "
                       f"run, not this mlp {d.task} run: {fix}")
    need = MODULAR_NPZ if d.task == "modular" else PARITY_NPZ
    missing = [k for k in need if k not in arrays]
    missing += [k for k in (MODULAR_JSON if d.task == "modular" else ()) if k not in summary]
    if missing:
        raise RunError(f"{run_dir}: the analysis lacks {', '.join(missing)} (docs/analysis_mlp.md); "
                       f"it was written by an older groklab: {fix}")
    if len(d.steps) and d.final_step < run.steps[-1]:
        d.notes.append(f"The analysis covers steps up to {d.final_step:,} but the run has checkpoints "
                       f"to {run.steps[-1]:,}; re-run `groklab analyze`.")
    return d


def group_logits(W_input: np.ndarray, W_output: np.ndarray, act: str, neurons: list[int] | None,
                 a: int, b: int) -> np.ndarray:
    """``[p]`` logits of the pair (a, b) that only ``neurons`` produce (None: all of them):
    ``act(W_input[a] + W_input[b])`` masked to the group, times ``W_output`` (float64).

    The page's script computes the same sum in the browser; ``analysis.mlp.group_logits`` is the
    analysis's form of it on a state dict. Source: PAIR ``mod-bot-logits`` (pair.md §2.8).

    Args:
        W_input: [p, H]. W_output: [H, p]. act: ``"relu"`` or ``"quadratic"`` (x^2).
    """
    pre = np.asarray(W_input, np.float64)[a] + np.asarray(W_input, np.float64)[b]  # (H,)
    h = np.maximum(pre, 0.0) if act == "relu" else pre * pre
    mask = np.zeros_like(h)
    mask[list(range(h.size)) if neurons is None else list(neurons)] = 1.0
    return (h * mask) @ np.asarray(W_output, np.float64)
