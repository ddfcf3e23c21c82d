"""The report of a sweep: ``groklab report SWEEP`` on a directory written by ``groklab sweep``.

PAIR's sweep chart (Pearce et al. 2023, "Generalizing With 1s and 0s"; ``pair.md`` §1.3) for this
sweep's members: small multiples of the members' outcomes, one panel per value of the facet key,
a cell per (x, y) pair, the seeds of a cell as a cluster of dots in PAIR's colours; hovering a dot
shows its loss curves in a side chart, clicking it opens its own report; two sliders move the
classifier's thresholds and recolour the dots and the class counts in the page. Seeds-only sweeps
(and every sweep with several seeds a cell) also get the seeds' grok steps and analysis numbers
as mean ± 95% t-interval and median. See ``docs/report.md`` "Sweep report".

Grid keys beyond the three shown get one figure per combination of their values (not pooled); the
count table pools each facet value over everything else. The page is the run pages' shell
(``page.render_page``): its data is one JSON payload (``traj-data``) and one script (``SWEEP_JS``).
"""

from __future__ import annotations

import base64
import gzip
import html
import itertools
import json
import math
import os
from pathlib import Path

import numpy as np

from ..runs import RunError, atomic_write
from .base import Figure
from .page import figure_html, render_page
from .sweep_data import CLASSES, SEED, Axes, SweepData, load_sweep, outcome_of, resolve_axes
from .sweep_figures import (
    COLOURS,
    NAMES,
    OUTLINES,
    SHORT,
    cells_table,
    count_rows,
    count_table,
    curves_figure,
    grid_figure,
    grok_figure,
    legend_html,
    member_label,
    short_name,
    stats_table,
)

SLIDER_MIN_LOSS = (-8.0, 0.0)  # log10 range of PAIR's "Min Test Loss" slider (1e-8 .. 1)
SLIDER_MAX_RATIO = (0.0, 8.0)  # log10 range of PAIR's "Max Test/Train Loss Ratio" slider (1 .. 1e8)
MISSING = 65535  # uint16 code of a loss that was not logged

CSS = """
main{max-width:1500px}
.sweep-layout{display:grid;grid-template-columns:minmax(0,1fr) 380px;gap:18px;align-items:start}
.sweep-main{overflow-x:auto}.sweep-side{position:sticky;top:70px}.sweep-side figure{margin:0}
@media (max-width:1100px){.sweep-layout{grid-template-columns:1fr}.sweep-side{position:static}}
table.sweep-table{border-collapse:collapse;font-size:.88em;margin:.6em 0}
table.sweep-table th,table.sweep-table td{padding:3px 9px;border-bottom:1px solid #eceef1;text-align:right}
table.sweep-table th:first-child{text-align:left}
#sweep-info table{font-size:.85em;border-collapse:collapse}
#sweep-info th{text-align:left;padding:1px 8px 1px 0}
.sweep-controls label{display:flex;gap:6px;align-items:center;flex:1}
.sweep-controls span{font-variant-numeric:tabular-nums;min-width:4.5em}
.sweep-legend{display:flex;flex-wrap:wrap;gap:4px 18px;font-size:.9em;margin:.8em 0}
.sweep-legend i{display:inline-block;width:11px;height:11px;border-radius:50%;border:1px solid;
margin-right:5px;vertical-align:-1px}
"""

SWEEP_JS = """
(function(){
  const S = JSON.parse(document.getElementById('traj-data').textContent);
  const M = S.members, minIn = document.getElementById('sweep-min-loss');
  const ratioIn = document.getElementById('sweep-max-ratio');
  let minLoss = S.min_loss, maxRatio = S.max_ratio, shown = null, P = null;
  function classify(i) {  // classify_outcome's rule (analysis/outcome.py): ties go to the later rule
    const [tr, te, r] = M[i].s;
    if (tr === null || te === null) return 'none';
    if (tr > minLoss) return 'cant_fit';
    if (te > minLoss) return 'memorise';
    if (r === null) return 'none';
    return r < maxRatio ? 'together' : 'grok';
  }
  const cls = M.map((_, i) => classify(i));
  const fmt = v => { const e = Math.floor(Math.log10(v) + 1e-9), m = v / Math.pow(10, e);
                     return (Math.abs(m - Math.round(m)) < 0.05 ? Math.round(m) : m.toFixed(1)) + 'e' + e; };
  const num = v => v === null ? '—' : (typeof v === 'number' ? +v.toPrecision(4) + '' : v);
  function curve(i) {
    if (P === null) return null;
    const a = P.off[i], b = P.off[i + 1];
    const dec = q => q === __MISSING__ ? null : Math.pow(10, P.lo + q * P.scale);
    return [Array.from(P.steps.subarray(a, b)), Array.from(P.train.subarray(a, b), dec),
            Array.from(P.test.subarray(a, b), dec)];
  }
  function info(i) {
    shown = i;
    const m = M[i], rows = [['outcome', S.names[cls[i]]], ...m.v, ['seed', m.seed], ['grok step', num(m.g)],
      ['min train loss', num(m.s[0])], ['min test loss', num(m.s[1])], ['max test/train', num(m.s[2])],
      ['steps', num(m.n)], ['stopped', m.st || '—'], ['results.csv outcome', m.o || '—']];
    const t = document.createElement('table');
    for (const [k, v] of rows) {
      const tr = t.insertRow(), th = document.createElement('th');
      th.textContent = k; tr.appendChild(th); tr.insertCell().textContent = v;
    }
    const a = document.createElement('a');
    a.href = m.r; a.target = '_blank'; a.textContent = 'open ' + m.d + '/report.html';
    const box = document.getElementById('sweep-info');
    box.replaceChildren(t, a);
    const c = curve(i);
    if (c) {
      const ends = c[0].length ? [c[0][0], c[0][c[0].length - 1]] : [0, 1];
      Plotly.restyle('fig-sweep-curves', {x: [c[0], c[0], ends], y: [c[1], c[2], [minLoss, minLoss]]},
                     [0, 1, 2]);
      Plotly.relayout('fig-sweep-curves', {'title.text': m.l.replace(/&/g, '&amp;').replace(/</g, '&lt;')});
    }
  }
  function recolour() {
    M.forEach((_, i) => { cls[i] = classify(i); });
    for (const g of S.grids) {
      Plotly.restyle(g.id, {'marker.color': g.traces.map(ix => ix.map(i => S.colours[cls[i]])),
                            'marker.line.color': g.traces.map(ix => ix.map(i => S.outlines[cls[i]]))},
                     g.traces.map((_, t) => t));
    }
    S.count_rows.forEach((ix, r) => {
      const n = {}; S.classes.forEach(c => { n[c] = 0; });
      ix.forEach(i => { n[cls[i]] += 1; });
      S.classes.forEach(c => { document.getElementById('sweep-count-' + r + '-' + c).textContent = n[c]; });
    });
    document.getElementById('sweep-min-loss-value').textContent = fmt(minLoss);
    document.getElementById('sweep-max-ratio-value').textContent = fmt(maxRatio);
    const ends = document.getElementById('fig-sweep-curves').data[2].x;
    Plotly.restyle('fig-sweep-curves', {x: [ends], y: [[minLoss, minLoss]]}, [2]);
    if (shown !== null) info(shown);
  }
  async function unpack(a) {
    const bin = Uint8Array.from(atob(a.gz), c => c.charCodeAt(0));
    const stream = new Blob([bin]).stream().pipeThrough(new DecompressionStream('gzip'));
    const buf = await new Response(stream).arrayBuffer();
    return new ({u2: Uint16Array, i4: Int32Array})[a.dtype](buf);
  }
  const C = S.curves;
  Promise.all([C.offsets, C.steps, C.train, C.test].map(unpack)).then(([off, steps, train, test]) => {
    P = {off, steps, train, test, lo: C.lo, scale: C.scale};
    for (const g of S.grids) {
      const gd = document.getElementById(g.id);
      const at = ev => (ev.points && ev.points.length && ev.points[0].customdata !== undefined)
        ? ev.points[0].customdata : null;
      gd.on('plotly_hover', ev => { const i = at(ev); if (i !== null) info(i); });
      gd.on('plotly_click', ev => { const i = at(ev); if (i !== null) window.open(M[i].r, '_blank'); });
    }
    minIn.addEventListener('input', () => { minLoss = Math.pow(10, +minIn.value); recolour(); });
    ratioIn.addEventListener('input', () => { maxRatio = Math.pow(10, +ratioIn.value); recolour(); });
    document.getElementById('sweep-reset').addEventListener('click', () => {
      minLoss = S.min_loss; maxRatio = S.max_ratio;
      minIn.value = Math.log10(minLoss); ratioIn.value = Math.log10(maxRatio); recolour();
    });
    minIn.disabled = false; ratioIn.disabled = false;
    window.groklabSweep = {classify, classes: cls, show: info, thresholds: () => [minLoss, maxRatio]};
    if (M.length) info(S.first);
    minIn.dataset.ready = '1';
  }).catch(e => { document.getElementById('sweep-info').textContent = 'curves unavailable: ' + e; });
})();
""".replace("__MISSING__", str(MISSING))


def _pack(x: np.ndarray) -> dict:
    """An array as ``{dtype, shape, gz}``: little-endian bytes, gzip, base64 (``trajectory._pack``'s
    format, for uint16 and int32)."""
    code = {np.dtype(np.uint16): "u2", np.dtype(np.int32): "i4"}[x.dtype]
    raw = np.ascontiguousarray(x).astype(x.dtype.newbyteorder("<")).tobytes()
    return {"dtype": code, "shape": list(x.shape),
            "gz": base64.b64encode(gzip.compress(raw, 9, mtime=0)).decode("ascii")}


def curves_payload(sd: SweepData) -> dict:
    """Every member's downsampled curves as flat arrays: ``offsets`` [M+1] int32 (member i's points
    are ``offsets[i]:offsets[i+1]``), ``steps`` int32, ``train``/``test`` uint16 levels of log10 loss
    (loss = 10^(lo + q·scale); ``MISSING`` where not logged or not positive)."""
    curves = [m.curve for m in sd.members]
    steps = [c[0] if c is not None else np.zeros(0, np.int64) for c in curves]
    losses = [np.concatenate([c[1], c[2]]) for c in curves if c is not None]
    v = np.concatenate(losses) if losses else np.zeros(0)
    v = v[np.isfinite(v) & (v > 0)]
    lo, hi = (float(np.log10(v.min())), float(np.log10(v.max()))) if v.size else (0.0, 1.0)
    scale = (hi - lo) / (MISSING - 1) if hi > lo else 1.0

    def q(c, j):
        x = c[j] if c is not None else np.zeros(0)
        ok = np.isfinite(x) & (x > 0)
        out = np.full(x.shape, MISSING, dtype=np.uint16)
        out[ok] = np.clip(np.rint((np.log10(x[ok]) - lo) / scale), 0, MISSING - 1)
        return out

    offsets = np.cumsum([0, *(len(s) for s in steps)]).astype(np.int32)
    return {"offsets": _pack(offsets), "steps": _pack(np.concatenate([*steps, np.zeros(0)]).astype(np.int32)),
            "train": _pack(np.concatenate([q(c, 1) for c in curves])),
            "test": _pack(np.concatenate([q(c, 2) for c in curves])), "lo": lo, "scale": scale}


def _num(x: float | None):
    """JSON-safe: None stays, ±inf becomes ±max float (compares the same against any threshold)."""
    return None if x is None else max(min(x, 1.7976931348623157e308), -1.7976931348623157e308)


def _combos(sd: SweepData, axes: Axes) -> list[dict]:
    """Every combination of the ``extra`` keys' values (one figure each); [{}] without extras."""
    values = itertools.product(*(sd.levels[k] for k in axes.extra))
    return [dict(zip(axes.extra, vs, strict=True)) for vs in values]


def sci(v: float) -> str:
    """``5e4``, ``3.2e-5``: the sliders' labels (the page's script formats them the same way)."""
    e = math.floor(math.log10(v) + 1e-9)
    m = v / 10 ** e
    return f"{round(m) if abs(m - round(m)) < 0.05 else f'{m:.1f}'}e{e}"


def _controls(sd: SweepData) -> str:
    def slider(name: str, label: str, rng: tuple[float, float], value: float) -> str:
        lv = math.log10(value)
        lo, hi = min(rng[0], math.floor(lv)), max(rng[1], math.ceil(lv))
        return (f'<label>{label} <input type="range" id="sweep-{name}" min="{lo}" max="{hi}" step="any" '
                f'value="{lv!r}" disabled aria-label="{label}">'
                f'<span id="sweep-{name}-value">{sci(value)}</span></label>')

    return ('<div class="controls sweep-controls">'
            + slider("min-loss", "min loss", SLIDER_MIN_LOSS, sd.min_loss)
            + slider("max-ratio", "max test/train ratio", SLIDER_MAX_RATIO, sd.max_ratio)
            + '<button id="sweep-reset">reset</button></div>')


def _rule_html(sd: SweepData) -> str:
    return (f"PAIR's rule (<code>analysis/outcome.py</code>), in the losses' recorded units: min train loss "
            f"&gt; <i>min loss</i> → {SHORT['cant_fit']}; else min test loss &gt; <i>min loss</i> → "
            f"{SHORT['memorise']}; else max test/train loss &lt; <i>max ratio</i> → {SHORT['together']}; "
            f"else {SHORT['grok']}. The sliders start at this sweep's thresholds ({sci(sd.min_loss)}, "
            f"{sci(sd.max_ratio)}); moving them recolours the dots and recounts the table.")


def build_sweep_report(sweep_dir: Path, output: Path | None = None, facet: str | None = None,
                       x: str | None = None, y: str | None = None, member_reports: bool = False,
                       fmt: str | None = None) -> Path:
    """Write the sweep's report page and return its path.

    Args:
        sweep_dir: a directory written by ``groklab sweep`` (``sweep.json``, ``results.csv``,
            ``runs/<member>/``).
        output: the HTML file (default ``SWEEP/report.html``). Links to the members' reports are
            relative to its folder.
        facet, x, y: the small multiples' keys (``sweep_data.resolve_axes``; None: the defaults).
        member_reports: first write every member's own report (``write_report(run_dir)``, which
            analyses the run if needed). Measured on a 5,000-step pair-parity member (501 metrics
            rows, 101 checkpoints; 1 CPU thread): about 1.0 s each, its analysis included (0.1 s;
            the first member of a process about 2 s, for the imports), and each page is about
            6 MB (plotly.js inlined): 1,125 members take about 20 minutes and 7 GB. A member that
            fails gets a note on the page.
        fmt: ``"png"``/``"svg"`` to also export the figures beside the page (``export.py``).

    Raises:
        RunError: ``sweep.json`` or ``results.csv`` is missing or corrupt.
        ConfigError: ``facet``, ``x`` or ``y`` is not a key of the sweep, or two are the same.
    """
    from . import write_report

    sweep_dir = Path(sweep_dir)
    sd = load_sweep(sweep_dir)
    axes = resolve_axes(sd.keys, facet, x, y)
    output = Path(output) if output is not None else sweep_dir / "report.html"
    if member_reports:
        for m in sd.members:
            try:
                write_report(sweep_dir / m.dir, None, None)
            except (RunError, ValueError, OSError) as e:
                sd.notes.append(f"{m.dir}: no report ({e})")
    classes = [outcome_of(m.stats, sd.min_loss, sd.max_ratio) for m in sd.members]
    rel = os.path.relpath(sweep_dir.resolve(), output.resolve().parent)
    link = lambda m: Path(rel, m.dir, "report.html").as_posix()  # noqa: E731
    n_reports = sum((sweep_dir / m.dir / "report.html").is_file() for m in sd.members)

    figures, grids = [], []
    for j, combo in enumerate(_combos(sd, axes)):
        ms = [m for m in sd.members if all(m.values[k] == v for k, v in combo.items())]
        title = ("Members with " + ", ".join(f"{short_name(k)} = {v}" for k, v in combo.items())) if combo \
            else "PAIR's small multiples"
        fig, traces = grid_figure(sd, axes, ms, classes, f"fig-sweep-grid-{j}", title)
        figures.append(fig)
        grids.append({"id": fig.id, "traces": traces})
    first = next((m.index for m in sd.members if classes[m.index] == "grok"), 0)
    curves = curves_figure(sd, sd.members[first], member_label(sd, sd.members[first]))
    rows = count_rows(sd, axes.facet)
    reports_note = ("Click a dot to open its member's report." if n_reports == len(sd.members) else
                    f"Click a dot to open its member's report ({n_reports} of {len(sd.members)} members have "
                    f"one; make them all with <code>groklab report {html.escape(str(sweep_dir))} "
                    "--member-reports</code>).")
    extra = (f" Keys not on the axes ({', '.join(short_name(k) for k in axes.extra)}): one figure per "
             "combination of their values; the counts pool them." if axes.extra else "")
    outcomes_html = (
        f"<style>{CSS}</style><p>Each dot is a member of the sweep, coloured by PAIR's four-way outcome. "
        f"Hover a dot for its loss curves and numbers (right). {reports_note}{extra}</p>"
        f"<p>{_rule_html(sd)}</p>{_controls(sd)}"
        '<div class="sweep-layout"><div class="sweep-main">' + legend_html()
        + "".join(figure_html(f) for f in figures)
        + "<h3>Outcome counts" + (f" per {html.escape(short_name(axes.facet))}" if axes.facet else "")
        + "</h3>"
        + count_table(rows, classes) + '</div><aside class="sweep-side">' + figure_html(curves)
        + '<div id="sweep-info"></div></aside></div>')
    sections: list[tuple[str, str, str, list[Figure]]] = [("outcomes", "Outcomes", outcomes_html, [])]
    per_cell = len(sd.members) / max(1, math.prod(len(sd.levels[k]) for k in sd.keys))
    if not sd.keys or per_cell >= 2:
        seeds_figs = [grok_figure(sd)] if any(m.grok_step is not None for m in sd.members) else []
        if sd.keys:
            intro = ("<p>The seeds of each grid cell: their outcomes (at the default thresholds), how many "
                     "grokked, and the mean (95% t-interval) and median grok step of those that did.</p>"
                     + cells_table(sd, classes))
            seeds_figs = []
        else:
            intro = ("<p>The spread over seeds: each statistic's mean with its 95% Student-t interval and "
                     "median, over the members that have it (the grok step: those that grokked).</p>"
                     + stats_table(sd.members))
        sections.append(("seeds", "Across seeds", intro, seeds_figs))
    figures.extend([curves, *(f for _, _, _, fs in sections for f in fs)])

    payload = {
        "members": [{"d": m.dir, "r": link(m), "l": member_label(sd, m), "s": [_num(v) for v in m.stats],
                     "g": m.grok_step, "n": m.steps, "st": m.stopped, "o": m.csv_outcome, "seed": m.seed,
                     "v": [[short_name(k), str(m.values[k])] for k in sd.keys]} for m in sd.members],
        "classes": list(CLASSES), "colours": COLOURS, "outlines": OUTLINES, "names": NAMES,
        "min_loss": sd.min_loss, "max_ratio": sd.max_ratio, "grids": grids,
        "count_rows": [ids for _, ids in rows], "curves": curves_payload(sd), "first": first,
    }
    page = render_page(f"groklab sweep report: {sweep_dir.name}", _subtitle(sd), _story(sd, classes),
                       _summary(sd, axes, n_reports), sections, payload, None, slider_js=SWEEP_JS)
    page = page.replace("<h2>The story of this run</h2>", "<h2>The story of this sweep</h2>", 1)
    atomic_write(output, page)
    if fmt is not None:
        from .export import export_figures

        export_figures(output, figures, fmt)
    return output


def _subtitle(sd: SweepData) -> str:
    s = sd.spec
    return html.escape(f"{s.get('kind', 'grid')} sweep of {s.get('preset') or 'a config'} · "
                       f"{len(sd.members):,} members · {len(sd.keys)} grid keys × "
                       f"{len(sd.levels[SEED])} seeds")


def _story(sd: SweepData, classes: list[str]) -> list[str]:
    s = sd.spec
    grid = "; ".join(f"<code>{html.escape(k)}</code> ∈ {html.escape(str(v))}" for k, v in s["grid"].items())
    counts = ", ".join(f"{SHORT[c]} <b>{classes.count(c)}</b>" for c in CLASSES if classes.count(c))
    n_seeds = len(sd.levels[SEED])
    paras = [
        f"This sweep trained {len(sd.members):,} members: the preset "
        f"<code>{html.escape(str(s.get('preset')))}</code>" + (f" over {grid}" if grid else " (seeds only)")
        + f", {n_seeds} seed{'s' if n_seeds != 1 else ''}" + (" a cell" if grid else "")
        + (" (each seed also sets the data split)" if s.get("vary_data") else "") + ".",
        f"With the thresholds min loss {sci(sd.min_loss)} and max ratio {sci(sd.max_ratio)} (PAIR's "
        f"defaults are 1e-5 and 5e4), the members are: {counts}.",
    ]
    if sd.notes:
        paras.append("Notes: " + "; ".join(html.escape(n) for n in sd.notes[:20])
                     + (f"; and {len(sd.notes) - 20} more" if len(sd.notes) > 20 else "") + ".")
    return paras


def _summary(sd: SweepData, axes: Axes, n_reports: int) -> list[tuple[str, str]]:
    s = sd.spec
    esc = lambda v: html.escape(str(v))  # noqa: E731
    placed = ", ".join(f"{w} = {n}" for w, n in (("facet", axes.facet), ("x", axes.x), ("y", axes.y)) if n)
    rows = [("kind", esc(s.get("kind"))), ("preset", esc(s.get("preset"))),
            ("overrides", esc(json.dumps(s.get("overrides") or {}))),
            ("grid", "<br>".join(f"{esc(k)}: {esc(v)}" for k, v in s["grid"].items()) or "— (seeds only)"),
            ("seeds", esc(sd.levels[SEED]) + (" (vary data)" if s.get("vary_data") else "")),
            ("members", f"{len(sd.members):,} ({n_reports:,} with a report)"),
            ("stop rule", esc(s.get("stop"))),
            ("thresholds", f"min loss {sci(sd.min_loss)}, max ratio {sci(sd.max_ratio)}"),
            ("axes", esc(placed) + (f"; one figure per {esc(', '.join(axes.extra))}" if axes.extra else ""))]
    return rows
