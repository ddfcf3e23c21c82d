"""Figures of a modular-addition MLP run (PAIR, Pearce et al. 2023, pair.md §2): training curves,
W_input / W_output heatmaps and waves, their DFTs, the per-group logits and the progress
measures (the stars and the five-neuron circle are in ``mlp_star_figures``).

Each takes an ``MLPData`` and returns a ``base.Figure``. The slider's figures take ``c``, an index
into the analysed checkpoints ``d.steps`` (default the last), and are drawn at that checkpoint (the
page draws the last and the slider restyles them). Colours are PAIR's: train #9730c9, test
#4CB769, the correct answer #FD4376. The public wrappers are in ``groklab.report.figures``.
"""

from __future__ import annotations

import math

import numpy as np

from .base import Figure, f32, log_range, mark_spikes, new_figure
from .mlp_data import MLPData, group_logits

TRAIN, TEST, ANSWER, OTHER = "#9730c9", "#4CB769", "#FD4376", "#b8bec7"
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
PAIR_CLIP = 5.0  # PAIR's W_input / W_output colour scale (±5); its DFT heatmaps use ±20 = 4 x 5
LOSS_FLOOR = 1e-12


def nice_ceil(x: float) -> float:
    """The smallest of 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 (times a power of ten) that is >= ``x``."""
    if not x > 0:
        return 1.0
    e = math.floor(math.log10(x))
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        v = float(f"{m}e{e}")  # exact decimal: 0.3, not 3 * 0.1
        if v >= x * (1 - 1e-9):
            return v
    return float(f"1e{e + 1}")


def colour_scale(W: np.ndarray, pair_clip: float) -> tuple[float, str]:
    """PAIR's clip ``pair_clip`` when it fits the weights (99th percentile of |W| within a factor 2
    of it), else a round number just above that percentile; and a note for the caption."""
    q = float(np.quantile(np.abs(W), 0.99)) if np.size(W) else 0.0
    if pair_clip / 2 <= q <= pair_clip * 2:
        return pair_clip, f"clipped at ±{pair_clip:g} as PAIR does"
    clip = nice_ceil(q)
    size = "smaller" if q < pair_clip else "larger"
    return clip, (f"clipped at ±{clip:g}: this run's weights are {size} than PAIR's (99% of |w| ≤ {q:.3g}), "
                  f"so PAIR's ±{pair_clip:g} would {'wash them out' if size == 'smaller' else 'saturate'}")


def neuron_labels(d: MLPData) -> list[str]:
    """The heatmaps' row labels, in ``sort_order``: ``n7 · k4`` (k0: the Const row won)."""
    k = d.arrays["neuron_k"].astype(int)
    return [f"n{j} · k{k[j]}" for j in d.sort_order]


def chance_loss(d: MLPData, n_classes: int) -> float:
    """The uniform guess's loss in the run's units (PAIR's class-mean CE is ln C / C)."""
    c = math.log(n_classes)
    return c / n_classes if d.run.config.train.loss_reduction == "class_mean" else c


def training_figure(d: MLPData, marks: list[tuple[int | None, str, str]] = (), n_classes: int | None = None,
                    acc_range: tuple[float, float] = (-0.02, 1.02)) -> Figure:
    """Train / test accuracy (top) and loss (log y, bottom) vs step, in PAIR's colours; a black line
    at the slider's checkpoint (``shapes[0]``) and a dashed line per ``(step, label, colour)``."""
    import plotly.graph_objects as go

    x = d.metric_steps
    fig = new_figure(2, 1, height=520, shared_xaxes=True, vertical_spacing=0.06)
    for row, key in ((1, "acc"), (2, "loss")):
        for split, col in (("train", TRAIN), ("test", TEST)):
            y = d.metric(f"{split}_{key}")
            if not np.isfinite(y).any():
                continue
            fig.add_trace(go.Scatter(x=x, y=f32(np.maximum(y, LOSS_FLOOR) if key == "loss" else y),
                                     mode="lines", name=split, legendgroup=split, showlegend=row == 1,
                                     line=dict(color=col, width=2),
                                     hovertemplate=f"{split} {key}<br>step %{{x}}: %{{y:.4g}}"),
                          row=row, col=1)
    last = int(d.steps[d.frames[-1]])
    fig.add_shape(type="line", xref="x", yref="paper", x0=last, x1=last, y0=0, y1=1,
                  line=dict(color="#111", width=1.5))  # shapes[0]: the slider's checkpoint
    n_classes = n_classes or d.p
    chance = chance_loss(d, n_classes)
    fig.add_hline(y=chance, line=dict(color="#999", dash="dash", width=1), row=2, col=1)
    guess = f"uniform guess (ln {n_classes}" + (f" / {n_classes})" if chance < math.log(n_classes) else ")")
    fig.add_annotation(text=guess, x=1, xref="x2 domain", xanchor="right", y=math.log10(chance), yref="y2",
                       yanchor="bottom", showarrow=False, font=dict(size=10, color="#777"))  # log axis: log10
    for s, label, col in marks:
        if s is not None:
            fig.add_shape(type="line", xref="x", yref="paper", x0=s, x1=s, y0=0, y1=1,
                          line=dict(color=col, width=1.5, dash="dash"))
            fig.add_annotation(x=s, y=1.0, xref="x", yref="paper", text=f"{label} {s:,}", showarrow=False,
                               yanchor="bottom", font=dict(size=10, color=col))
    fig.update_yaxes(range=list(acc_range), title_text="accuracy", row=1, col=1)
    fig.update_yaxes(type="log", dtick=1, range=log_range(d.metric("train_loss"), d.metric("test_loss"),
                                                          [chance]), title_text="loss", row=2, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_xaxes(tickformat=",")
    spikes = mark_spikes(fig, d.run.metrics, {"train_loss": TRAIN, "test_loss": TEST}, row=2, col=1,
                         floor=LOSS_FLOOR)
    fig.update_layout(legend=dict(orientation="h", y=1.08, x=0, xanchor="left"), hovermode="x")
    return Figure("fig-traj-loss", "Accuracy and loss", "Train (purple) and test (green) accuracy (top) and "
                  "loss (log y, bottom); the black line marks the slider's checkpoint." + spikes, fig)


def first_at(d: MLPData, key: str, level: float) -> int | None:
    """The first evaluated step at which ``key`` reaches ``level`` (None if never)."""
    y = d.metric(key)
    idx = np.flatnonzero(np.nan_to_num(y, nan=-np.inf) >= level)
    return int(d.metric_steps[idx[0]]) if idx.size else None


def modular_training_figure(d: MLPData) -> Figure:
    """``training_figure`` with the grokking step (test accuracy >= 99%) dashed."""
    g = d.summary.get("grokking_step")
    f = training_figure(d, [(g, "test acc ≥ 99% at", TEST)])
    tr = first_at(d, "train_acc", 0.99)
    if tr is not None and g is not None and g - tr > 0.1 * max(d.final_step, 1):
        f.caption += (f" Train accuracy reached 99% at step {tr:,}, test accuracy only at {g:,}: "
                      "memorisation, then grokking.")
    elif tr is not None and g is not None:
        f.caption += " Train and test accuracy rise together: this model does not memorise first."
    elif tr is not None:
        f.caption += " Train accuracy reached 99%, test accuracy never did: memorisation."
    return f


def _last(d: MLPData, c: int | None) -> int:
    return len(d.steps) - 1 if c is None else int(c)


def weights_at(d: MLPData, c: int) -> tuple[np.ndarray, np.ndarray]:
    """``(W_input [p, H], W_output [H, p])`` at checkpoint index ``c`` (float32, as in the npz)."""
    return d.arrays["W_input"][c], d.arrays["W_output"][c]


def weights_figure(d: MLPData, c: int | None = None) -> Figure:
    """W_input (x: input number, y: neuron) and W_output (x: output number) at checkpoint ``c``, rows
    sorted by (frequency, angle), RdBu (PAIR ``mod-top-weights``)."""
    import plotly.graph_objects as go

    Wi, Wo = weights_at(d, _last(d, c))
    order, labels = d.sort_order, neuron_labels(d)
    ci, note_i = colour_scale(d.arrays["W_input"][-1], PAIR_CLIP)
    co, note_o = colour_scale(d.arrays["W_output"][-1], PAIR_CLIP)
    H = len(order)
    fig = new_figure(1, 2, height=max(260, 110 + 14 * H), horizontal_spacing=0.12,
                     subplot_titles=("W_input (rows: neurons)", "W_output (transposed)"))
    panels = ((1, Wi[:, order].T, ci, 0.44, "input"), (2, Wo[order], co, 1.0, "output"))
    for col, z, clip, cbx, what in panels:
        fig.add_trace(go.Heatmap(z=f32(z), y=labels, x=np.arange(d.p), zmin=-clip, zmax=clip, zmid=0,
                                 colorscale="RdBu", reversescale=True,
                                 colorbar=dict(x=cbx, thickness=10, len=0.9, title=dict(text="w")),
                                 hovertemplate=f"%{{y}}, {what} %{{x}}: %{{z:.3g}}<extra></extra>"),
                      row=1, col=col)
        fig.update_xaxes(title_text=f"{what} number", row=1, col=col)
        fig.update_yaxes(autorange="reversed", type="category", row=1, col=col, tickfont=dict(size=9))
    cap = f"Rows sorted by (frequency, angle). W_input {note_i}; W_output {note_o}."
    return Figure("fig-weights", "W_input and W_output at the slider's checkpoint", cap, fig)


def waves_figure(d: MLPData, c: int | None = None) -> tuple[Figure, list[tuple[int, int]]]:
    """Per frequency group (rows), every neuron's W_input column vs input number and W_output row vs
    output number at checkpoint ``c`` (PAIR ``mod-top-waves``); and ``(neuron, 0 in / 1 out)`` per trace."""
    import plotly.graph_objects as go

    Wi, Wo = weights_at(d, _last(d, c))
    groups = d.groups()
    titles = [t for label, ns in groups
              for t in (f"W_input, {label} ({len(ns)} neurons)", f"W_output, {label}")]
    n = len(groups)
    fig = new_figure(n, 2, height=80 + 190 * n, vertical_spacing=min(0.1, 0.45 / n), horizontal_spacing=0.07,
                     subplot_titles=titles)
    traces: list[tuple[int, int]] = []
    x = np.arange(d.p)
    for r, (label, ns) in enumerate(groups, start=1):
        for i, j in enumerate(ns):
            col = PALETTE[i % len(PALETTE)]
            for c, y in ((1, Wi[:, j]), (2, Wo[j])):
                fig.add_trace(go.Scatter(x=x, y=f32(y), mode="lines", line=dict(color=col, width=1.3),
                                         name=f"n{j}", showlegend=False,
                                         hovertemplate=f"n{j} ({label}), %{{x}}: %{{y:.3g}}<extra></extra>"),
                              row=r, col=c)
                traces.append((j, c - 1))
    for c, key in ((1, "W_input"), (2, "W_output")):
        lim = 1.05 * float(np.abs(d.arrays[key][d.frames]).max(initial=1e-9))
        fig.update_yaxes(range=[-lim, lim], col=c)
        fig.update_xaxes(title_text="input number" if c == 1 else "output number", row=len(groups), col=c)
    cap = ("Each line is one neuron: a group's neurons are waves of its frequency k (k periods over the "
           "p numbers), shifted by their angles. Before the model generalises they are noise.")
    return Figure("fig-waves", "The waves: W_input and W_output per frequency group", cap, fig), traces


def dft_figure(d: MLPData) -> Figure:
    """DFT of W_input and W_output at the final checkpoint, rows = neurons sorted, columns = the
    Fourier components Const, cos 1, sin 1, ... (PAIR ``mod-bot-dft``)."""
    import plotly.graph_objects as go

    order, labels = d.sort_order, neuron_labels(d)
    comp = [str(s) for s in d.arrays["fourier_labels"]]
    Di, Do = d.arrays["dft_W_input"][:, order].T, d.arrays["dft_W_output"][order]
    ci, _ = colour_scale(d.arrays["W_input"][-1], PAIR_CLIP)
    co, _ = colour_scale(d.arrays["W_output"][-1], PAIR_CLIP)
    H = len(order)
    fig = new_figure(2, 1, height=max(360, 160 + 28 * H), vertical_spacing=0.16,
                     subplot_titles=("DFT of W_input (F W_input, transposed)",
                                     "DFT of W_output (W_output Fᵀ)"))
    for row, z, clip, cby in ((1, Di, 4 * ci, 0.79), (2, Do, 4 * co, 0.21)):
        fig.add_trace(go.Heatmap(z=f32(z), x=comp, y=labels, zmin=-clip, zmax=clip, zmid=0, colorscale="RdBu",
                                 reversescale=True, colorbar=dict(y=cby, len=0.42, thickness=10),
                                 hovertemplate="%{y}, %{x}: %{z:.3g}<extra></extra>"), row=row, col=1)
        fig.update_yaxes(autorange="reversed", type="category", tickfont=dict(size=9), row=row, col=1)
        fig.update_xaxes(type="category", tickfont=dict(size=9), row=row, col=1)
    fig.update_xaxes(title_text="Fourier component", row=2, col=1)
    cap = (f"Final checkpoint (step {d.final_step:,}); colour clipped at ±{4 * ci:g} / ±{4 * co:g} (4× the "
           "weights' scale, as PAIR's ±20 is to its ±5). A neuron of frequency k lights up only its cos k "
           "and sin k columns: weight decay makes the weights sparse in this basis.")
    return Figure("fig-dft", "W_input and W_output in the Fourier basis", cap, fig)


def logits_payload(d: MLPData) -> dict:
    """What the page's per-group logits script needs: the final W_input / W_output (row-major,
    8 significant digits), the activation, and each panel's neurons (None = all)."""
    Wi, Wo = d.arrays["W_input"][-1], d.arrays["W_output"][-1]
    panels = [[label, ns] for label, ns in d.groups()] + [["All logits", None]]
    rnd = lambda W: [float(f"{v:.8g}") for v in np.asarray(W, np.float64).ravel()]  # noqa: E731
    return {"p": d.p, "H": int(Wi.shape[1]), "act": d.act, "W_input": rnd(Wi), "W_output": rnd(Wo),
            "panels": panels, "a": d.p // 4, "b": d.p // 2}


def group_logits_figure(d: MLPData, a: int | None = None, b: int | None = None,
                        payload: dict | None = None) -> Figure:
    """For the pair (a, b), the logits each frequency group alone produces (hidden layer masked to
    its neurons) and all of them, one bar chart each, the answer (a + b) mod p in #FD4376
    (PAIR ``mod-bot-logits``). Computed from ``logits_payload``'s numbers, as the page's script is."""
    import plotly.graph_objects as go

    L = payload or logits_payload(d)
    a = L["a"] if a is None else int(a) % d.p
    b = L["b"] if b is None else int(b) % d.p
    p, H = L["p"], L["H"]
    Wi, Wo = np.array(L["W_input"]).reshape(p, H), np.array(L["W_output"]).reshape(H, p)
    panels = L["panels"]
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    titles = [f"{lab} ({len(ns)} neurons)" if ns is not None else lab for lab, ns in panels]
    fig = new_figure(rows, cols, height=60 + 190 * rows, vertical_spacing=0.3 / rows, horizontal_spacing=0.06,
                     subplot_titles=titles)
    ans = (a + b) % p
    colours = [ANSWER if c == ans else OTHER for c in range(p)]
    for i, (label, ns) in enumerate(panels):
        y = group_logits(Wi, Wo, L["act"], ns, a, b)
        fig.add_trace(go.Bar(x=np.arange(p), y=f32(y), marker=dict(color=colours), showlegend=False,
                             name=label,
                             hovertemplate=f"{label}: logit of %{{x}} = %{{y:.3g}}<extra></extra>"),
                      row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(title_text="output number c", row=rows)
    fig.update_layout(bargap=0.1)
    cap = (f"a = {a}, b = {b}: the answer (a + b) mod {p} = {ans} in pink. Each group's logits are a wave "
           "cos(2πk(a + b − c)/p); the waves of the groups add up where c = a + b.")
    return Figure("fig-group-logits", "Logits per frequency group", cap, fig)


def progress_figure(d: MLPData) -> Figure:
    """DFT Gini of W_input (sparsity in the Fourier basis) and the weight norm per checkpoint."""
    import plotly.graph_objects as go

    x = d.steps
    fig = new_figure(2, 1, height=460, shared_xaxes=True, vertical_spacing=0.1,
                     subplot_titles=("Gini of W_input's Fourier norms (Const left out)", "weight L2 norm"))
    fig.add_trace(go.Scatter(x=x, y=f32(d.arrays["dft_gini"]), mode="lines+markers", marker=dict(size=3),
                             line=dict(color="#1f77b4"), name="DFT Gini",
                             hovertemplate="step %{x}: %{y:.3f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=f32(d.arrays["weight_l2"]), mode="lines+markers", marker=dict(size=3),
                             line=dict(color="#555"), name="‖w‖₂",
                             hovertemplate="step %{x}: %{y:.4g}<extra></extra>"), row=2, col=1)
    g = d.summary.get("grokking_step")
    if g is not None:
        fig.add_vline(x=g, line=dict(color=TEST, dash="dash", width=1.5), row="all", col=1)
    fig.update_yaxes(title_text="Gini", row=1, col=1)
    fig.update_yaxes(title_text="‖w‖₂", row=2, col=1)
    fig.update_xaxes(title_text="checkpoint step", row=2, col=1)
    fig.update_xaxes(tickformat=",")
    fig.update_layout(showlegend=False)
    w = d.arrays["weight_l2"]
    trend = ("falls from its peak as weight decay removes the memorising weights" if w[-1] < 0.8 * w.max()
             else "does not fall: weight decay is too weak here to prune anything")
    cap = ("The Gini coefficient rises as W_input concentrates on a few frequencies (0: spread evenly). "
           f"The weight norm {trend}. Dashed: test accuracy ≥ 99%.")
    if d.is_circle:
        cap += (" In the circle model the Gini is fixed (the embedding holds frequency 1 only): it is not a "
                "progress measure there.")
    return Figure("fig-progress", "Progress measures", cap, fig)
