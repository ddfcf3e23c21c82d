"""The interactive HTML report of a run: ``groklab report RUN [-o FILE] [--format png|svg]``.

One self-contained page (plotly.js inlined, no network) that tells the run's grokking story: the
summary, loss curves with the phases shaded, the progress measures of Nanda et al. (2023) §5, the
Fourier structure of the final circuit, and a checkpoint slider that replays the weights through
training. A run of another task (digit addition, repeated subsequences, max element) gets the
page of ``zoo.py`` instead: loss by part and its phase changes, attention on an example sequence
with the slider, and the induction or skip-trigram scores; no Fourier section. Every figure is
also a public function of a loaded run in ``groklab.report.figures``. A sweep directory (one with
``sweep.json``, written by ``groklab sweep``) gets the sweep's page instead (``sweep.py``: PAIR's
small multiples of the members' outcomes). See ``docs/report.md``.
Only this package imports plotly, and lazily.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_report"]


def write_report(run_dir: Path, output: Path | None = None, fmt: str | None = None, *,
                 facet: str | None = None, x: str | None = None, y: str | None = None,
                 member_reports: bool = False) -> Path:
    """Write the report of ``run_dir`` and return the page's path.

    Runs ``groklab analyze`` first if ``RUN/analysis.json`` or ``RUN/analysis.npz`` is missing.

    Args:
        run_dir: a run directory written by ``groklab train``, or a sweep directory written by
            ``groklab sweep`` (it has ``sweep.json``).
        output: the HTML file (default ``RUN/report.html``).
        fmt: ``"png"`` or ``"svg"`` to also write every figure as an image beside the page
            (``report-loss.png``, ...); None for the page only.
        facet, x, y: sweeps only: the grid keys of the small multiples' panels, x and y axes
            (dotted names, the part after the dot, or ``"seed"``); None for the defaults.
        member_reports: sweeps only: first write each member's own report.

    Raises:
        RunError: the run directory or its analysis cannot be read, a sweep's ``sweep.json`` or
            ``results.csv`` is missing or corrupt, or the export fails.
        ConfigError: ``fmt`` is not png, svg or None; ``facet``/``x``/``y`` is not a key of the
            sweep; a sweep option is given for a run that is not a sweep.
    """
    from .build import build_report

    return build_report(Path(run_dir), None if output is None else Path(output), fmt, facet=facet, x=x, y=y,
                        member_reports=member_reports)
