"""Figures over training time: loss and accuracy curves, and the progress measures.

Progress measures follow Nanda et al. 2023 §5.1 (restricted and excluded loss, Gini coefficients of
the Fourier norms of W_E and W_L, sum of squared weights); the paper's Figures 2 and 6.
"""

from __future__ import annotations

import numpy as np

from .base import Figure, f32, log_range, mark_spikes, new_figure, shade_phases
from .data import ReportData

TRAIN, TEST = "#1f77b4", "#ff7f0e"


def _log_x_buttons() -> list[dict]:
    return [dict(type="buttons", direction="left", x=1.0, xanchor="right", y=1.13, yanchor="top",
                 showactive=True, font=dict(size=10), buttons=[
                     dict(label="linear steps", method="relayout",
                          args=[{f"xaxis{s}.type": "linear" for s in ("", "2", "3", "4", "5", "6")}]),
                     dict(label="log steps", method="relayout",
                          args=[{f"xaxis{s}.type": "log" for s in ("", "2", "3", "4", "5", "6")}]),
                 ])]


def loss_figure(d: ReportData) -> Figure:
    """Train and test loss (log y) and accuracy vs step, phases shaded (paper Figure 2)."""
    import plotly.graph_objects as go

    m = d.run.metrics
    step = np.array([r["step"] for r in m])
    fig = new_figure(1, 2, height=400, subplot_titles=("cross-entropy loss", "accuracy"),
                     horizontal_spacing=0.09)
    losses = [[r.get(f"{s}_loss", np.nan) for r in m] for s in ("train", "test")]
    for col, key, ytype in ((1, "loss", "log"), (2, "acc", "linear")):
        for split, colour in (("train", TRAIN), ("test", TEST)):
            y = f32([r.get(f"{split}_{key}", np.nan) for r in m])
            if key == "loss":
                y = np.maximum(y, np.float32(1e-12))
            fig.add_trace(go.Scatter(x=step, y=y, name=f"{split} {key}", mode="lines",
                                       line=dict(color=colour, dash="solid" if key == "loss" else "dot"),
                                       hovertemplate="step %{x}<br>%{y:.3g}"), row=1, col=col)
        fig.update_yaxes(type=ytype, row=1, col=col, title_text="loss" if key == "loss" else "accuracy",
                         dtick=1 if ytype == "log" else None,
                         range=log_range(*losses, [np.log(d.p)]) if ytype == "log" else [-0.03, 1.03])
        fig.update_xaxes(title_text="step", row=1, col=col)
    fig.add_hline(y=float(np.log(d.p)), line=dict(color="#999", dash="dash", width=1), row=1, col=1,
                  annotation_text="uniform guess ln p", annotation_font_size=10)
    shade_phases(fig, d.phases, [(1, 1), (1, 2)], x_max=float(step.max(initial=1)))
    spikes = mark_spikes(fig, m, {"train_loss": TRAIN, "test_loss": TEST}, row=1, col=1)
    fig.update_layout(updatemenus=_log_x_buttons(), legend=dict(orientation="h", y=-0.18))
    return Figure("fig-loss", "Loss and accuracy",
                  "Train loss falls within a few hundred steps while test loss rises (memorisation); "
                  "much later test loss drops and test accuracy jumps to 100% (grokking)." + spikes, fig)


def _series(cks: list[dict], key: str) -> np.ndarray:
    return f32([c.get(key, np.nan) if c.get(key) is not None else np.nan for c in cks])


def progress_figure(d: ReportData) -> Figure:
    """The progress measures of paper §5.1 / Figure 6, one panel each, phases shaded."""
    import plotly.graph_objects as go

    cks = d.checkpoints
    step = np.array([c["step"] for c in cks])
    titles = ("excluded loss (key freqs removed) vs train/test", "restricted loss (key freqs only) vs "
              "train/test", "test loss / restricted loss", "Gini of Fourier norms", "sum of squared "
              "weights", "excluded loss per key frequency")
    fig = new_figure(2, 3, height=700, subplot_titles=titles, horizontal_spacing=0.07,
                     vertical_spacing=0.2)
    tr, te = _series(cks, "train_loss"), _series(cks, "test_loss")
    floor = np.float32(1e-12)

    def line(y, name, colour, row, col, dash="solid", legend=True):
        fig.add_trace(go.Scatter(x=step, y=np.maximum(y, floor), name=name, mode="lines",
                                 line=dict(color=colour, dash=dash, width=2 if dash == "solid" else 1.3),
                                 legendgroup=name, showlegend=legend,
                                 hovertemplate=f"{name}<br>step %{{x}}<br>%{{y:.3g}}<extra></extra>"),
                      row=row, col=col)

    line(_series(cks, "excluded_loss"), "excluded loss", "#d62728", 1, 1)
    line(_series(cks, "restricted_loss"), "restricted loss", "#2ca02c", 1, 2)
    for col in (1, 2):
        line(tr, "train loss", TRAIN, 1, col, "dot", legend=col == 1)
        line(te, "test loss", TEST, 1, col, "dot", legend=col == 1)
    restricted = _series(cks, "restricted_loss")
    with np.errstate(divide="ignore", invalid="ignore"):
        line(te / restricted, "test / restricted", "#9467bd", 1, 3)
    line(_series(cks, "gini_W_E"), "Gini W_E", "#17becf", 2, 1)
    line(_series(cks, "gini_W_L"), "Gini W_L", "#bcbd22", 2, 1)
    line(_series(cks, "sum_sq_weights"), "Σ w²", "#7f7f7f", 2, 2)
    by_freq = [c.get("excluded_loss_by_freq") or {} for c in cks]
    palette = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]
    for i, k in enumerate(d.key_freqs):
        y = f32([b.get(str(k), np.nan) for b in by_freq])
        line(y, f"excluded, only k={k} removed", palette[i % len(palette)], 2, 3)
    for (r, c), (ytitle, ytype) in {(1, 1): ("loss", "log"), (1, 2): ("loss", "log"),
                                    (1, 3): ("test / restricted", "log"), (2, 1): ("Gini", "linear"),
                                    (2, 2): ("Σ w²", "linear"), (2, 3): ("loss", "log")}.items():
        fig.update_yaxes(title_text=ytitle, type=ytype, row=r, col=c,
                         dtick=1 if ytitle == "loss" else None)  # decades only
        fig.update_xaxes(title_text="step", row=r, col=c)
    fig.update_annotations(font_size=12)
    shade_phases(fig, d.phases, [(r, c) for r in (1, 2) for c in (1, 2, 3)], label=False)
    fig.update_layout(updatemenus=_log_x_buttons(), legend=dict(orientation="h", y=-0.12))
    return Figure("fig-progress", "Progress measures",
                  "Excluded loss rises and restricted loss falls during circuit formation, before test "
                  "loss moves; Gini jumps and Σw² drops in cleanup.", fig)
