"""The page of ``groklab slingshot``: the same model trained with a float32 and a float64
log-softmax, both loss curves on a log axis with the detected spikes marked.

Nanda et al. 2023 train in float64 because float32 log-softmax rounding makes the loss spike
("slingshots"; ``../shared/reference/nanda.md`` §2); Thilak et al. 2022, "The Slingshot Mechanism",
describe the spikes. The spike rule is ``analysis.spikes.detect_spikes`` (docs/analysis.md,
"Spikes and oscillations"). Built by ``groklab.slingshot.run_slingshot`` from its ``slingshot.json``
summary and each run's metrics rows; only this package imports plotly.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import numpy as np

from .base import SPIKE_MARK, Figure, f32, log_range, new_figure
from .page import render_page

COLOURS = {"float32": "#d62728", "float64": "#1f77b4"}
FLOOR = 1e-12  # losses drawn on a log axis


def _col(rows: Sequence[Mapping], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows])


def curves_figure(summary: Mapping, metrics: Mapping[str, Sequence[Mapping]]) -> Figure:
    """Train (left) and test (right) loss of each dtype's run, log y, spikes marked at their peaks.

    Args:
        summary: ``slingshot.json`` (``runs[dtype].spikes[curve]`` lists of spikes).
        metrics: ``{dtype: metrics rows}`` of the two runs.
    """
    import plotly.graph_objects as go

    fig = new_figure(1, 2, height=430, horizontal_spacing=0.08, subplot_titles=("train loss", "test loss"))
    ys = []
    for dtype, rows in metrics.items():
        colour = COLOURS.get(dtype, "#555")
        x = np.array([r["step"] for r in rows])
        for c, key in ((1, "train_loss"), (2, "test_loss")):
            y = _col(rows, key)
            if not np.isfinite(y).any():
                continue
            ys.append(y)
            fig.add_trace(go.Scatter(x=x, y=f32(np.maximum(y, FLOOR)), mode="lines",
                                     name=f"{dtype} log-softmax", legendgroup=dtype, showlegend=c == 1,
                                     line=dict(color=colour, width=1.6),
                                     hovertemplate=f"{dtype} {key.replace('_', ' ')}<br>step %{{x}}: "
                                                   "%{y:.3g}<extra></extra>"), row=1, col=c)
            spikes = summary["runs"][dtype]["spikes"].get(key)
            if not isinstance(spikes, list) or not spikes:
                continue
            at = {int(s): i for i, s in enumerate(x)}
            fig.add_trace(go.Scatter(
                x=[s["peak"] for s in spikes], y=[max(float(y[at[s["peak"]]]), FLOOR) for s in spikes],
                mode="markers", name=f"{dtype} spike", legendgroup=dtype, showlegend=False,
                marker=dict(color=colour, **SPIKE_MARK),
                text=[f"{dtype} {key.replace('_', ' ')} spike: start {s['start']}, peak {s['peak']}, "
                      f"end {s['end']}, rise ×{s['rise']:.3g}" for s in spikes],
                hovertemplate="%{text}<extra></extra>"), row=1, col=c)
    for c in (1, 2):
        fig.update_yaxes(type="log", dtick=1, title_text="loss" if c == 1 else None, row=1, col=c,
                         range=log_range(*ys) if ys else None)
        fig.update_xaxes(title_text="step", row=1, col=c)
    fig.update_layout(legend=dict(orientation="h", y=-0.2), hovermode="closest")
    return Figure("fig-slingshot-loss", "Loss with a float32 and a float64 log-softmax",
                  "Same model, data and seeds; only the precision of the log-softmax differs. ▲ marks "
                  "each spike's peak.", fig)


def norm_figure(metrics: Mapping[str, Sequence[Mapping]]) -> Figure:
    """The weight norm ``sqrt(sum_sq_weights)`` of both runs against the step."""
    import plotly.graph_objects as go

    fig = new_figure(height=330)
    for dtype, rows in metrics.items():
        y = np.sqrt(np.maximum(_col(rows, "sum_sq_weights"), 0.0))
        fig.add_trace(go.Scatter(x=[r["step"] for r in rows], y=f32(y), mode="lines", name=dtype,
                                 line=dict(color=COLOURS.get(dtype, "#555"), width=1.6),
                                 hovertemplate=f"{dtype}<br>step %{{x}}: %{{y:.4g}}<extra></extra>"))
    fig.update_yaxes(title_text="‖w‖₂")
    fig.update_xaxes(title_text="step")
    return Figure("fig-slingshot-norm", "Weight norm",
                  "The L2 norm of the trainable weights of both runs; Thilak et al. 2022 tie each slingshot "
                  "to a growth of the norm just before it.", fig)


def _spike_text(spikes) -> str:
    if not isinstance(spikes, list):
        return f"not measured ({html.escape(str(spikes.get('error')))})"
    if not spikes:
        return "none"
    peaks = ", ".join(f"{s['peak']:,} (×{s['rise']:.2g})" for s in spikes[:8])
    return f"{len(spikes)}: peaks at {peaks}{', …' if len(spikes) > 8 else ''}"


def slingshot_page(summary: Mapping, metrics: Mapping[str, Sequence[Mapping]]) -> str:
    """The whole self-contained HTML page (plotly.js inlined)."""
    runs = summary["runs"]
    counts = {d: sum(len(v) for v in r["spikes"].values() if isinstance(v, list)) for d, r in runs.items()}
    story = [
        "The same model is trained twice from the same initialisation on the same data; the only "
        "difference is whether the log-softmax of the loss is taken in float32 or in float64. "
        "Nanda et al. (2023) train in float64 because in float32 the log-softmax can only return "
        "multiples of about 1.2e-7: once the train loss is near that resolution the gradient of the "
        "confident examples rounds away and the loss spikes (a \"slingshot\", Thilak et al. 2022).",
        f"Rule: {html.escape(summary['rule'])}.",
        "Found: " + "; ".join(f"{d}: {counts[d]} spike{'s' * (counts[d] != 1)}" for d in runs) + ".",
    ]
    overrides = ", ".join(f"{k}={v}" for k, v in summary["overrides"].items()) or "none"
    rows = [("preset", html.escape(str(summary["preset"]))), ("overrides", html.escape(overrides)),
            ("steps", f"{summary['steps']:,}")]
    for d, r in runs.items():
        rows.append((f"{d}: train-loss spikes", _spike_text(r["spikes"]["train_loss"])))
        rows.append((f"{d}: test-loss spikes", _spike_text(r["spikes"]["test_loss"])))
        fin = r.get("final") or {}
        rows.append((f"{d}: final", html.escape(", ".join(
            f"{k} {v:.3g}" for k, v in fin.items() if isinstance(v, (int, float)) and k != "step"))))
    sections = [("curves", "Loss curves", "", [curves_figure(summary, metrics), norm_figure(metrics)])]
    return render_page("groklab slingshot: float32 vs float64 log-softmax",
                       html.escape(f"preset {summary['preset']}, {summary['steps']:,} steps"),
                       story, rows, sections, None, None)
