"""Figures of the final circuit: Fourier structure of the weights, neurons, attention and logits.

Each follows a figure of Nanda et al. 2023: embedding Fourier norms (3a), W_L Fourier norms (3b),
attention from '=' to a (4a), neuron activations (4b), logit norms in the 2D Fourier basis (4c),
neuron FVE histogram (5a), W_L in the Fourier basis (5b), and the circles of App. (embedding on
each key frequency's cos/sin plane).
"""

from __future__ import annotations

import numpy as np

from .base import KEY_COLOUR, OTHER_COLOUR, Figure, f32, new_figure, to_u8, u8_colorbar
from .data import ReportData, fourier_labels

MAX_CIRCLES = 6  # planes drawn (the first key frequencies)


def _key_mask(p: int, keys: list[int]) -> np.ndarray:
    """``[p]`` bool: basis rows cos k / sin k of a key frequency."""
    mask = np.zeros(p, dtype=bool)
    for k in keys:
        mask[[2 * k - 1, 2 * k]] = True
    return mask


def fourier_bars(norms: np.ndarray, p: int, keys: list[int]) -> tuple[list[str], list[str]]:
    """Bar labels and colours for a ``[p]`` vector of Fourier norms, key frequencies highlighted."""
    mask = _key_mask(p, keys)
    return fourier_labels(p), [KEY_COLOUR if m else OTHER_COLOUR for m in mask]


def fourier_norms_figure(d: ReportData) -> Figure:
    """Norms of the Fourier components of W_E and W_L at the final checkpoint (Figures 3a, 3b)."""
    import plotly.graph_objects as go

    p, keys = d.p, d.key_freqs
    fig = new_figure(2, 1, height=620, vertical_spacing=0.24,
                     subplot_titles=("embedding W_E: ‖F W_E‖ per component",
                                     "neuron-logit map W_L = W_U W_out: ‖F W_L‖ per component"))
    for row, name in ((1, "embed_fourier_norms"), (2, "W_L_fourier_norms")):
        norms = d.arrays[name][-1]
        labels, colours = fourier_bars(norms, p, keys)
        fig.add_trace(go.Bar(x=labels, y=f32(norms), marker_color=colours, showlegend=False,
                             hovertemplate="%{x}: %{y:.3g}<extra></extra>"), row=row, col=1)
        fig.update_yaxes(title_text="norm", row=row, col=1)
        fig.update_xaxes(title_text="Fourier component (red: key frequencies)", tickangle=-60,
                         tickfont=dict(size=8), row=row, col=1)
    return Figure("fig-fourier", "Fourier components of the embedding and of W_L",
                  f"A trained network uses a handful of frequencies: the red bars (key frequencies "
                  f"{', '.join(map(str, keys)) or 'none found'}) stand out; the rest are near zero.", fig)


def clusters_figure(d: ReportData) -> Figure:
    """Neuron-cluster sizes and the histogram of each neuron's FVE by one frequency (Figure 5a)."""
    import plotly.graph_objects as go

    clusters = d.summary.get("neuron_clusters") or {}
    names = sorted(clusters, key=lambda k: (int(k) < 0, int(k)))
    fig = new_figure(1, 2, height=380, horizontal_spacing=0.12,
                     subplot_titles=("neurons per frequency cluster",
                                     "fraction of variance explained by one frequency"))
    fig.add_trace(go.Bar(x=[f"k={k}" if int(k) >= 0 else "unexplained" for k in names],
                         y=[clusters[k] for k in names], showlegend=False,
                         marker_color=[KEY_COLOUR if int(k) >= 0 else OTHER_COLOUR for k in names],
                         hovertemplate="%{x}: %{y} neurons<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Histogram(x=f32(d.arrays["neuron_frac_explained"]), nbinsx=20, showlegend=False,
                               marker_color="#1f77b4", hovertemplate="FVE %{x}: %{y} neurons<extra></extra>"),
                  row=1, col=2)
    fig.add_vline(x=0.85, line=dict(dash="dash", color="#555"), row=1, col=2,
                  annotation_text="0.85 cut-off", annotation_font_size=10)
    fig.update_xaxes(title_text="cluster", row=1, col=1)
    fig.update_yaxes(title_text="neurons", row=1, col=1)
    fig.update_xaxes(title_text="FVE by the neuron's best key frequency", range=[0, 1.02], row=1, col=2)
    fig.update_yaxes(title_text="neurons", row=1, col=2)
    frac = d.summary.get("frac_neurons_explained")
    cap = (f"{100 * frac:.1f}% of neurons are well explained (FVE ≥ 0.85) by a single key frequency"
           if frac is not None else "Most neurons should be explained by a single key frequency")
    return Figure("fig-clusters", "Neuron clusters",
                  cap + "; in a grokked network the histogram piles up near 1.", fig)


def neuron_heatmaps_figure(d: ReportData, neurons: list[int], acts: np.ndarray,
                           labels: list[str]) -> Figure:
    """Activations of a few neurons over the (a, b) grid at the final checkpoint (Figure 4b).

    Args:
        neurons: neuron indices, in panel order.
        acts: ``[len(neurons), p, p]`` post-ReLU activations at the '=' position, rows a, columns b.
        labels: a panel title per neuron.
    """
    import plotly.graph_objects as go

    n = len(neurons)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig = new_figure(rows, cols, height=60 + 230 * rows, subplot_titles=labels,
                     horizontal_spacing=0.04, vertical_spacing=0.12 / max(rows - 1, 1) + 0.04)
    for i in range(n):
        z, lo, hi = to_u8(acts[i])
        fig.add_trace(go.Heatmap(z=z, colorscale="Viridis", showscale=False, zmin=0, zmax=255,
                                 customdata=None, hovertemplate="a=%{y} b=%{x}<extra></extra>"),
                      row=i // cols + 1, col=i % cols + 1)
    _square_ab_panels(fig, n, cols, ticks=False)
    return Figure("fig-neurons", "Neuron activations over (a, b)",
                  "A neuron of cluster k is periodic in a and in b with period p/k: a regular grid of "
                  "blobs (colour: activation, each panel from its own min to its max).", fig)


def _square_ab_panels(fig, n: int, cols: int, ticks: bool) -> None:
    """Axes for a grid of ``n`` (a, b) heatmaps: a down, b across, square cells."""
    fig.update_xaxes(title_text="b", showticklabels=ticks, showgrid=False, constrain="domain")
    fig.update_yaxes(title_text="a", showticklabels=ticks, showgrid=False, autorange="reversed",
                     constrain="domain")
    for i in range(n):
        fig.update_yaxes(scaleanchor=f"x{i + 1 if i else ''}", row=i // cols + 1, col=i % cols + 1)
    fig.update_annotations(font_size=11)


def attention_figure(d: ReportData) -> Figure:
    """Attention paid from '=' to token a, per head, over (a, b) (Figure 4a)."""
    import plotly.graph_objects as go

    attn = d.arrays["attn_eq_to_a"]
    H = attn.shape[0]
    cols = min(H, 4)
    rows = -(-H // cols)
    fig = new_figure(rows, cols, height=60 + 240 * rows, horizontal_spacing=0.05,
                     subplot_titles=[f"head {h}" for h in range(H)])
    for h in range(H):
        z, _, _ = to_u8(attn[h], 0.0, 1.0)
        fig.add_trace(go.Heatmap(z=z, zmin=0, zmax=255, colorscale="Blues", showscale=h == H - 1,
                                 colorbar=u8_colorbar(0.0, 1.0, "attention to a"),
                                 hovertemplate="a=%{y} b=%{x}<extra></extra>"),
                      row=h // cols + 1, col=h % cols + 1)
    _square_ab_panels(fig, H, cols, ticks=True)
    return Figure("fig-attention", "Attention from '=' to a, per head",
                  "Each head splits its attention between a and b by a periodic function of a and b: "
                  "stripes or checkerboards at a key frequency (1 - value goes to b).", fig)


def logits_figure(d: ReportData) -> Figure:
    """Norms of the logits in the 2D Fourier basis over (a, b) (Figure 4c)."""
    import plotly.graph_objects as go

    p = d.p
    z = d.arrays["logit_fourier_norms"]
    labels = fourier_labels(p)
    fig = new_figure(height=620)
    fig.add_trace(go.Heatmap(z=f32(z), x=labels, y=labels, colorscale="Blues",
                             colorbar=dict(title="‖·‖", thickness=12),
                             hovertemplate="a: %{y}, b: %{x}: %{z:.3g}<extra></extra>"))
    fig.update_xaxes(title_text="Fourier component over b", tickfont=dict(size=7), showgrid=False)
    fig.update_yaxes(title_text="Fourier component over a", tickfont=dict(size=7), showgrid=False,
                     autorange="reversed")
    return Figure("fig-logits", "Logits in the 2D Fourier basis",
                  "The logits live on a few 2D components: (Const, cos k/sin k) and (cos k/sin k)×(cos "
                  "k/sin k) blocks for the key frequencies, i.e. cos(w_k(a+b−c)).", fig)


def wl_figure(d: ReportData) -> Figure:
    """W_L = W_U W_out in the Fourier basis, neurons sorted by cluster (Figure 5b, all neurons)."""
    import plotly.graph_objects as go

    p = d.p
    W = d.arrays["W_L_fourier"]  # [p, d_mlp]
    freq = d.arrays["neuron_freq"]
    order = np.lexsort((np.arange(len(freq)), np.where(freq < 0, 10**9, freq)))
    lim = float(np.abs(W).max()) or 1.0
    fig = new_figure(height=560)
    z, _, _ = to_u8(W[:, order], -lim, lim)  # 256 levels: plenty for a colour map, 1/4 the bytes
    fig.add_trace(go.Heatmap(z=z, y=fourier_labels(p), zmin=0, zmax=255, colorscale="RdBu",
                             colorbar=u8_colorbar(-lim, lim, "weight"),
                             hovertemplate="%{y}, neuron %{x} in sorted order<extra></extra>"))
    bounds = np.flatnonzero(np.diff(freq[order])) + 0.5
    for b in bounds:
        fig.add_vline(x=float(b), line=dict(color="#333", width=0.6))
    fig.update_xaxes(title_text="neurons, grouped by frequency cluster (unexplained last)", showgrid=False)
    fig.update_yaxes(title_text="Fourier component of the output", tickfont=dict(size=7),
                     autorange="reversed", showgrid=False)
    return Figure("fig-wl", "W_L in the Fourier basis",
                  "Each cluster of neurons writes only to the cos/sin rows of its own frequency: "
                  "W_L is close to rank 2K.", fig)


def circles_figure(d: ReportData, planes: np.ndarray | None = None, fid: str = "fig-circles",
                   title: str = "The embedding on each key frequency's plane (the circles)") -> Figure:
    """Token embeddings projected on each key frequency's (cos, sin) plane.

    Args:
        planes: ``[K, p, 2]``; default the final checkpoint of ``embed_key_planes``.
    """
    import plotly.graph_objects as go

    planes = (d.arrays["embed_key_planes"][-1] if planes is None else planes)[:MAX_CIRCLES]
    keys = d.key_freqs[: planes.shape[0]] or list(range(planes.shape[0]))
    K = max(len(keys), 1)
    fig = new_figure(1, K, height=320, horizontal_spacing=0.04,
                     subplot_titles=[f"k = {k}" for k in keys])
    tokens = np.arange(d.p)
    for i, k in enumerate(keys):
        xy = planes[i]
        order = np.argsort((tokens * k) % d.p)  # connect tokens in the order they sit on the circle
        fig.add_trace(go.Scatter(x=f32(xy[order, 0]), y=f32(xy[order, 1]), mode="lines+markers",
                                 line=dict(color="rgba(150,150,150,0.35)", width=0.8),
                                 text=tokens[order].tolist(),
                                 marker=dict(color=((tokens[order] * k) % d.p).tolist(), cmin=0,
                                             cmax=d.p, colorscale="Twilight", size=6),
                                 showlegend=False, hovertemplate="token %{text}<extra></extra>"),
                      row=1, col=i + 1)
        fig.update_xaxes(title_text=f"cos {k}", row=1, col=i + 1)
        fig.update_yaxes(title_text=f"sin {k}" if i == 0 else None, row=1, col=i + 1,
                         scaleanchor=f"x{i + 1 if i else ''}")
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_annotations(font_size=11)
    return Figure(fid, title,
                  "Token a sits at angle w_k·a: after grokking the points form a circle, coloured "
                  "(cyclically) by a·k mod p and joined in that order.", fig)
