"""``write_report``'s steps: load, build the figures, render the page, write it, export images."""

from __future__ import annotations

import html
from pathlib import Path

from ..config import ConfigError
from ..runs import atomic_write, read_config
from .base import Figure
from .clock_pizza import clock_pizza_section
from .data import load_report_data
from .figures_circuit import (
    attention_figure,
    circles_figure,
    clusters_figure,
    fourier_norms_figure,
    logits_figure,
    neuron_heatmaps_figure,
    wl_figure,
)
from .figures_training import loss_figure, progress_figure
from .page import render_page
from .story import story_paragraphs, summary_rows
from .trajectory import activations_at, build_trajectory, pick_neurons

FORMATS = ("png", "svg")


def _intro(text: str) -> str:
    return f"<p>{text}</p>"


def build_report(run_dir: Path, output: Path | None, fmt: str | None, **sweep_options) -> Path:
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"format {fmt!r}: choose png or svg (or leave it out for the page only)")
    if (run_dir / "sweep.json").exists():  # a directory written by `groklab sweep`
        from .sweep import build_sweep_report

        return build_sweep_report(run_dir, output, fmt=fmt, **sweep_options)
    if given := [f"--{k.replace('_', '-')}" for k, v in sweep_options.items() if v not in (None, False)]:
        raise ConfigError(f"{', '.join(given)}: only for a sweep directory (one with sweep.json); "
                          f"{run_dir} has none: leave them out for a run's report")
    cfg = read_config(run_dir)  # RunError on a missing or corrupt directory
    if cfg.model.family == "mlp":
        from .mlp import build_mlp_report

        return build_mlp_report(run_dir, output, fmt)
    if cfg.task.name != "modular":
        from .zoo import build_zoo_report

        return build_zoo_report(run_dir, output, fmt)
    d = load_report_data(run_dir)
    output = output or run_dir / "report.html"

    neurons = pick_neurons(d, per_cluster=2, max_total=12)
    acts = activations_at(d, d.final_step, [n for n, _ in neurons], fast=False)  # the model itself
    traj = build_trajectory(d)
    training = [loss_figure(d)]
    progress = [progress_figure(d)]
    circuit = [fourier_norms_figure(d), circles_figure(d), clusters_figure(d),
               neuron_heatmaps_figure(d, [n for n, _ in neurons], acts, [lab for _, lab in neurons]),
               wl_figure(d), attention_figure(d), logits_figure(d)]
    sections: list[tuple[str, str, str, list[Figure]]] = [
        ("training", "Training curves", _intro(
            "Loss on a log scale; the shaded bands are the three phases found by the analysis "
            "(memorisation, circuit formation, cleanup). Toggle the step axis between linear and log."),
         training),
        ("progress", "Progress measures", _intro(
            "Measures from Nanda et al. (2023, §5.1) that track the Fourier circuit even while test "
            "loss is flat. <i>Restricted loss</i> keeps only the key-frequency terms cos(w_k(a+b)), "
            "sin(w_k(a+b)) of the logits; <i>excluded loss</i> removes them and is measured on the "
            "training data. The Gini coefficient measures how sparse the weights are in the Fourier "
            "basis (0 = spread evenly, 1 = one component)."), progress),
        ("trajectory", "Watch it grok: the weights through training", _intro(
            "Drag the slider (or press play) to move through the checkpoints: the black line on the "
            "loss curve shows where you are, and the embedding spectrum, the circles and the neuron "
            "activations below show the weights at that checkpoint."), traj.figures),
        ("circuit", "The algorithm at the end of training", _intro(
            f"The final analysed checkpoint (step {d.final_step:,}) reverse-engineered: which frequencies "
            "it uses, how the embedding, the neurons, attention and W_L carry them, and what the "
            "logits look like in the Fourier basis."), circuit),
    ]
    if (cp := clock_pizza_section(d.summary, d.arrays)) is not None:  # modular addition only
        sections.append(cp)
    c = d.run.config
    title = f"groklab report: {c.preset or 'run'} {html.escape(run_dir.name)}"
    sub = (f"(a {html.escape(c.task.operation)} b) mod {c.task.p} · {c.model.n_layers}-layer transformer "
           f"· {len(d.run.metrics):,} evaluations · {len(d.run.steps):,} checkpoints")
    page = render_page(title, sub, story_paragraphs(d), summary_rows(d), sections, traj.payload,
                       "trajectory")
    atomic_write(output, page)
    if fmt is not None:
        from .export import export_figures

        export_figures(output, [f for _, _, _, figs in sections for f in figs], fmt)
    return output
