"""The training-trajectory view: a checkpoint slider that replays the weights through training.

The page gets the figures at the final checkpoint plus, for up to ``MAX_FRAMES`` checkpoints, the
data that the slider swaps in with ``Plotly.restyle`` (embedding Fourier norms, the circles, a few
neurons' activation maps) and a marker on the loss curve. Arrays travel gzip-compressed and
base64-encoded (float32 / uint8) to keep the page small; the page's script inflates them with the
browser's ``DecompressionStream``. The idea follows PAIR's explorable "Do Machine Learning Models
Memorize or Generalize?" (Pearce et al. 2023).
"""

from __future__ import annotations

import base64
import gzip
from dataclasses import dataclass

import numpy as np

from .activations import fast_ok, neuron_activations, neuron_activations_fast
from .base import Figure, f32, log_range, new_figure, shade_phases, to_u8
from .data import ReportData
from .figures_circuit import MAX_CIRCLES, circles_figure, fourier_bars

MAX_FRAMES = 40
HEAT_LEVELS = 64  # colour levels of the slider's neuron maps (gzip packs 6 bits far better than 8)


def frame_indices(steps: list[int], available: list[int], max_frames: int = MAX_FRAMES) -> list[int]:
    """Indices into ``steps`` (the analysis checkpoints) for the slider: at most ``max_frames``,
    evenly spread, always the first and the last, and only steps with a checkpoint on disk."""
    ok = [i for i, s in enumerate(steps) if s in set(available)]
    if len(ok) <= max_frames:
        return ok
    pick = np.unique(np.rint(np.linspace(0, len(ok) - 1, max_frames)).astype(int))
    return [ok[i] for i in pick]


def pick_neurons(d: ReportData, per_cluster: int, max_total: int | None = None) -> list[tuple[int, str]]:
    """Neurons to draw: the ``per_cluster`` best-explained of each key-frequency cluster (largest
    clusters first), then as many unexplained ones. Returns ``(index, label)`` pairs."""
    freq = d.arrays["neuron_freq"].astype(int)
    fve = d.arrays["neuron_frac_explained"]
    clusters = sorted({int(f) for f in freq if f >= 0}, key=lambda f: -(freq == f).sum())
    ranked = {f: [int(n) for n in idx[np.argsort(-fve[idx])]]
              for f in [*clusters, -1] if len(idx := np.flatnonzero(freq == f))}
    out: list[tuple[int, str]] = []
    for f, idx in ranked.items():
        out += [(n, f"neuron {n}, k={f}" if f >= 0 else f"neuron {n}, unexplained")
                for n in idx[:per_cluster]]
    if max_total is None:
        return out
    for rank in range(per_cluster, len(freq)):  # fill up to max_total, round-robin over clusters
        if len(out) >= max_total:
            break
        out += [(idx[rank], f"neuron {idx[rank]}, k={f}" if f >= 0 else f"neuron {idx[rank]}, unexplained")
                for f, idx in ranked.items() if rank < len(idx)]
    return out[:max_total]


def activations_at(d: ReportData, step: int, neurons: list[int], fast: bool = True) -> np.ndarray:
    """``[len(neurons), p, p]`` activations ``blocks.0.mlp.hook_post`` at the '=' position over the
    whole (a, b) grid (rows a, columns b) at checkpoint ``step``: from the model's own forward
    (``run_with_cache``), or with ``fast`` the equivalent factorised computation where it applies."""
    cfg = d.run.config
    if fast and fast_ok(cfg):
        return neuron_activations_fast(d.run.state_at(step), cfg, neurons).numpy()
    from ..tasks import make_data

    return neuron_activations(d.run.model_at(step), make_data(cfg.task).tokens, d.p, neurons).numpy()


def _pack(x: np.ndarray) -> dict:
    """An array as ``{dtype, shape, gz}`` with ``gz`` the base64 of its gzip-compressed bytes."""
    x = np.ascontiguousarray(x)
    code = {np.dtype(np.float32): "f4", np.dtype(np.uint8): "u1", np.dtype(np.int8): "i1"}[x.dtype]
    return {"dtype": code, "shape": list(x.shape),
            "gz": base64.b64encode(gzip.compress(x.tobytes(), 9, mtime=0)).decode("ascii")}


@dataclass
class Trajectory:
    """The slider's figures (drawn at the last frame) and its per-frame data (JSON-able)."""

    figures: list[Figure]
    payload: dict


def build_trajectory(d: ReportData, n_neurons: int = 4) -> Trajectory:
    """Figures and slider data for the training-trajectory section."""
    import plotly.graph_objects as go

    a = d.arrays
    frames = frame_indices([int(s) for s in a["steps"]], d.run.steps)
    if not frames:
        frames = [len(a["steps"]) - 1]
    steps = [int(a["steps"][i]) for i in frames]
    neurons = pick_neurons(d, per_cluster=1, max_total=n_neurons)
    idx = [n for n, _ in neurons]
    acts = [activations_at(d, s, idx) if s in d.run.steps else
            np.zeros((len(idx), d.p, d.p), np.float32) for s in steps]
    heat = np.stack([np.stack([to_u8(z, levels=HEAT_LEVELS)[0] for z in frame])
                     for frame in acts])  # (F, N, p, p)
    embed = f32(a["embed_fourier_norms"][frames])  # (F, p)
    planes = f32(a["embed_key_planes"][frames][:, :MAX_CIRCLES])  # (F, K, p, 2)
    K = planes.shape[1]
    # circles: fixed point order per key frequency (the order the static figure draws them in)
    orders = [np.argsort((np.arange(d.p) * k) % d.p) for k in d.key_freqs[:K]] or \
        [np.arange(d.p)] * K
    planes = np.stack([planes[:, i, orders[i]] for i in range(K)], axis=1) if K else planes

    # the loss curve with a marker at the current checkpoint
    m = d.run.metrics
    loss = new_figure(height=300)
    x = np.array([r["step"] for r in m])
    for split, colour in (("train", "#1f77b4"), ("test", "#ff7f0e")):
        loss.add_trace(go.Scatter(x=x, y=np.maximum(f32([r.get(f"{split}_loss", np.nan) for r in m]),
                                                    np.float32(1e-12)),
                                  mode="lines", name=f"{split} loss", line=dict(color=colour),
                                  hovertemplate="step %{x}: %{y:.3g}<extra></extra>"))
    loss.add_vline(x=steps[-1], line=dict(color="#222", width=2))
    shade_phases(loss, d.phases, x_max=float(x.max(initial=1)))
    loss.update_yaxes(type="log", title_text="loss", dtick=1,
                      range=log_range(*(loss.data[i].y for i in range(2))))
    loss.update_xaxes(title_text="step")
    loss.update_layout(legend=dict(orientation="h", y=1.12, x=0))

    labels, colours = fourier_bars(embed[-1], d.p, d.key_freqs)
    ymax = float(embed.max()) * 1.05
    emb = new_figure(height=320)
    emb.add_trace(go.Bar(x=labels, y=embed[-1], marker_color=colours, showlegend=False,
                         hovertemplate="%{x}: %{y:.3g}<extra></extra>"))
    emb.update_yaxes(title_text="‖F W_E‖", range=[0, ymax])
    emb.update_xaxes(title_text="Fourier component of the embedding (red: key frequencies)",
                     tickangle=-60, tickfont=dict(size=8))

    circ = circles_figure(d, a["embed_key_planes"][frames[-1]], "fig-traj-circles",
                          "The circles through training")
    lim = float(np.abs(planes).max()) * 1.1 if planes.size else 1.0
    plane_scale = (float(np.abs(planes).max()) / 127 if planes.size else 0.0) or 1.0
    circ.fig.update_xaxes(range=[-lim, lim])
    circ.fig.update_yaxes(range=[-lim, lim])

    cols = len(neurons)
    neu = new_figure(1, max(cols, 1), height=300, subplot_titles=[lab for _, lab in neurons],
                     horizontal_spacing=0.03)
    for i in range(cols):
        neu.add_trace(go.Heatmap(z=heat[-1, i], zmin=0, zmax=HEAT_LEVELS - 1, colorscale="Viridis",
                                 showscale=False,
                                 hovertemplate="a=%{y} b=%{x}<extra></extra>"), row=1, col=i + 1)
    neu.update_xaxes(title_text="b", showticklabels=False, showgrid=False)
    neu.update_yaxes(showticklabels=False, showgrid=False, autorange="reversed", constrain="domain")
    neu.update_xaxes(constrain="domain")
    for i in range(cols):
        neu.update_yaxes(scaleanchor=f"x{i + 1 if i else ''}", row=1, col=i + 1)
    neu.update_yaxes(title_text="a", row=1, col=1)
    neu.update_annotations(font_size=11)

    figures = [
        Figure("fig-traj-loss", "Where you are in training",
               "The black line marks the checkpoint the slider shows; shaded bands are the phases.", loss),
        Figure("fig-traj-embed", "Embedding Fourier norms through training",
               "At first every frequency is used a little; during circuit formation the key "
               "frequencies grow and, in cleanup, weight decay removes the rest.", emb),
        Figure(circ.id, circ.title, "Noise at initialisation; the circles form during circuit "
               "formation and sharpen in cleanup.", circ.fig),
        Figure("fig-traj-neurons", "Neuron activations through training",
               "Memorising neurons look like noise; as the circuit forms each turns into a regular "
               "grid, periodic in a and b at its frequency (each panel scaled to its own range).", neu),
    ]
    payload = {
        "steps": steps,
        "embed": _pack(embed),
        "planes": _pack(np.rint(planes / plane_scale).astype(np.int8)),  # x = int8 * plane_scale
        "plane_scale": plane_scale,
        "heat": _pack(heat),
        "n_circles": int(K),
        "n_neurons": int(cols),
    }
    return Trajectory(figures, payload)
