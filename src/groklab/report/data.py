"""What the report reads: the run (config, metrics, checkpoints) and its analysis.

The analysis contract (written by ``groklab.analysis.pipeline.analyze_run``):
``RUN/analysis.json`` (key frequencies, neuron clusters, phase boundaries, per-checkpoint progress
measures) and ``RUN/analysis.npz`` (Fourier norms, circles, neuron FVE, logit and attention maps).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..runs import Run, RunError, load_run

ANALYSIS_JSON = "analysis.json"
ANALYSIS_NPZ = "analysis.npz"
NPZ_KEYS = ("steps", "embed_fourier_norms", "W_L_fourier_norms", "embed_key_planes",
            "neuron_frac_explained", "neuron_freq", "logit_fourier_norms", "W_L_fourier",
            "attn_eq_to_a", "embed_pca", "embed_pca_var")
PHASES = ("memorization_end", "circuit_formation_end", "cleanup_end")


@dataclass
class ReportData:
    """A run and its analysis, as the report needs them.

    Attributes:
        run: the loaded run.
        summary: ``analysis.json`` as a dict.
        arrays: ``analysis.npz`` as numpy arrays (keys ``NPZ_KEYS``).
    """

    run: Run
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(repr=False)

    @property
    def p(self) -> int:
        return int(self.summary.get("p", self.run.config.task.p))

    @property
    def key_freqs(self) -> list[int]:
        return [int(k) for k in self.summary.get("key_frequencies", [])]

    @property
    def phases(self) -> dict[str, int | None]:
        pb = self.summary.get("phase_boundaries") or {}
        return {k: pb.get(k) for k in PHASES}

    @property
    def final_step(self) -> int:
        """The checkpoint the analysis describes as final (the run's last if it is not on disk)."""
        s = self.summary.get("final_step")
        return int(s) if s is not None and int(s) in self.run.steps else self.run.steps[-1]

    @property
    def checkpoints(self) -> list[dict[str, Any]]:
        return list(self.summary.get("checkpoints", []))


def fourier_labels(p: int) -> list[str]:
    """``["Const", "cos 1", "sin 1", ...]``, the order of the analysis Fourier basis (length p)."""
    out = ["Const"]
    for k in range(1, (p - 1) // 2 + 1):
        out += [f"cos {k}", f"sin {k}"]
    return out[:p]


def _analysis_present(run_dir: Path) -> bool:
    return (run_dir / ANALYSIS_JSON).is_file() and (run_dir / ANALYSIS_NPZ).is_file()


def ensure_analysis(run_dir: Path) -> None:
    """Run ``groklab analyze`` on ``run_dir`` if its analysis files are missing.

    Raises:
        RunError: the analysis package is unavailable or the analysis fails on this run.
    """
    if _analysis_present(run_dir):
        return
    try:
        from ..analysis.pipeline import analyze_run
    except ImportError as e:
        raise RunError(f"{run_dir}: no {ANALYSIS_JSON}/{ANALYSIS_NPZ} and the analysis module cannot "
                       f"be imported ({e}); run `groklab analyze {run_dir}` first") from None
    analyze_run(run_dir, progress=False)
    if not _analysis_present(run_dir):
        raise RunError(f"{run_dir}: `groklab analyze` did not write {ANALYSIS_JSON} and {ANALYSIS_NPZ}")


def read_analysis(run_dir: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``analysis.json`` as a dict and ``analysis.npz`` as arrays.

    Raises:
        RunError: either file is unreadable or corrupt (the message says how to rebuild them).
    """
    try:
        summary = json.loads((run_dir / ANALYSIS_JSON).read_text())
        with np.load(run_dir / ANALYSIS_NPZ) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise RunError(f"{run_dir}: cannot read the analysis ({e}); delete {ANALYSIS_JSON} and "
                       f"{ANALYSIS_NPZ} and run `groklab analyze {run_dir}`") from None
    return summary, arrays


def load_report_data(run_dir: str | Path) -> ReportData:
    """Load a run and its analysis, running the analysis first if its files are missing.

    Raises:
        RunError: the directory is not a readable run, has no checkpoints, or its analysis files
            are corrupt or lack a key of the contract.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)  # RunError on a missing or corrupt directory
    if not run.steps:
        raise RunError(f"{run_dir}: no checkpoints yet; train first (`groklab train --out {run_dir}`)")
    ensure_analysis(run_dir)
    summary, arrays = read_analysis(run_dir)
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise RunError(f"{run_dir}/{ANALYSIS_NPZ}: missing {', '.join(missing)}; it was written by an "
                       f"older groklab: delete it and run `groklab analyze {run_dir}`")
    return ReportData(run, summary, arrays)
