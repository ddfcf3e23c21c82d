"""Figures and tables of the sweep report (``report/sweep.py``): PAIR's small multiples of the
members' outcomes (``pair.md`` §1.3 "Sweep"), the hovered member's loss curves, the class counts,
and the seeds' grok steps.

PAIR's colours (``util.js``): can't fit ``#aaa``, memorise white (drawn with a dark outline),
together ``#7CB9DF``, grok ``#F7DB5C``; train loss purple, test loss green, as on the MLP page.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict

import numpy as np

from .base import Figure, log_range, new_figure
from .mlp_figures import TEST, TRAIN
from .sweep_data import CLASSES, SEED, Axes, Member, SweepData, mean_ci

COLOURS = {"cant_fit": "#aaaaaa", "memorise": "#ffffff", "together": "#7cb9df", "grok": "#f7db5c",
           "none": "#f4a3a3"}
OUTLINES = {"cant_fit": "#777777", "memorise": "#222222", "together": "#3f7fa8", "grok": "#b39320",
            "none": "#d62728"}
NAMES = {"cant_fit": "can't fit (high train loss)", "memorise": "memorise (high test loss)",
         "together": "train and test drop together", "grok": "grokking", "none": "not classified"}
SHORT = {"cant_fit": "can't fit", "memorise": "memorise", "together": "together", "grok": "grok",
         "none": "not classified"}
MAX_COLS = 5  # panels per row
WIDTH_PX = 1040  # the figure column's width on a wide screen (sweep.py CSS)
MIN_PANEL_PX, GAP_PX = 150, 30  # a panel's least width; the gap between panels


def value_of(m: Member, name: str):
    """A member's value of a grid key, or its seed for ``"seed"``."""
    return m.seed if name == SEED else m.values[name]


def short_name(key: str) -> str:
    """``train.weight_decay`` -> ``weight_decay``."""
    return key.split(".")[-1]


def member_label(sd: SweepData, m: Member) -> str:
    """``weight_decay=0.01 · d_hidden=16 · seed 0`` (plain text)."""
    return " · ".join([*(f"{short_name(k)}={m.values[k]}" for k in sd.keys), f"seed {m.seed}"])


def cluster_offsets(n: int, side: int) -> list[tuple[float, float]]:
    """Offsets in cell units of ``n`` dots on a ``side`` x ``side`` lattice centred on the cell,
    filled row by row from the top left (PAIR's 3 x 3 seed cluster for n = 9, side = 3)."""
    step = 0.8 / side
    return [((j % side - (side - 1) / 2) * step, ((side - 1) / 2 - j // side) * step) for j in range(n)]


def grid_figure(sd: SweepData, axes: Axes, members: list[Member], classes: list[str], fig_id: str,
                title: str) -> tuple[Figure, list[list[int]]]:
    """PAIR's small multiples: one panel per value of ``axes.facet``, a cell per (x, y) value pair in
    grid order, the members of a cell (the seeds) as a cluster of dots coloured by ``classes``
    (indexed by ``Member.index``). Each dot's ``customdata`` is its member index.

    Returns:
        The figure (one scatter trace per panel; the legend is ``legend_html``) and, per trace, the
        member indices of its points in order (the page's script recolours them).
    """
    import plotly.graph_objects as go

    facets = sd.levels[axes.facet] if axes.facet else [None]
    xs, ys = sd.levels[axes.x], sd.levels[axes.y] if axes.y else [None]
    cells: dict[tuple, list[Member]] = defaultdict(list)
    for m in members:
        key = (value_of(m, axes.facet) if axes.facet else None, xs.index(value_of(m, axes.x)),
               ys.index(value_of(m, axes.y)) if axes.y else 0)
        cells[key].append(m)
    side = max(1, math.ceil(math.sqrt(max((len(v) for v in cells.values()), default=1))))
    cell_px = max(30, 9 * side + 6, math.ceil(MIN_PANEL_PX / len(xs)))  # square cells
    size = max(5.0, min(12.0, 0.8 * cell_px / side - 2))
    panel_w, panel_h = len(xs) * cell_px, max(len(ys) * cell_px, 60)
    cols = max(1, min(len(facets), MAX_COLS, (WIDTH_PX - 80 + GAP_PX) // (panel_w + GAP_PX)))
    rows = math.ceil(len(facets) / cols)
    width = cols * panel_w + (cols - 1) * GAP_PX + 80
    height = rows * panel_h + (rows - 1) * 60 + 100
    titles = [f"{short_name(axes.facet)} = {v}" for v in facets] if axes.facet else None
    fig = new_figure(rows, cols, height=height, subplot_titles=titles, horizontal_spacing=GAP_PX / width,
                     vertical_spacing=60 / height if rows > 1 else 0.0)
    traces: list[list[int]] = []
    for p, fv in enumerate(facets):
        px, py, ids, text = [], [], [], []
        for (f, ix, iy), ms in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][2])):
            if f != fv:
                continue
            ms = sorted(ms, key=lambda m: (m.seed, m.index))
            for m, (dx, dy) in zip(ms, cluster_offsets(len(ms), side), strict=True):
                px.append(ix + dx)
                py.append(iy + dy)
                ids.append(m.index)
                text.append(html.escape(member_label(sd, m)))
        traces.append(ids)
        r, c = p // cols + 1, p % cols + 1
        fig.add_trace(go.Scatter(
            x=px, y=py, mode="markers", customdata=ids, text=text, showlegend=False,
            hovertemplate="%{text}<extra></extra>",
            marker=dict(size=size, color=[COLOURS[classes[i]] for i in ids],
                        line=dict(width=1, color=[OUTLINES[classes[i]] for i in ids]))), row=r, col=c)
        fig.update_xaxes(row=r, col=c, range=[-0.5, len(xs) - 0.5], tickvals=list(range(len(xs))),
                         ticktext=[str(v) for v in xs], showgrid=False, ticks="",
                         title_text=short_name(axes.x) if r == rows else None)
        fig.update_yaxes(row=r, col=c, range=[-0.5, len(ys) - 0.5], tickvals=list(range(len(ys))),
                         ticktext=["" if v is None else str(v) for v in ys], showgrid=False, ticks="",
                         showticklabels=c == 1 and axes.y is not None,
                         title_text=short_name(axes.y) if (c == 1 and axes.y) else None)
    fig.update_layout(margin=dict(l=70, r=10, t=40, b=60), hovermode="closest", width=width, autosize=False,
                      showlegend=False)
    fig.update_annotations(font_size=12)  # the panel titles
    where = f"one panel per {short_name(axes.facet)}, " if axes.facet else ""
    caption = (f"Each dot is a member: {where}x = {short_name(axes.x)}"
               + (f", y = {short_name(axes.y)}" if axes.y else "")
               + (", the seeds of a cell clustered around its centre" if side > 1 else "")
               + ". Hover for its loss curves; click to open its report.")
    return Figure(fig_id, title, caption, fig), traces


def legend_html() -> str:
    """PAIR's legend: a dot in each class's colour and its name (``not classified`` included)."""
    dot = '<span><i style="background:{};border-color:{}"></i>{}</span>'
    items = "".join(dot.format(COLOURS[c], OUTLINES[c], NAMES[c]) for c in CLASSES)
    return f'<div class="sweep-legend">{items}</div>'


def curves_figure(sd: SweepData, m: Member | None, label: str) -> Figure:
    """The side chart: member ``m``'s train and test loss (log y) against step, and the min-loss
    threshold (dashed); the page's script redraws it for the hovered dot."""
    import plotly.graph_objects as go

    curves = [mem.curve for mem in sd.members if mem.curve is not None]
    yr = log_range(*[c[1] for c in curves], *[c[2] for c in curves], [sd.min_loss]) if curves else [-8, 1]
    steps, tr, te = m.curve if m is not None and m.curve is not None else (np.zeros(0),) * 3
    fig = new_figure(height=330)
    fig.add_trace(go.Scatter(x=steps.tolist(), y=tr.tolist(), name="train loss", line=dict(color=TRAIN)))
    fig.add_trace(go.Scatter(x=steps.tolist(), y=te.tolist(), name="test loss", line=dict(color=TEST)))
    x_end = [int(steps[0]), int(steps[-1])] if len(steps) else [0, 1]
    fig.add_trace(go.Scatter(x=x_end, y=[sd.min_loss] * 2, name="min loss", mode="lines", hoverinfo="skip",
                             line=dict(color="#555", dash="dash", width=1)))
    fig.update_layout(title=dict(text=html.escape(label), font=dict(size=11)),
                      margin=dict(l=55, r=10, t=40, b=40),
                      legend=dict(orientation="h", y=-0.25), hovermode="x unified")
    fig.update_yaxes(type="log", range=yr, title_text="loss")
    fig.update_xaxes(title_text="step")
    return Figure("fig-sweep-curves", "Loss of the hovered member", "Train (purple) and test (green) loss; "
                  "the dashed line is the min-loss threshold.", fig)


def count_rows(sd: SweepData, facet: str | None) -> list[tuple[str, list[int]]]:
    """The count table's rows: ``(label, member indices)`` per facet value (pooled over everything
    else), then ``all``."""
    rows = []
    if facet:
        for v in sd.levels[facet]:
            rows.append((f"{short_name(facet)} = {v}",
                         [m.index for m in sd.members if value_of(m, facet) == v]))
    rows.append(("all", [m.index for m in sd.members]))
    return rows


def count_table(rows: list[tuple[str, list[int]]], classes: list[str]) -> str:
    """The class counts as an HTML table (cell ids ``sweep-count-{row}-{class}``, recounted by the
    page's script)."""
    head = "".join(f"<th>{SHORT[c]}</th>" for c in CLASSES)
    body = []
    for r, (label, ids) in enumerate(rows):
        n = {c: 0 for c in CLASSES}
        for i in ids:
            n[classes[i]] += 1
        cells = "".join(f'<td id="sweep-count-{r}-{c}">{n[c]}</td>' for c in CLASSES)
        body.append(f"<tr><th>{html.escape(label)}</th>{cells}<td>{len(ids)}</td></tr>")
    return (f'<table class="sweep-table" id="sweep-counts"><tr><th></th>{head}<th>members</th></tr>'
            + "".join(body) + "</table>")


def _g(x: float, fmt: str = ".4g") -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, fmt)


def stats_rows(members: list[Member]) -> list[tuple[str, int, int, tuple[float, float, float], float]]:
    """Per statistic: (name, n with a value, n members, (mean, lo, hi) 95% t-interval, median). The
    grok step counts only the members that grokked (test accuracy ≥ 0.99 at some logged step)."""
    series = {"grok step": [m.grok_step for m in members if m.grok_step is not None]}
    for m in members:
        for k, v in m.analysis.items():
            series.setdefault(k, []).append(v)
    return [(k, len(v), len(members), mean_ci(v), float(np.median(v)) if v else math.nan)
            for k, v in series.items()]


def stats_table(members: list[Member]) -> str:
    """``stats_rows`` as an HTML table."""
    body = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{n} / {total}</td><td>{_g(mu)}</td>"
        f"<td>[{_g(lo)}, {_g(hi)}]</td><td>{_g(med)}</td></tr>"
        for k, n, total, (mu, lo, hi), med in stats_rows(members))
    return ('<table class="sweep-table" id="sweep-seed-stats"><tr><th></th><th>members with a value</th>'
            "<th>mean</th><th>95% CI (t)</th><th>median</th></tr>" + body + "</table>")


def cells_table(sd: SweepData, classes: list[str]) -> str:
    """One row per grid cell (every key's value): its seeds' classes and grok-step statistics."""
    cells: dict[tuple, list[Member]] = defaultdict(list)
    for m in sd.members:
        cells[tuple(sd.levels[k].index(m.values[k]) for k in sd.keys)].append(m)
    head = "".join(f"<th>{html.escape(short_name(k))}</th>" for k in sd.keys)
    body = []
    for idx in sorted(cells):
        ms = cells[idx]
        g = [m.grok_step for m in ms if m.grok_step is not None]
        mu, lo, hi = mean_ci(g)
        n = {c: sum(classes[m.index] == c for m in ms) for c in CLASSES}
        outcome = ", ".join(f"{SHORT[c]} {n[c]}" for c in CLASSES if n[c])
        vals = "".join(f"<td>{sd.levels[k][i]}</td>" for k, i in zip(sd.keys, idx, strict=True))
        med = float(np.median(g)) if g else math.nan
        body.append(f"<tr>{vals}<td>{len(ms)}</td><td>{outcome}</td><td>{len(g)}</td><td>{_g(mu)}</td>"
                    f"<td>[{_g(lo)}, {_g(hi)}]</td><td>{_g(med)}</td></tr>")
    return (f'<table class="sweep-table" id="sweep-cells"><tr>{head}<th>seeds</th><th>outcomes</th>'
            "<th>grokked</th><th>grok step mean</th><th>95% CI</th><th>median</th></tr>"
            + "".join(body) + "</table>")


def grok_figure(sd: SweepData) -> Figure:
    """The seeds' grok steps: a histogram, a strip of the members, the mean with its 95% t-interval
    (shaded) and the median (dashed)."""
    import plotly.graph_objects as go

    ms = [m for m in sd.members if m.grok_step is not None]
    g = np.array([m.grok_step for m in ms], dtype=np.float64)
    fig = new_figure(height=320)
    fig.add_trace(go.Histogram(x=g.tolist(), name="members", marker_color="#f7db5c",
                               marker_line=dict(color="#b39320", width=1)))
    jitter = np.random.default_rng(0).uniform(-0.25, 0.25, len(ms))
    fig.add_trace(go.Scatter(x=g.tolist(), y=(-0.5 + jitter).tolist(), mode="markers", name="seed",
                             customdata=[m.index for m in ms], text=[f"seed {m.seed}" for m in ms],
                             hovertemplate="%{text}: step %{x}<extra></extra>",
                             marker=dict(size=6, color="#b39320")))
    mu, lo, hi = mean_ci(g)
    if math.isfinite(lo):
        fig.add_vrect(x0=lo, x1=hi, fillcolor="rgba(31,119,180,0.15)", line_width=0, layer="below")
    if len(g):
        fig.add_vline(x=mu, line=dict(color="#1f77b4", width=2), annotation_text=f"mean {mu:,.0f}")
        fig.add_vline(x=float(np.median(g)), line=dict(color="#444", dash="dash"),
                      annotation_text=f"median {np.median(g):,.0f}", annotation_position="bottom right")
    fig.update_layout(showlegend=False, bargap=0.05)
    fig.update_xaxes(title_text="grok step (first step with test accuracy ≥ 0.99)")
    fig.update_yaxes(title_text="members")
    return Figure("fig-sweep-grok", "When the seeds grokked",
                  f"{len(ms)} of {len(sd.members)} members grokked; blue: their mean grok step and its 95% "
                  "t-interval, dashed: the median.", fig)
