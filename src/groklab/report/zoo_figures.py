"""Figures of a non-modular run: loss by part, its phase changes, attention on an example sequence,
induction and previous-token scores (repeated subsequences), END -> special attention (max element).

Each takes a ``ZooData`` and returns a ``base.Figure`` (id, title, caption, plotly figure); the
public wrappers are in ``groklab.report.figures``. Parts and phase changes follow Nanda & Lieberum
(2022, section "Phase Changes"); the head scores follow Olsson et al. (2022).
"""

from __future__ import annotations

import numpy as np

from .base import Figure, f32, log_range, mark_spikes, new_figure
from .zoo_data import SCORE_SEQS, ZooData, part_label, report_scores

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
FLOOR = 1e-12  # losses drawn on a log axis
SHADE = "rgba(239,85,59,0.10)"


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _curve(d: ZooData, split: str, part: str | None) -> np.ndarray:
    if part is None:
        return d.loss(split)
    return d.loss_by_part(split)[:, d.parts.index(part)]


def _has(y: np.ndarray) -> bool:
    return bool(np.isfinite(y).any())


def _phase(d: ZooData, curve: str) -> dict[str, int] | None:
    pc = d.phase_changes.get(curve)
    return pc if isinstance(pc, dict) and pc.get("steepest") is not None else None


def main_split(d: ZooData) -> str:
    """The curve the story follows: test loss with finite data (grokking), else train loss (every
    batch is fresh)."""
    return "test" if d.finite and _has(d.loss("test")) else "train"


def loss_parts_figure(d: ZooData) -> Figure:
    """Loss of every part (and the total), train solid and test dotted, on linear and log y;
    diamonds mark each curve's phase change (its steepest drop)."""
    import plotly.graph_objects as go

    x = d.metric_steps
    fig = new_figure(1, 2, height=430, horizontal_spacing=0.08,
                     subplot_titles=("loss by part (linear y)", "loss by part (log y)"))
    curves = [(None, "total", "#111")]
    curves += [(p, part_label(d.task, p), colour(i)) for i, p in enumerate(d.parts)]
    marks: dict[int, tuple[list, list, list, list]] = {1: ([], [], [], []), 2: ([], [], [], [])}
    ys_all = []
    for part, label, col in curves:
        for split, dash in (("train", "solid"), ("test", "dot")):
            y = _curve(d, split, part)
            if not _has(y):
                continue
            ys_all.append(y)
            width = 2.6 if part is None else 1.5
            for c in (1, 2):
                fig.add_trace(go.Scatter(
                    x=x, y=f32(np.maximum(y, FLOOR) if c == 2 else y), mode="lines", name=label,
                    legendgroup=label, showlegend=c == 1 and split == "train",
                    line=dict(color=col, dash=dash, width=width),
                    hovertemplate=f"{label} {split}<br>step %{{x}}: %{{y:.3g}}<extra></extra>"),
                    row=1, col=c)
            pc = _phase(d, split if part is None else f"{split}.{part}")
            if pc is not None:
                s = pc["steepest"]
                v = float(np.interp(s, x, np.nan_to_num(y, nan=float(np.nanmean(y)))))
                for c in (1, 2):
                    m = marks[c]
                    m[0].append(s), m[1].append(max(v, FLOOR) if c == 2 else v), m[2].append(col)
                    m[3].append(f"{label} {split}: start {pc.get('start')}, steepest {s}, "
                                f"end {pc.get('end')}")
    for c, (mx, my, mc, mt) in marks.items():
        if mx:
            fig.add_trace(go.Scatter(x=mx, y=my, mode="markers", name="phase change (steepest drop)",
                                     legendgroup="phase", showlegend=c == 1, text=mt,
                                     marker=dict(symbol="diamond", size=10, color=mc,
                                                 line=dict(color="#111", width=1)),
                                     hovertemplate="%{text}<extra></extra>"), row=1, col=c)
    chance = float(np.log(len(d.task.out_vocab)))
    for c in (1, 2):
        note = dict(annotation_text=f"uniform guess ln {len(d.task.out_vocab)}", annotation_font_size=10)
        fig.add_hline(y=chance, line=dict(color="#999", dash="dash", width=1), row=1, col=c,
                      **(note if c == 1 else {}))
        fig.update_xaxes(title_text="step", row=1, col=c)
    fig.update_yaxes(title_text="loss", row=1, col=1, rangemode="tozero")
    fig.update_yaxes(type="log", dtick=1, row=1, col=2,
                     range=log_range(*ys_all, [chance]) if ys_all else None)
    spikes = mark_spikes(fig, d.run.metrics, {"train_loss": "#111", "test_loss": "#111"}, row=1, col=2,
                         floor=FLOOR)
    fig.update_layout(legend=dict(orientation="h", y=-0.2), hovermode="closest")
    n = len(d.parts)
    cap = (f"The total loss (black) and its {n} parts; solid: train, dotted: test. Each part that "
           "drops has its own phase change; the diamonds mark the steepest step of each.")
    if not d.phase_changes:
        cap += " (No phase changes marked: the analysis has not been run.)"
    cap += spikes.replace("Marked:", "Marked on the log panel:")
    return Figure("fig-loss-parts", "Loss by part", cap, fig)


def phase_changes_figure(d: ZooData) -> Figure:
    """Every detected phase change as a bar from its start to its end, a diamond at its steepest
    step; one row per part, train and test side by side."""
    import plotly.graph_objects as go

    fig = new_figure(height=max(260, 90 + 34 * (len(d.parts) + 1)))
    rows = [("total", None)] + [(part_label(d.task, p), p) for p in d.parts]
    found = False
    for split, col in (("train", "#1f77b4"), ("test", "#ff7f0e")):
        ys, base, width, steep, text = [], [], [], [], []
        for label, part in rows:
            pc = _phase(d, split if part is None else f"{split}.{part}")
            if pc is None:
                continue
            s0 = pc.get("start", pc["steepest"])
            s2 = pc.get("end", pc["steepest"])
            s0, s2 = (pc["steepest"] if s0 is None else s0), (pc["steepest"] if s2 is None else s2)
            ys.append(label), base.append(s0), width.append(max(s2 - s0, 1)), steep.append(pc["steepest"])
            text.append(f"{label} {split}: steps {s0:,}–{s2:,}, steepest at {pc['steepest']:,}")
        if not ys:
            continue
        found = True
        fig.add_trace(go.Bar(y=ys, x=width, base=base, orientation="h", name=f"{split} loss drop",
                             offsetgroup=split, marker_color=col, opacity=0.45, text=text,
                             textposition="none", hovertemplate="%{text}<extra></extra>"))
        fig.add_trace(go.Scatter(y=ys, x=steep, mode="markers", name=f"{split}: steepest step",
                                 offsetgroup=split, orientation="h",
                                 marker=dict(symbol="diamond", size=10, color=col,
                                             line=dict(color="#111", width=1)),
                                 text=text, hovertemplate="%{text}<extra></extra>"))
    if found:  # every part gets a row, also those without a phase change
        fig.add_trace(go.Scatter(y=[lab for lab, _ in rows], x=[0] * len(rows), mode="markers",
                                 marker=dict(opacity=0), showlegend=False, hoverinfo="skip"))
    fig.update_yaxes(categoryorder="array", categoryarray=[lab for lab, _ in rows][::-1], title_text=None,
                     automargin=True)
    top = float(d.metric_steps.max(initial=1))
    fig.update_xaxes(title_text="step", range=[-0.01 * top, 1.02 * top])
    fig.update_layout(barmode="group", scattermode="group",
                      legend=dict(orientation="h", x=0, y=1.02, yanchor="bottom"))
    if not found:
        msg = ("no phase change detected in any loss curve" if d.phase_changes else
               "no analysis: run `groklab analyze` to detect the phase changes")
        fig.add_annotation(text=msg, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return Figure("fig-phase-changes", "Phase changes",
                  "A phase change is a reverse-S drop of a loss curve: the bar runs from where it starts "
                  "to where it ends, the diamond is its steepest step. Separate parts that drop at "
                  "different times are separate phase changes.", fig)


def attention_caption(d: ZooData, layer: int) -> str:
    if d.name == "repeated_subsequence":
        return ("Layer 0: a previous-token head is a bright line just below the diagonal (each token "
                "attends to the one before it)." if layer == 0 else
                "Layer 1: an induction head, inside each repeated copy, attends to the token just after "
                "the earlier occurrence of the current token: lines parallel to the diagonal, offset "
                "by the distance between the copies.")
    if d.name == "max_element":
        return ("The bottom row is the END position, whose output is read: once the skip trigram has "
                "formed it puts almost all its attention on the single special (largest) token.")
    if d.name == "digit_addition":
        return ("Rows are positions, columns what they attend to; the rows from '=' on predict the "
                "answer digits, and learn to attend to the pair of input digits they add (and the "
                "pairs to their right, for the carry).")
    return "Each row is a query position, each column the key position it attends to."


LONG = 45  # sequences longer than this get one large panel and a head selector


def default_head(d: ZooData, layer: int, patterns: np.ndarray | None = None) -> int:
    """The head a one-panel attention figure opens on: the analysis' previous-token head (layer 0)
    or induction head (layer 1); else, for repeated subsequences, the best-scoring head on the
    example sequence (``patterns`` ``[L, H, n, n]``); else head 0."""
    info = d.summary.get("induction") or {}
    named = info.get("prev_token_heads" if layer == 0 else "induction_heads") or []
    for name in named:
        if name.startswith(f"L{layer}H"):
            return int(name[len(f"L{layer}H"):])
    if d.name == "repeated_subsequence" and patterns is not None and patterns.shape[0] >= 2 and layer < 2:
        import torch

        from .zoo_data import head_scores

        prev, ind = head_scores(torch.as_tensor(patterns[0][None]), torch.as_tensor(patterns[1][None]),
                                d.example, d.run.config.task)
        return int(np.argmax(prev if layer == 0 else ind))
    return 0


def attention_figure(d: ZooData, patterns: np.ndarray, layer: int, tokens=None, head: int = 0) -> Figure:
    """Heatmaps of every head of ``layer``: ``patterns`` ``[H, n, n]`` (query rows, key columns) on
    the example sequence, axes labelled with the tokens' display names. A long sequence (more than
    ``LONG`` tokens) gets one large panel with buttons to switch the head (opening on ``head``);
    a short one a panel per head."""
    import plotly.graph_objects as go

    H, n, _ = patterns.shape
    names = d.token_names(tokens)
    one = n > LONG and H > 1
    cols = 1 if one else min(H, 2 if n > 24 else 4)
    rows = 1 if one else -(-H // cols)
    side = 900 if one else min(1000 / cols, 620 if n > 24 else 460)
    fig = new_figure(rows, cols, height=int(90 + side * rows), horizontal_spacing=0.06,
                     vertical_spacing=0.08 / max(rows - 1, 1) + 0.04,
                     subplot_titles=None if one else [f"L{layer}H{h}" for h in range(H)])
    font = 10 if n <= 20 else 8 if n <= LONG or one else 6
    for h in range(H):
        cell = {} if one else {"row": h // cols + 1, "col": h % cols + 1}
        fig.add_trace(go.Heatmap(z=f32(patterns[h]), zmin=0, zmax=1, colorscale="Blues", name=f"L{layer}H{h}",
                                 visible=h == head if one else True,
                                 showscale=h == (head if one else H - 1),
                                 colorbar=dict(title="attention", thickness=12),
                                 hovertemplate=f"L{layer}H{h}<br>query %{{y}} → key %{{x}}: "
                                               "%{z:.2f}<extra></extra>"), **cell)
    ticks = dict(tickvals=list(range(n)), ticktext=names, tickfont=dict(size=font), showgrid=False,
                 constrain="domain", ticks="")
    fig.update_xaxes(tickangle=-90, **ticks)
    fig.update_yaxes(autorange="reversed", **ticks)
    if one:
        fig.update_yaxes(scaleanchor="x", title_text="query")
        fig.update_xaxes(title_text="key")
        fig.update_layout(updatemenus=[dict(
            type="buttons", direction="left", x=0, xanchor="left", y=1.0, yanchor="bottom", active=head,
            showactive=True, font=dict(size=11), pad=dict(b=6),
            buttons=[dict(label=f"head L{layer}H{h}", method="restyle",
                          args=[{"visible": [i == h for i in range(H)],
                                 "showscale": [i == h for i in range(H)]}])
                     for h in range(H)])])
    else:
        for h in range(H):
            fig.update_yaxes(scaleanchor=f"x{h + 1 if h else ''}", row=h // cols + 1, col=h % cols + 1)
        for r in range(rows):
            fig.update_yaxes(title_text="query", row=r + 1, col=1)
        for c in range(cols):
            fig.update_xaxes(title_text="key", row=rows, col=c + 1)
        fig.update_annotations(font_size=11)
    cap = attention_caption(d, layer) + (" Buttons switch the head." if one else "")
    return Figure(f"fig-attn-L{layer}", f"Layer {layer} attention on an example sequence", cap, fig)


def _series(d: ZooData, key: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(steps [C], values [C, X], from_analysis)``: the analysis arrays, or the report's own."""
    if key in d.arrays and "steps" in d.arrays and len(d.arrays[key]) == len(d.arrays["steps"]):
        return d.arrays["steps"].astype(np.int64), np.asarray(d.arrays[key], np.float64), True
    from .trajectory import frame_indices

    steps = [d.run.steps[i] for i in frame_indices(d.run.steps, d.run.steps)]
    own = report_scores(d, steps)
    return np.array(steps, np.int64), own.get(key, np.zeros((len(steps), 0))), False


def _shade_drop(fig, d: ZooData, cols: list[int]) -> None:
    pc = _phase(d, main_split(d))
    if pc is None or pc.get("start") is None or pc.get("end") is None:
        return
    note = dict(annotation_text="loss drop", annotation_position="top left",
                annotation_font=dict(size=10, color="#555"))
    for j, c in enumerate(cols):  # plotly writes 'new text' for annotation_text=None: label once
        fig.add_vrect(x0=pc["start"], x1=pc["end"], fillcolor=SHADE, line_width=0, layer="below",
                      row=1, col=c, **(note if j == 0 else {}))


def _formed_line(fig, step, cols: list[int], text: str) -> None:
    if step is None:
        return
    note = dict(annotation_text=f"{text} (step {int(step):,})", annotation_position="bottom right",
                annotation_font_size=10)
    for j, c in enumerate(cols):
        fig.add_vline(x=int(step), line=dict(color="#222", dash="dash", width=1.2), row=1, col=c,
                      **(note if j == 0 else {}))


def induction_scores_figure(d: ZooData) -> Figure:
    """Previous-token score of each layer-0 head and induction score of each layer-1 head through
    training; the heads the analysis names are drawn thick, the loss drop shaded."""
    import plotly.graph_objects as go

    info = d.summary.get("induction") or {}
    named = set(info.get("prev_token_heads") or []) | set(info.get("induction_heads") or [])
    fig = new_figure(1, 2, height=400, horizontal_spacing=0.09,
                     subplot_titles=("previous-token score (layer 0)", "induction score (layer 1)"))
    src = True
    for c, (key, layer) in enumerate((("prev_token_score", 0), ("induction_score", 1)), start=1):
        steps, v, src_c = _series(d, key)
        src = src and src_c
        for h in range(v.shape[1]):
            name = f"L{layer}H{h}"
            thick = name in named
            fig.add_trace(go.Scatter(x=steps, y=f32(v[:, h]), mode="lines",
                                     name=name + (" ★" if thick else ""),
                                     line=dict(color=colour(h + 4 * layer), width=3.2 if thick else 1.4),
                                     opacity=1.0 if thick or not named else 0.55,
                                     hovertemplate=f"{name}<br>step %{{x}}: %{{y:.3f}}<extra></extra>"),
                          row=1, col=c)
        fig.update_yaxes(title_text="mean attention", range=[0, 1.02], row=1, col=c)
        fig.update_xaxes(title_text="step", row=1, col=c)
    _shade_drop(fig, d, [1, 2])
    _formed_line(fig, info.get("formed_step"), [1, 2], "circuit formed")
    fig.update_layout(legend=dict(orientation="h", y=-0.2))
    heads = ", ".join(sorted(named)) or "none named"
    cap = (f"A previous-token head (layer 0) attends from each token to the one before; an induction "
           f"head (layer 1) attends to the token after the current token's earlier occurrence. Both "
           f"scores should rise as the circuit forms, inside the shaded loss drop (★: the circuit's heads, "
           f"{heads}).")
    if not src:
        cap += f" Computed by the report on {SCORE_SEQS} sequences at the slider's checkpoints (no analysis)."
    return Figure("fig-induction", "Induction and previous-token scores through training", cap, fig)


def skip_trigram_figure(d: ZooData) -> Figure:
    """For each label, the END position's mean attention on the special token through training; the
    step each skip trigram formed is marked."""
    import plotly.graph_objects as go

    formed = ((d.summary.get("skip_trigrams") or {}).get("formed_step")) or {}
    steps, v, src = _series(d, "attn_on_special")
    fig = new_figure(height=420)
    mx, my, mc, mt = [], [], [], []
    for i in range(v.shape[1]):
        part = d.parts[i] if i < len(d.parts) else f"label{i}"
        fig.add_trace(go.Scatter(x=steps, y=f32(v[:, i]), mode="lines", name=part, line=dict(color=colour(i)),
                                 hovertemplate=f"{part}<br>step %{{x}}: %{{y:.3f}}<extra></extra>"))
        s = formed.get(part)
        if s is not None:
            mx.append(int(s)), my.append(float(np.interp(s, steps, v[:, i]))), mc.append(colour(i))
            mt.append(f"{part}: formed at step {int(s):,}")
    if mx:
        fig.add_trace(go.Scatter(x=mx, y=my, mode="markers", name="trigram formed", text=mt,
                                 marker=dict(symbol="diamond", size=11, color=mc,
                                             line=dict(color="#111", width=1)),
                                 hovertemplate="%{text}<extra></extra>"))
    pc = _phase(d, main_split(d))
    if pc is not None and pc.get("start") is not None and pc.get("end") is not None:
        fig.add_vrect(x0=pc["start"], x1=pc["end"], fillcolor=SHADE, line_width=0, layer="below",
                      annotation_text="loss drop", annotation_position="top left",
                      annotation_font=dict(size=10, color="#555"))
    n = max(len(d.parts), 1)
    fig.add_hline(y=1 / d.task.n_ctx,
                  line=dict(color="#999", dash="dash", width=1), annotation_text="uniform attention",
                  annotation_font_size=10)
    fig.update_yaxes(title_text="attention END → special token", range=[0, 1.02])
    fig.update_xaxes(title_text="step")
    fig.update_layout(legend=dict(orientation="h", y=-0.2))
    cap = (f"Each of the {n} skip trigrams 'special(i) … END → i' forms when END learns to attend to the "
           "special token of its label; the diamonds mark when the analysis says each formed.")
    if not src:
        cap += " Computed by the report at the slider's checkpoints (no analysis)."
    return Figure("fig-skip-trigrams", "END → special-token attention per label", cap, fig)


def trajectory_loss_figure(d: ZooData, step: int) -> Figure:
    """Total train and test loss (log y) with a black line at the slider's checkpoint (shape 0)."""
    import plotly.graph_objects as go

    x = d.metric_steps
    fig = new_figure(height=300)
    ys = []
    for split, col in (("train", "#1f77b4"), ("test", "#ff7f0e")):
        y = d.loss(split)
        if _has(y):
            ys.append(y)
            fig.add_trace(go.Scatter(x=x, y=f32(np.maximum(y, FLOOR)), mode="lines", name=f"{split} loss",
                                     line=dict(color=col),
                                     hovertemplate="step %{x}: %{y:.3g}<extra></extra>"))
    fig.add_vline(x=step, line=dict(color="#222", width=2))  # shapes[0], moved by the slider
    pc = _phase(d, main_split(d))
    if pc is not None and pc.get("start") is not None and pc.get("end") is not None:
        fig.add_vrect(x0=pc["start"], x1=pc["end"], fillcolor=SHADE, line_width=0, layer="below")
    fig.update_yaxes(type="log", dtick=1, title_text="loss", range=log_range(*ys) if ys else None)
    fig.update_xaxes(title_text="step")
    fig.update_layout(legend=dict(orientation="h", y=1.12, x=0))
    return Figure("fig-traj-loss", "Where you are in training",
                  "The black line marks the checkpoint the slider shows; the shaded band is the loss drop.",
                  fig)
