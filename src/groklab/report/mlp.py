"""The report of an MLP-family run (``model.family: mlp``): PAIR's explorable (Pearce et al. 2023,
"Do Machine Learning Models Memorize or Generalize?"; pair.md §2) as a page of this run.

Modular addition (pair2023, the five-neuron model, constructions): accuracy and loss; W_input and
W_output heatmaps and waves at the slider's checkpoint; the five-neuron model's projections on the
circle; the DFTs and the stars; the logits of each frequency group for an (a, b) the reader picks;
the progress measures. Sparse parity: accuracy and loss, the W_input heatmap, every W_input weight
through training and the live distractor weights. The slider is the other pages' (``page.py``);
its arrays are uint8 levels, gzip, base64 (``trajectory._pack``). The per-group logits are computed
in the page from the final W_input / W_output (``mlp_figures.logits_payload``).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ..runs import atomic_write
from .base import Figure, to_u8
from .clock_pizza import clock_pizza_section
from .mlp_data import MLPData, load_mlp_data
from .mlp_figures import (
    ANSWER,
    OTHER,
    dft_figure,
    group_logits_figure,
    logits_payload,
    modular_training_figure,
    progress_figure,
    waves_figure,
    weights_figure,
)
from .mlp_parity_figures import (
    live_distractors_figure,
    parity_training_figure,
    parity_trajectory_figure,
    parity_weights_figure,
)
from .mlp_star_figures import five_figure, five_projections, stars_figure
from .mlp_story import story_paragraphs, summary_rows
from .page import render_page, slider_script
from .trajectory import _pack

MODULAR_JS = slider_script("""\
    const p = T.p, H = T.H, order = T.order;
    const si = (T.win_hi - T.win_lo) / 255, so = (T.wout_hi - T.wout_lo) / 255;
    const wi = (a, j) => T.win_lo + si * A.win[(f * p + a) * H + j];  // W_input[a, j]
    const wo = (j, c) => T.wout_lo + so * A.wout[(f * H + j) * p + c];  // W_output[j, c]
    Plotly.restyle('fig-weights', {z: [order.map(j => range(p).map(a => wi(a, j))),
                                       order.map(j => range(p).map(c => wo(j, c)))]}, [0, 1]);
    Plotly.restyle('fig-waves', {y: T.waves.map(([j, w]) => range(p).map(x => w ? wo(j, x) : wi(x, j)))},
                   range(T.waves.length));
    if (T.five) {
      const pin = j => [A.pin[2 * f * H + j], A.pin[(2 * f + 1) * H + j]];
      const pout = j => [A.pout[(f * H + j) * 2], A.pout[(f * H + j) * 2 + 1]];
      const ang = j => Math.atan2(pin(j)[1], pin(j)[0]);
      const ord = range(H).sort((u, v) => ang(u) - ang(v));
      const xs = [], ys = [], ring = range(73).map(i => 2 * Math.PI * i / 72);
      for (const g of [pin, pout]) {
        const pts = ord.map(g), r = pts.reduce((s, q) => s + Math.hypot(q[0], q[1]), 0) / H;
        xs.push(ring.map(t => r * Math.cos(t)), [...pts.map(q => q[0]), pts[0][0]], pts.map(q => q[0]));
        ys.push(ring.map(t => r * Math.sin(t)), [...pts.map(q => q[1]), pts[0][1]], pts.map(q => q[1]));
      }
      const names = ord.map(String);
      Plotly.restyle('fig-five-proj', {x: xs, y: ys}, range(6));
      Plotly.restyle('fig-five-proj', {text: [names, names]}, [2, 5]);
    }""", ["win", "wout", "pin", "pout"], 350)

LOGITS_JS = """
(function(){
  const L = JSON.parse(document.getElementById('traj-data').textContent).logits;
  const ia = document.getElementById('logit-a'), ib = document.getElementById('logit-b');
  const label = document.getElementById('logit-ab');
  const p = L.p, H = L.H, Wi = L.W_input, Wo = L.W_output;
  const act = L.act === 'relu' ? (x => Math.max(x, 0)) : (x => x * x);
  function logits(a, b, ns) {  // act(W_input[a] + W_input[b]) masked to ns, times W_output
    const out = new Array(p).fill(0);
    for (const j of (ns === null ? Array.from({length: H}, (_, i) => i) : ns)) {
      const h = act(Wi[a * H + j] + Wi[b * H + j]);
      if (h === 0) continue;
      for (let c = 0; c < p; c++) out[c] += h * Wo[j * p + c];
    }
    return out;
  }
  function draw() {
    const a = +ia.value, b = +ib.value, ans = (a + b) % p;
    label.textContent = 'a = ' + a + ', b = ' + b + ':  (a + b) mod ' + p + ' = ' + ans;
    const colours = Array.from({length: p}, (_, c) => c === ans ? '__ANSWER__' : '__OTHER__');
    const ys = L.panels.map(q => logits(a, b, q[1]));
    Plotly.restyle('fig-group-logits', {y: ys, 'marker.color': ys.map(() => colours)},
                   ys.map((_, i) => i));
  }
  ia.addEventListener('input', draw); ib.addEventListener('input', draw);
  ia.disabled = false; ib.disabled = false; ia.dataset.ready = '1';
})();
""".replace("__ANSWER__", ANSWER).replace("__OTHER__", OTHER)

PARITY_JS = slider_script("""\
    const n = T.n, H = T.H;
    const si = (T.win_hi - T.win_lo) / 255, so = (T.wout_hi - T.wout_lo) / 255;
    const z = range(H).map(j => range(n).map(i => T.win_lo + si * A.win[(f * n + i) * H + j]));
    const zo = range(H).map(j => [T.wout_lo + so * A.wout[f * H + j]]);
    Plotly.restyle('fig-parity-weights', {z: [z, zo]}, [0, 1]);
    Plotly.relayout('fig-parity-trajectory', {'shapes[0].x0': step, 'shapes[0].x1': step});""",
                          ["win", "wout"], 300)


def _u8(W: np.ndarray) -> tuple[dict, float, float]:
    """``W`` as 256 levels of ``[-max|W|, max|W|]``, packed, and that range."""
    m = float(np.abs(W).max(initial=0.0)) or 1.0
    q, lo, hi = to_u8(W, -m, m)
    return _pack(q), lo, hi


def _intro(text: str) -> str:
    return f"<p>{text}</p>"


def _logit_controls(L: dict) -> str:
    p = L["p"]
    rng = lambda i, v: (f'<label>{i} <input type="range" id="logit-{i}" min="0" max="{p - 1}" '  # noqa: E731
                        f'value="{v}" step="1" disabled aria-label="{i}"></label>')
    return (f'<div class="controls">{rng("a", L["a"])}{rng("b", L["b"])}<span id="logit-ab">a = {L["a"]}, '
            f'b = {L["b"]}:  (a + b) mod {p} = {(L["a"] + L["b"]) % p}</span></div>')


def modular_sections(d: MLPData) -> tuple[list[tuple[str, str, str, list[Figure]]], dict]:
    """The modular page's sections and its slider payload."""
    F = d.frames
    Wi, Wo = d.arrays["W_input"][F], d.arrays["W_output"][F]  # (F, p, H), (F, H, p)
    win, wi_lo, wi_hi = _u8(Wi)
    wout, wo_lo, wo_hi = _u8(Wo)
    waves, wave_traces = waves_figure(d)
    L = logits_payload(d)
    payload = {"steps": [int(d.steps[c]) for c in F], "p": d.p, "H": int(Wi.shape[2]),
               "order": [int(j) for j in d.sort_order], "win": win, "win_lo": wi_lo, "win_hi": wi_hi,
               "wout": wout, "wout_lo": wo_lo, "wout_hi": wo_hi, "waves": [list(t) for t in wave_traces],
               "five": d.is_circle, "logits": L}
    traj = [modular_training_figure(d), weights_figure(d)]
    if d.is_circle:
        P_in, P_out = five_projections(d, F)
        payload.update(pin=_pack(P_in.astype(np.float32)), pout=_pack(P_out.astype(np.float32)))
        traj.append(five_figure(d, P_in, P_out))
    else:
        payload.update(pin=_pack(np.zeros(1, np.float32)), pout=_pack(np.zeros(1, np.float32)))
    traj.append(waves)
    sections = [
        ("trajectory", "Training, and the weights through it", _intro(
            "Drag the slider (or press play) to move through the checkpoints, as hovering PAIR's accuracy "
            "chart does: the black line on the curves marks it, and the weights below are that checkpoint's. "
            "W_input = W_E W_in maps each number to the neurons; W_output = W_out W_Eᵀ maps the neurons to "
            "the output numbers."), traj),
        ("stars", "It's full of stars", _intro(
            f"The final checkpoint (step {d.final_step:,}) in the Fourier basis: each neuron of the "
            "generalising network reads and writes one frequency, and the neurons of a frequency form a "
            "star."),
         [dft_figure(d), stars_figure(d)]),
        ("logits", "Logits per frequency group", _intro(
            "Pick a and b. Each panel runs the final network with the hidden layer masked to one frequency "
            "group's neurons (computed in this page from W_input and W_output).") + _logit_controls(L),
         [group_logits_figure(d, payload=L)]),
        ("progress", "Progress measures", _intro(
            "Per checkpoint: how concentrated W_input is on a few frequencies, and the size of the weights."),
         [progress_figure(d)]),
    ]
    if (cp := clock_pizza_section(d.summary, d.arrays)) is not None:  # addition with an embedding
        sections.append(cp)
    return sections, payload


def parity_sections(d: MLPData) -> tuple[list[tuple[str, str, str, list[Figure]]], dict]:
    """The sparse-parity page's sections and its slider payload."""
    F = d.frames
    W_in, W_out = d.arrays["W_in"][F], d.arrays["W_out"][F]  # (F, n+1, H), (F, H)
    win, wi_lo, wi_hi = _u8(W_in)
    wout, wo_lo, wo_hi = _u8(W_out)
    payload = {"steps": [int(d.steps[c]) for c in F], "n": int(W_in.shape[1]), "H": int(W_in.shape[2]),
               "win": win, "win_lo": wi_lo, "win_hi": wi_hi, "wout": wout, "wout_lo": wo_lo, "wout_hi": wo_hi}
    sections = [
        ("trajectory", "Training, and the weights through it", _intro(
            "Drag the slider (or press play) to move through the checkpoints: the black lines mark it, and "
            "the heatmap shows W_input at that checkpoint."),
         [parity_training_figure(d), parity_weights_figure(d), parity_trajectory_figure(d)]),
        ("pruning", "Pruning the distractors", _intro(
            "Weight decay shrinks the weights on the distracting digits; the network generalises when the "
            "last ones are gone."), [live_distractors_figure(d)]),
    ]
    return sections, payload


def build_mlp_report(run_dir: Path, output: Path | None, fmt: str | None) -> Path:
    """``write_report`` for a ``model.family: mlp`` run (``fmt`` already checked)."""
    run_dir = Path(run_dir)
    d = load_mlp_data(run_dir)
    output = output or run_dir / "report.html"
    c = d.run.config
    if d.task == "modular":
        sections, payload = modular_sections(d)
        js = MODULAR_JS + LOGITS_JS
        what = f"(a + b) mod {d.p}"
    else:
        sections, payload = parity_sections(d)
        js = PARITY_JS
        what = f"parity of {c.task.k} of {c.task.n_bits} bits"
    title = f"groklab report: {c.preset or 'run'} {run_dir.name}"
    sub = html.escape(f"{what} · one-layer MLP, {c.model.d_hidden} neurons ({c.model.act_fn}) "
                      f"· {len(d.run.metrics):,} evaluations · {len(d.run.steps):,} checkpoints")
    page = render_page(title, sub, story_paragraphs(d), summary_rows(d), sections, payload, "trajectory",
                       slider_js=js)
    atomic_write(output, page)
    if fmt is not None:
        from .export import export_figures

        export_figures(output, [f for _, _, _, figs in sections for f in figs], fmt)
    return output
