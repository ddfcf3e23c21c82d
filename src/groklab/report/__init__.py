"""The interactive HTML report of a run: ``groklab report RUN [-o FILE] [--format png|svg]``.

One self-contained page (plotly.js inlined, no network) that tells the run's grokking story: the
summary, loss curves with the phases shaded, the progress measures of Nanda et al. (2023) §5, the
Fourier structure of the final circuit, and a checkpoint slider that replays the weights through
training. A run of another task (digit addition, repeated subsequences, max element) gets the
page of ``zoo.py`` instead: loss by part and its phase changes, attention on an example sequence
with the slider, and the induction or skip-trigram scores; no Fourier section. Every figure is
also a public function of a loaded run in ``groklab.report.figures``. See ``docs/report.md``.
Only this package imports plotly, and lazily.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_report"]


def write_report(run_dir: Path, output: Path | None = None, fmt: str | None = None) -> Path:
    """Write the report of ``run_dir`` and return the page's path.

    Runs ``groklab analyze`` first if ``RUN/analysis.json`` or ``RUN/analysis.npz`` is missing.

    Args:
        run_dir: a run directory written by ``groklab train``.
        output: the HTML file (default ``RUN/report.html``).
        fmt: ``"png"`` or ``"svg"`` to also write every figure as an image beside the page
            (``report-loss.png``, ...); None for the page only.

    Raises:
        RunError: the run directory or its analysis cannot be read, or the export fails.
        ConfigError: ``fmt`` is not png, svg or None.
    """
    from .build import build_report

    return build_report(Path(run_dir), None if output is None else Path(output), fmt)
