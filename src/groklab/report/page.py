"""Assemble the report as one self-contained HTML page: plotly.js inlined once, no network."""

from __future__ import annotations

import html
import json
import re

from .base import Figure

PLOT_CONFIG = {"responsive": True, "displaylogo": False,
               "toImageButtonOptions": {"format": "png", "scale": 2}}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9;line-height:1.5}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:1.7em;margin:.2em 0 .1em}h2{margin-top:2em;border-bottom:1px solid #e3e6ea;padding-bottom:.2em}
h3{margin:.2em 0 .1em;font-size:1.08em}
.sub{color:#5b6472;margin-top:0}nav a{margin-right:1em;font-size:.92em}
figure{margin:1.6em 0;padding:0}figcaption{color:#4a5361;font-size:.93em;margin-top:.2em;
border-left:3px solid #d62728;padding-left:.6em}
table.summary{border-collapse:collapse;font-size:.93em;width:100%}
table.summary th{width:16em;text-align:left;font-weight:600;padding:4px 14px 4px 0;white-space:nowrap;
vertical-align:top;color:#333}table.summary td{padding:4px 0;border-bottom:1px solid #f0f1f3}
.story p{max-width:880px}
.controls{position:sticky;top:0;z-index:10;background:#fff;padding:10px 0;border-bottom:1px solid #e3e6ea;
display:flex;gap:14px;align-items:center}
.controls input[type=range]{flex:1}.controls button{font-size:1em;padding:2px 12px}
#traj-step{font-variant-numeric:tabular-nums;min-width:12em}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:8px}
@media (max-width:900px){.grid2{grid-template-columns:1fr}}
"""

SLIDER_JS = """
(function(){
  const T = JSON.parse(document.getElementById('traj-data').textContent);
  const slider = document.getElementById('traj-slider');
  const label = document.getElementById('traj-step');
  const play = document.getElementById('traj-play');
  async function unpack(a){
    const bin = Uint8Array.from(atob(a.gz), c => c.charCodeAt(0));
    const stream = new Blob([bin]).stream().pipeThrough(new DecompressionStream('gzip'));
    const buf = await new Response(stream).arrayBuffer();
    const types = {f4: Float32Array, i1: Int8Array, u1: Uint8Array};
    return new types[a.dtype](buf);
  }
  function range(n){ return Array.from({length: n}, (_, i) => i); }
  const A = {}, keys = __KEYS__;
  let timer = null;
  function show(f){
    const step = T.steps[f];
    label.textContent = 'step ' + step.toLocaleString() + '  (' + (f + 1) + ' / ' + T.steps.length + ')';
    Plotly.relayout('fig-traj-loss', {'shapes[0].x0': step, 'shapes[0].x1': step});
__DRAW__
  }
  Promise.all(keys.map(k => unpack(T[k]))).then(arrays => {
    keys.forEach((k, i) => { A[k] = arrays[i]; });
    slider.disabled = false; play.disabled = false;
    slider.addEventListener('input', () => show(+slider.value));
    play.addEventListener('click', () => {
      if (timer) { clearInterval(timer); timer = null; play.textContent = '▶ play'; return; }
      if (+slider.value >= T.steps.length - 1) slider.value = 0;
      play.textContent = '❚❚ pause';
      timer = setInterval(() => {
        const f = +slider.value + 1;
        if (f >= T.steps.length) { clearInterval(timer); timer = null; play.textContent = '▶ play'; return; }
        slider.value = f; show(f);
      }, __MS__);
    });
    slider.dataset.ready = '1';
  }).catch(e => { label.textContent = '__WHAT__ unavailable: ' + e; });
})();
"""


def slider_script(draw: str, keys: list[str], interval_ms: int, what: str = "slider") -> str:
    """The checkpoint slider's script: unpack the payload arrays ``keys`` (``trajectory._pack``)
    into ``A``, then on every move set the step label and the loss figure's marker and run
    ``draw`` (JS with ``f``, the frame index, and ``T``, the payload, in scope)."""
    return (SLIDER_JS.replace("__KEYS__", json.dumps(keys)).replace("__DRAW__", draw)
            .replace("__MS__", str(interval_ms)).replace("__WHAT__", what))


TRAJECTORY_JS = slider_script("""\
    const p = T.embed.shape[1], K = T.n_circles, N = T.n_neurons, s = T.plane_scale;
    Plotly.restyle('fig-traj-embed', {y: [Array.from(A.embed.subarray(f * p, (f + 1) * p))]}, [0]);
    if (K > 0) {
      const xs = [], ys = [];
      for (let i = 0; i < K; i++) {
        const base = (f * K + i) * p * 2, x = [], y = [];
        for (let j = 0; j < p; j++) {
          x.push(s * A.planes[base + 2 * j]); y.push(s * A.planes[base + 2 * j + 1]);
        }
        xs.push(x); ys.push(y);
      }
      Plotly.restyle('fig-traj-circles', {x: xs, y: ys}, range(K));
    }
    if (N > 0) {
      const zs = [];
      for (let i = 0; i < N; i++) {
        const base = (f * N + i) * p * p, rows = [];
        for (let a = 0; a < p; a++) rows.push(Array.from(A.heat.subarray(base + a * p, base + (a + 1) * p)));
        zs.push(rows);
      }
      Plotly.restyle('fig-traj-neurons', {z: zs}, range(N));
    }""", ["embed", "planes", "heat"], 350, "trajectory")


def figure_json(fig) -> str:
    """The figure as JSON that is safe inside ``<script>``.

    plotly escapes ``/`` as ``\\u002f``, which inflates its base64 arrays (``////`` becomes 24
    characters); ``<`` and ``>`` stay escaped, so restoring ``/`` cannot form ``</script>``.
    """
    import plotly.io as pio

    return re.sub(r"(?<!\\)\\u002f", "/", pio.to_json(fig, pretty=False))


def figure_html(f: Figure) -> str:
    """A ``<figure>``: heading, the plotly div (id ``f.id``) and its one-line caption."""
    height = int(f.fig.layout.height or 450)
    div = (f'<div id="{f.id}" class="plotly-graph-div" style="height:{height}px;width:100%"></div>'
           f"<script>(function(){{const f={figure_json(f.fig)};"
           f"Plotly.newPlot('{f.id}',f.data,f.layout,{json.dumps(PLOT_CONFIG)});}})();</script>")
    return (f'<figure id="sec-{f.id[4:]}"><h3>{html.escape(f.title)}</h3>{div}'
            f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")


def summary_table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="summary" id="summary">{body}</table>'


def render_page(title: str, subtitle: str, story: list[str], summary: list[tuple[str, str]],
                sections: list[tuple[str, str, str, list[Figure]]], trajectory_payload: dict | None,
                trajectory_at: str | None, slider_js: str = TRAJECTORY_JS) -> str:
    """The whole page.

    Args:
        sections: ``(anchor, heading, intro_html, figures)`` in page order.
        trajectory_payload: slider data (``trajectory.Trajectory.payload``), or None.
        trajectory_at: the anchor of the section that gets the slider controls.
        slider_js: the slider's script (``slider_script``); the modular page's by default.
    """
    from plotly.offline import get_plotlyjs

    nav = " ".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h, _, _ in sections)
    parts = []
    for anchor, heading, intro, figs in sections:
        parts.append(f'<section id="{anchor}"><h2>{html.escape(heading)}</h2>{intro}')
        if trajectory_payload is not None and anchor == trajectory_at:
            n = len(trajectory_payload["steps"])
            parts.append(
                '<div class="controls"><button id="traj-play" disabled>▶ play</button>'
                f'<input type="range" id="traj-slider" min="0" max="{n - 1}" value="{n - 1}" step="1" '
                f'disabled aria-label="checkpoint"><span id="traj-step">step '
                f'{trajectory_payload["steps"][-1]:,} ({n} / {n})</span></div>')
        parts.extend(figure_html(f) for f in figs)
        parts.append("</section>")
    traj = ""
    if trajectory_payload is not None:
        data = json.dumps(trajectory_payload, separators=(",", ":")).replace("</", "<\\/")
        traj = (f'<script type="application/json" id="traj-data">{data}</script>'
                f"<script>{slider_js}</script>")
    story_html = "".join(f"<p>{p}</p>" for p in story)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body><main>"
        f"<h1>{html.escape(title)}</h1><p class='sub'>{subtitle}</p><nav>{nav}</nav>"
        f"<section id='story' class='story'><h2>The story of this run</h2>{story_html}</section>"
        f"<section id='summary-sec'><h2>Summary</h2>{summary_table(summary)}</section>"
        + "".join(parts) + traj + "</main></body></html>\n"
    )
