"""The star trick's figures of a modular-addition MLP run (PAIR, Pearce et al. 2023, pair.md
§1.4 and §2): each key frequency's neurons as a star (W_input and W_output DFT coefficients,
connected in angle order) and the five-neuron model's W_in-proj / W_out-proj on the circle.

Each takes an ``MLPData`` and returns a ``base.Figure``; colours as ``mlp_figures``. The public
wrappers are in ``groklab.report.figures``.
"""

from __future__ import annotations

import math

import numpy as np

from .base import Figure, f32, new_figure
from .mlp_data import MLPData
from .mlp_figures import ANSWER, TRAIN


def star_points(d: MLPData, k: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Group ``k``'s neurons in in-angle order and their ``[n, 2]`` (cos k, sin k) DFT
    coefficients of W_input and of W_output (final checkpoint)."""
    ns = [int(n) for n in d.star(k)["neurons"]]
    Di, Do = d.arrays["dft_W_input"], d.arrays["dft_W_output"]
    p_in = np.stack([Di[2 * k - 1, ns], Di[2 * k, ns]], 1)
    p_out = np.stack([Do[ns, 2 * k - 1], Do[ns, 2 * k]], 1)
    return ns, p_in, p_out


def _ring(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, 2 * np.pi, 73)
    r = float(np.hypot(points[:, 0], points[:, 1]).mean()) if len(points) else 1.0
    return r * np.cos(t), r * np.sin(t)


def polygon_traces(points: np.ndarray, names: list[int], col: str, show: bool = True) -> list:
    """A mean-norm circle, the closed line through ``points`` in their order, numbered dots."""
    import plotly.graph_objects as go

    cx, cy = _ring(points)
    loop = np.concatenate([points, points[:1]]) if len(points) else points
    return [go.Scatter(x=f32(cx), y=f32(cy), mode="lines", line=dict(color="#ccc", dash="dot", width=1),
                       hoverinfo="skip", showlegend=False),
            go.Scatter(x=f32(loop[:, 0]), y=f32(loop[:, 1]), mode="lines", line=dict(color=col, width=1.5),
                       hoverinfo="skip", showlegend=False),
            go.Scatter(x=f32(points[:, 0]), y=f32(points[:, 1]), mode="markers+text",
                       text=[str(n) for n in names],
                       textposition="top center", textfont=dict(size=10), marker=dict(color=col, size=8),
                       showlegend=False, visible=True if show else "legendonly",
                       hovertemplate="neuron %{text}: (%{x:.3g}, %{y:.3g})<extra></extra>")]


def stars_figure(d: MLPData) -> Figure:
    """Per key frequency: each neuron at (cos k, sin k) of its DFT coefficient, W_input (top) and
    W_output (bottom), both connected in the W_input angle order (PAIR ``mod-bot-freqs``)."""
    keys = d.key_freqs
    cols = max(1, min(len(keys), 6))
    blocks = max(1, math.ceil(len(keys) / cols))
    titles = []
    for b in range(blocks):
        ks = keys[b * cols:(b + 1) * cols]
        titles += [f"W_input, k = {k}" for k in ks] + [""] * (cols - len(ks))
        titles += [f"W_output, k = {k}" for k in ks] + [""] * (cols - len(ks))
    fig = new_figure(2 * blocks, cols, height=90 + 240 * 2 * blocks, subplot_titles=titles or None,
                     horizontal_spacing=0.04, vertical_spacing=0.12 / blocks)
    for i, k in enumerate(keys):
        ns, p_in, p_out = star_points(d, k)
        b, c = divmod(i, cols)
        for r, pts, col in ((2 * b + 1, p_in, TRAIN), (2 * b + 2, p_out, ANSWER)):
            for t in polygon_traces(pts, ns, col):
                fig.add_trace(t, row=r, col=c + 1)
        for r, pts in ((2 * b + 1, p_in), (2 * b + 2, p_out)):
            lim = 1.25 * float(np.hypot(pts[:, 0], pts[:, 1]).max(initial=1e-9))
            fig.update_xaxes(range=[-lim, lim], row=r, col=c + 1)
            fig.update_yaxes(range=[-lim, lim], row=r, col=c + 1)
    for r in range(1, 2 * blocks + 1):
        for c in range(1, cols + 1):
            n = (r - 1) * cols + c
            fig.update_yaxes(scaleanchor=f"x{n if n > 1 else ''}", showticklabels=False, zeroline=True,
                             zerolinecolor="#eee", row=r, col=c)
            fig.update_xaxes(showticklabels=False, zeroline=True, zerolinecolor="#eee", row=r, col=c)
    cap = ("Each dot is a neuron, at the cos and sin DFT coefficients of its frequency; lines join the "
           "neurons in the order of their W_input angle. Evenly spaced W_input dots make a polygon; "
           "W_output turns twice as fast, so the same order draws a star (5 neurons: a pentagram).")
    if not keys:
        cap = "No key frequency at the final checkpoint, so there is no star to draw."
    return Figure("fig-stars", "It's full of stars", cap, fig)


def five_projections(d: MLPData, idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The five-neuron model's trained matrices at checkpoints ``idx`` (into ``d.steps``), read
    from the checkpoint files:
    ``W_in-proj [F, 2, H]`` (``mlp.W_in``, columns = neurons) and ``W_out-proj [F, H, 2]``
    (``mlp.W_out``, rows = neurons); (cos, sin) of the fixed circle embedding."""
    ins, outs = [], []
    for c in idx:
        st = d.run.state_at(int(d.steps[c]))
        ins.append(st["mlp.W_in"].double().numpy())
        outs.append(st["mlp.W_out"].double().numpy())
    return np.stack(ins), np.stack(outs)


def _mean_step(a: np.ndarray) -> float:
    """Mean angle (degrees) from each point to the next, going round (a closed loop in this order)."""
    return float(np.degrees(np.mod(np.diff(np.append(a, a[:1])), 2 * np.pi)).mean()) if a.size else 0.0


def angle_steps(P_in: np.ndarray, P_out: np.ndarray) -> tuple[float, float]:
    """Mean angle (degrees) from one neuron to the next in W_in-proj angle order, for W_in-proj
    ``[2, H]`` (360/H: once round) and for W_out-proj ``[H, 2]`` taken in that same order (the
    construction: twice round, 720/H)."""
    a_in = np.arctan2(P_in[1], P_in[0])
    order = np.argsort(a_in)
    return _mean_step(a_in[order]), _mean_step(np.arctan2(P_out[order, 1], P_out[order, 0]))


def five_figure(d: MLPData, P_in: np.ndarray, P_out: np.ndarray, f: int = -1) -> Figure:
    """W_in-proj and W_out-proj of the five-neuron model (``P_in`` [F, 2, H], ``P_out`` [F, H, 2]
    from ``five_projections``) at their entry ``f``: each neuron's (cos, sin) pair, numbered, both
    connected in W_in-proj angle order (PAIR ``five-neurons``)."""
    pin, pout = P_in[f].T, P_out[f]  # (H, 2) each
    order = np.argsort(np.arctan2(pin[:, 1], pin[:, 0]))
    fig = new_figure(1, 2, height=430, horizontal_spacing=0.1,
                     subplot_titles=("W_in-proj (columns of mlp.W_in)", "W_out-proj (rows of mlp.W_out)"))
    for c, pts, col in ((1, pin, TRAIN), (2, pout, ANSWER)):
        for t in polygon_traces(pts[order], [int(j) for j in order], col):
            fig.add_trace(t, row=1, col=c)
        fig.update_yaxes(scaleanchor="x" if c == 1 else "x2", title_text="sin", row=1, col=c)
        fig.update_xaxes(title_text="cos", row=1, col=c)
    s_in, s_out = angle_steps(P_in[f], P_out[f])
    ratio = s_out / s_in if s_in else float("nan")
    cap = (f"Both connected in the order of the W_in-proj angles. Here consecutive neurons "
           f"are {s_in:.0f}° apart in W_in-proj and {s_out:.0f}° apart in W_out-proj: W_out-proj goes round "
           f"{ratio:.2f} times as fast (the construction: 2), which draws the pentagram.")
    return Figure("fig-five-proj", "The five neurons on the circle", cap, fig)
