"""Shared pieces of the report's figures: the ``Figure`` record, a light template, phase shading.

Only the report package imports plotly, and only inside functions (it is imported lazily).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PHASE_STYLE = {  # (label, fill colour) of the span that ends at each boundary
    "memorization_end": ("memorisation", "rgba(99,110,250,0.10)"),
    "circuit_formation_end": ("circuit formation", "rgba(239,85,59,0.10)"),
    "cleanup_end": ("cleanup", "rgba(0,204,150,0.12)"),
}
KEY_COLOUR = "#d62728"
OTHER_COLOUR = "#9aa5b1"


@dataclass
class Figure:
    """One figure of the page.

    Attributes:
        id: the HTML id of its div (``fig-...``); stable, tests look for it.
        title: heading shown above it.
        caption: one line saying what to look for.
        fig: the plotly figure.
    """

    id: str
    title: str
    caption: str
    fig: Any


def template():
    """A small layout template (plotly's default one adds ~9 kB of JSON to every figure)."""
    import plotly.graph_objects as go

    return go.layout.Template(layout=dict(
        font=dict(family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif", size=12),
        paper_bgcolor="white", plot_bgcolor="white",
        colorway=["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"],
        xaxis=dict(showline=True, linecolor="#888", gridcolor="#eee", zeroline=False, ticks="outside",
                   exponentformat="power"),
        yaxis=dict(showline=True, linecolor="#888", gridcolor="#eee", zeroline=False, ticks="outside",
                   exponentformat="power"),
        margin=dict(l=60, r=20, t=50, b=50),
        legend=dict(bgcolor="rgba(255,255,255,0.6)"),
        hoverlabel=dict(namelength=-1),
    ))


def new_figure(rows: int = 1, cols: int = 1, height: int = 420, **subplot_kw):
    """A figure (with subplots when rows*cols > 1) using the report template."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=rows, cols=cols, **subplot_kw) if rows * cols > 1 or subplot_kw \
        else go.Figure()
    fig.update_layout(template=template(), height=height)
    return fig


def shade_phases(fig, phases: dict[str, int | None], rows_cols: list[tuple[int, int]] | None = None,
                 label: bool = True, x_max: float | None = None) -> None:
    """Shade memorisation / circuit formation / cleanup as vertical bands (Nanda et al. 2023 §5.2).

    Each band runs from the previous boundary (or step 0) to its own boundary; unknown (None)
    boundaries end the shading. A band narrower than 15% of ``x_max`` gets no label (the
    labels would overlap).
    """
    start = 0
    targets = rows_cols or [(None, None)]
    for key, (name, colour) in PHASE_STYLE.items():
        end = phases.get(key)
        if end is None or end <= start:
            break
        for j, (r, c) in enumerate(targets):
            kw = {} if r is None else {"row": r, "col": c}
            if label and j == 0 and (x_max is None or (end - start) >= 0.15 * x_max):
                kw.update(annotation_text=name, annotation_position="top left",
                          annotation_font=dict(size=10, color="#555"))
            fig.add_vrect(x0=start, x1=end, fillcolor=colour, line_width=0, layer="below", **kw)
        start = end


def log_range(*ys) -> list[float]:
    """A log-axis range (log10 units) that fits every positive finite value of ``ys`` with margin."""
    v = np.concatenate([np.asarray(y, dtype=np.float64).ravel() for y in ys])
    v = v[np.isfinite(v) & (v > 0)]
    if not v.size:
        return [-1.0, 1.0]
    return [float(np.log10(v.min())) - 0.3, float(np.log10(v.max())) + 0.3]


def f32(x) -> np.ndarray:
    """Compact float32 array (serialised by plotly as base64 ``f4``, half the size of ``f8``)."""
    return np.asarray(x, dtype=np.float32)


def to_u8(z: np.ndarray, lo: float | None = None, hi: float | None = None,
          levels: int = 256) -> tuple[np.ndarray, float, float]:
    """Quantise ``z`` linearly to 0..levels-1 between ``lo`` and ``hi`` (default its min and max)."""
    z = np.asarray(z, dtype=np.float64)
    lo = float(np.nanmin(z)) if lo is None else lo
    hi = float(np.nanmax(z)) if hi is None else hi
    top = levels - 1
    scale = top / (hi - lo) if hi > lo else 0.0
    return np.clip(np.rint((z - lo) * scale), 0, top).astype(np.uint8), lo, hi


def u8_colorbar(lo: float, hi: float, title: str) -> dict:
    """A colour bar for a 0..255 quantised heatmap that shows the original units."""
    ticks = np.linspace(0, 255, 5)
    return dict(title=dict(text=title, side="right"), tickvals=ticks.tolist(),
                ticktext=[f"{lo + t / 255 * (hi - lo):.3g}" for t in ticks], thickness=12)


SPIKE_MARK = dict(symbol="triangle-up", size=11, line=dict(color="#111", width=1))
CYCLE_MARK = dict(symbol="circle-open", size=13, line=dict(width=2))


def mark_spikes(fig, metrics: list[dict], colours: dict[str, str], row: int | None = None,
                col: int | None = None, floor: float = 1e-12) -> str:
    """Mark the loss spikes and the loss / weight-norm cycles of ``metrics`` on a log-y loss panel.

    Spikes (``analysis.spikes.detect_spikes``, default rule) of each curve in ``colours``
    (``{"train_loss": colour, ...}``) get a triangle at their peak; the cycles of the train loss
    against ``sqrt(sum_sq_weights)`` (``detect_oscillations``) an open circle at the loss peak. They
    are computed from the metrics rows (cheap), so a page without ``analysis.json`` shows them too.
    A curve the detectors reject is left unmarked. Returns a caption sentence ("" if none found).
    """
    import math

    import plotly.graph_objects as go

    from ..analysis.spikes import RISE, detect_oscillations, detect_spikes

    rows = sorted(metrics, key=lambda r: r["step"])
    steps = [r["step"] for r in rows]
    at = {s: i for i, s in enumerate(steps)}
    kw = {} if row is None else {"row": row, "col": col}
    said = []
    for key, colour in colours.items():
        y = [r.get(key) for r in rows]
        try:
            spikes = detect_spikes(steps, y)
        except ValueError:
            continue
        if not spikes:
            continue
        name = key.replace("_", " ")
        fig.add_trace(go.Scatter(
            x=[s.peak for s in spikes], y=[max(float(y[at[s.peak]]), floor) for s in spikes], mode="markers",
            name=f"{name} spike", marker=dict(color=colour, **SPIKE_MARK),
            text=[f"{name} spike: start {s.start}, peak {s.peak}, end {s.end}, rise ×{s.rise:.3g}"
                  for s in spikes],
            hovertemplate="%{text}<extra></extra>"), **kw)
        said.append(f"▲ {len(spikes)} {name} spike{'s' * (len(spikes) > 1)} (peaks at "
                    f"{', '.join(f'{s.peak:,}' for s in spikes[:6])}{', …' if len(spikes) > 6 else ''})")
    norm = [None if r.get("sum_sq_weights") is None else math.sqrt(max(r["sum_sq_weights"], 0.0)) or None
            for r in rows]
    try:
        cycles = detect_oscillations(steps, [r.get("train_loss") for r in rows], norm).cycles
    except ValueError:
        cycles = []
    if cycles:
        fig.add_trace(go.Scatter(
            x=[c.peak for c in cycles], y=[max(float(rows[at[c.peak]]["train_loss"]), floor) for c in cycles],
            mode="markers", name="loss / weight-norm cycle",
            marker=dict(color=colours.get("train_loss", "#111"), **CYCLE_MARK),
            text=[f"cycle {c.start}–{c.end}: loss ×{c.loss_rise:.3g} while the weight norm fell "
                  f"{c.norm_drop:.1%}" for c in cycles], hovertemplate="%{text}<extra></extra>"), **kw)
        said.append(f"○ {len(cycles)} cycle{'s' * (len(cycles) > 1)} of train loss against the weight norm")
    if not said:
        return ""
    return (f" Marked: {'; '.join(said)} (a spike is a rise to ≥ {RISE:g}× the running minimum; "
            "docs/analysis.md, \"Spikes and oscillations\").")
