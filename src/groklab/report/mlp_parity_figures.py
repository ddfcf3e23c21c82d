"""Figures of a sparse-parity MLP run (PAIR, "Generalizing With 1s and 0s"; pair.md §1.3, §2.4):
accuracy and loss, the W_input heatmap and its W_output column at the slider's checkpoint, every
W_input weight through training, and the live distractor weights.

``W_in`` is ``[n_bits + 1, H]``: rows 0 .. k-1 read the parity bits, rows k .. n_bits-1 the
distractors, the last row the constant-1 bias feature. Each function takes an ``MLPData`` and
returns a ``base.Figure``; public wrappers are in ``groklab.report.figures``.
"""

from __future__ import annotations

import numpy as np

from .base import Figure, f32, new_figure
from .mlp_data import MLPData
from .mlp_figures import TEST, colour_scale, training_figure
from .trajectory import frame_indices

PARITY_CLIP = 4.5  # PAIR's W_input colour scale on this task
MAX_LINE_POINTS = 60  # checkpoints per line of "W_input over training" (n_bits x H lines: ~1 MB at 60)
PARITY_BIT, DISTRACTOR, BIAS = "#b4cc16", "#888888", "#f45ca2"


def _marks(d: MLPData) -> list[tuple[int | None, str, str]]:
    lvl = d.summary.get("acc_level", 0.9)
    return [(d.summary.get("prune_step"), "distractors pruned at", "#444"),
            (d.summary.get("acc_jump_step"), f"test acc ≥ {lvl:g} at", TEST)]


def parity_training_figure(d: MLPData) -> Figure:
    """Accuracy (y from 0.45, as PAIR) and loss (log y); the prune step and the accuracy jump dashed."""
    f = training_figure(d, _marks(d), n_classes=2, acc_range=(0.45, 1.01))
    f.caption = ("Train (purple) and test (green) accuracy and loss; the black line marks the slider's "
                 "checkpoint, the dashed lines the step the last distractor weight was pruned and the step "
                 "test accuracy jumped.")
    return f


def digit_labels(n_bits: int) -> list[str]:
    """x labels of the W_input heatmap: the digits ``0 .. n_bits-1`` and ``Bias``."""
    return [str(i) for i in range(n_bits)] + ["Bias"]


def parity_weights_figure(d: MLPData, c: int | None = None) -> Figure:
    """W_input at checkpoint index ``c`` (default the last; x: digit, y: neuron) and the W_output
    column beside it (PAIR ``sparse-parity`` heatmap, RdBu clipped at ±4.5)."""
    import plotly.graph_objects as go

    c = len(d.steps) - 1 if c is None else int(c)
    W_in, W_out = d.arrays["W_in"][c], d.arrays["W_out"][c]  # (n+1, H), (H,)
    n_bits, H = W_in.shape[0] - 1, W_in.shape[1]
    clip, note = colour_scale(d.arrays["W_in"][-1], PARITY_CLIP)
    clip_o, _ = colour_scale(d.arrays["W_out"][-1], PARITY_CLIP)
    rows = [f"n{j}" for j in range(H)]
    fig = new_figure(1, 2, height=max(300, 120 + 13 * H), column_widths=[0.86, 0.14], horizontal_spacing=0.09,
                     subplot_titles=("W_input (rows: neurons)", "W_output"))
    fig.add_trace(go.Heatmap(z=f32(W_in.T), x=digit_labels(n_bits), y=rows, zmin=-clip, zmax=clip, zmid=0,
                             colorscale="RdBu", reversescale=True, colorbar=dict(x=0.79, thickness=10),
                             hovertemplate="%{y}, digit %{x}: %{z:.3g}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Heatmap(z=f32(W_out[:, None]), x=["out"], y=rows, zmin=-clip_o, zmax=clip_o, zmid=0,
                             colorscale="RdBu", reversescale=True, colorbar=dict(x=1.0, thickness=10),
                             hovertemplate="%{y}: %{z:.3g}<extra></extra>"), row=1, col=2)
    k = int(d.run.config.task.k)
    fig.add_vrect(x0=-0.5, x1=k - 0.5, line=dict(color=PARITY_BIT, width=2), row=1, col=1)
    for col in (1, 2):
        fig.update_yaxes(autorange="reversed", type="category", tickfont=dict(size=9),
                         showticklabels=col == 1, row=1, col=col)
    fig.update_xaxes(type="category", title_text="digit", row=1, col=1)
    cap = (f"The first {k} digits (boxed) decide the label; the other {n_bits - k} distract. W_input {note}. "
           "A generalising network keeps weights only on the boxed digits and the bias.")
    return Figure("fig-parity-weights", "W_input at the slider's checkpoint", cap, fig)


def _lines(steps: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every column of ``W`` ``[C, m]`` as one line over ``steps``, NaN between lines."""
    C, m = W.shape
    x = np.concatenate([np.append(steps, np.nan)] * m) if m else np.zeros(0)
    y = np.concatenate([np.append(W[:, i], np.nan) for i in range(m)]) if m else np.zeros(0)
    return x, y


def parity_trajectory_figure(d: MLPData) -> Figure:
    """Every W_input weight vs step (PAIR "W_input Over Training"): parity-bit weights #b4cc16,
    distractors grey at 0.1 opacity, the bias pink; a black line at the slider's checkpoint."""
    import plotly.graph_objects as go

    keep = frame_indices([int(s) for s in d.steps], [int(s) for s in d.steps], MAX_LINE_POINTS)
    W = d.arrays["W_in"][keep].astype(np.float64)  # (C, n+1, H)
    C, n1, H = W.shape
    k = int(d.run.config.task.k)
    steps = d.steps[keep].astype(np.float64)
    fig = new_figure(height=430)
    kinds = ((slice(k, n1 - 1), "distractor digits", DISTRACTOR, 0.1, 1),
             (slice(n1 - 1, n1), "bias", BIAS, 0.9, 1.3),
             (slice(0, k), f"first {k} digits (parity)", PARITY_BIT, 1.0, 1.6))
    for rows, name, col, opacity, width in kinds:
        x, y = _lines(steps, W[:, rows, :].reshape(C, -1))
        fig.add_trace(go.Scatter(x=f32(x), y=f32(y), mode="lines", name=name, opacity=opacity,
                                 line=dict(color=col, width=width), hoverinfo="skip", connectgaps=False))
    last = float(d.steps[d.frames[-1]])
    fig.add_shape(type="line", xref="x", yref="paper", x0=last, x1=last, y0=0, y1=1, line=dict(color="#111"))
    for s, _, col in _marks(d):
        if s is not None:
            fig.add_vline(x=s, line=dict(color=col, dash="dash", width=1.3))
    lim = float(np.abs(W).max(initial=1e-9))
    fig.update_yaxes(title_text="weight", range=[-3, 3] if lim <= 3 else [-1.05 * lim, 1.05 * lim])
    fig.update_xaxes(title_text="step", tickformat=",")
    fig.update_layout(legend=dict(orientation="h", y=1.1, x=1, xanchor="right"))
    cap = (f"Every W_input weight through training (at {C} checkpoints). Most weights move smoothly from "
           "the memorising solution to the generalising one; test accuracy jumps when weight decay prunes "
           "the last distractor weights (grey) to zero.")
    return Figure("fig-parity-trajectory", "W_input over training", cap, fig)


def live_distractors_figure(d: MLPData) -> Figure:
    """Distractor weights with |w| above the analysis' threshold per checkpoint, with test accuracy
    on the right axis; the prune step and the accuracy jump dashed."""
    import plotly.graph_objects as go

    fig = new_figure(1, 1, height=380, specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=d.steps, y=d.arrays["live_distractors"].astype(np.int64), mode="lines+markers",
                             marker=dict(size=3), line=dict(color="#444"), name="live distractor weights",
                             hovertemplate="step %{x}: %{y} live<extra></extra>"), secondary_y=False)
    acc = d.metric("test_acc")
    if np.isfinite(acc).any():
        fig.add_trace(go.Scatter(x=d.metric_steps, y=f32(acc), mode="lines", line=dict(color=TEST, width=1.5),
                                 name="test accuracy", hovertemplate="step %{x}: %{y:.3f}<extra></extra>"),
                      secondary_y=True)
    for s, label, col in _marks(d):
        if s is not None:
            fig.add_vline(x=s, line=dict(color=col, dash="dash", width=1.3),
                          annotation_text=f"{label} {s:,}", annotation_font=dict(size=10, color=col))
    thr = d.summary.get("live_threshold")
    fig.update_yaxes(title_text="live distractor weights", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title_text="test accuracy", range=[0.45, 1.01], dtick=0.1, secondary_y=True,
                     showgrid=False)
    fig.update_xaxes(title_text="step", tickformat=",")
    fig.update_layout(legend=dict(orientation="h", y=1.12, x=1, xanchor="right"))
    cap = (f"Distractor weights with |w| > {thr:g} (still alive). " if thr is not None else "") + (
        "PAIR: the rapid generalisation occurs when the last weights on the distracting digits are pruned.")
    return Figure("fig-live-distractors", "Live distractor weights", cap, fig)
