"""The "Clock or pizza?" section of a modular-addition report (Zhong et al. 2023, "The Clock and the
Pizza"): the three measures of ``analysis.json`` ``clock_pizza`` with the reading and its
thresholds, and the paper's picture, the correct logit over ((a + b) mod p, (a − b) mod p)
(``analysis.npz`` ``clock_pizza_logits``). Both the transformer page and the MLP page show it; a
run analysed before the measures existed has no ``clock_pizza`` and gets no section.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from .base import Figure, new_figure, to_u8, u8_colorbar

SectionT = tuple[str, str, str, list[Figure]]


def _num(x) -> str:
    return "—" if x is None else f"{float(x):.3f}"


def logit_table_figure(table: np.ndarray) -> Figure:
    """Heatmap of ``L[(a + b) mod p, (a − b) mod p]`` = the correct logit (the paper's Fig. 1/4).

    Args:
        table: ``[p, p]``, rows (a + b) mod p, columns (a − b) mod p (``sum_diff_table``).
    """
    import plotly.graph_objects as go

    p = table.shape[0]
    z, lo, hi = to_u8(table)
    fig = new_figure(height=560)
    fig.add_trace(go.Heatmap(z=z, zmin=0, zmax=255, colorscale="Viridis",
                             colorbar=u8_colorbar(lo, hi, "correct logit"),
                             hovertemplate=f"(a+b) mod {p} = %{{y}}, (a−b) mod {p} = %{{x}}<extra></extra>"))
    fig.update_xaxes(title_text=f"(a − b) mod {p}", showgrid=False, constrain="domain")
    fig.update_yaxes(title_text=f"(a + b) mod {p}", showgrid=False, autorange="reversed",
                     scaleanchor="x", constrain="domain")
    return Figure("fig-clock-pizza", "The correct logit by a + b and a − b",
                  "A clock's correct logit does not depend on a − b (no vertical bands: distance "
                  "irrelevance near 1); a pizza's does, through |cos(w(a − b)/2)| (vertical bands, "
                  "brightest where a and b are close on the circle: distance irrelevance well below 1).",
                  fig)


def _table(cp: dict[str, Any]) -> str:
    t = cp.get("thresholds") or {}
    pz, ck = t.get("pizza") or {}, t.get("clock") or {}
    rows = [
        ("gradient symmetricity", _num(cp.get("gradient_symmetricity")),
         f"≥ {pz.get('gradient_symmetricity_min', '—')}", f"< {ck.get('gradient_symmetricity_max', '—')}",
         "mean cosine of ∂logit_c/∂W_E[a] and ∂logit_c/∂W_E[b] over sampled (a, b, c)"),
        ("distance irrelevance", _num(cp.get("distance_irrelevance")),
         f"< {pz.get('distance_irrelevance_max', '—')}", f"≥ {ck.get('distance_irrelevance_min', '—')}",
         "how little the correct logit depends on a − b (1: not at all)"),
        ("circularity", _num(cp.get("circularity")), "", "",
         "top principal components of W_E on one frequency each (1: circles)"),
    ]
    head = ("<tr><th>measure</th><th>this run</th><th>pizza if</th><th>clock if</th>"
            "<th>what it measures</th></tr>")
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="summary" id="clock-pizza-table">{head}{body}</table>'


def clock_pizza_section(summary: dict[str, Any], arrays: dict[str, np.ndarray]) -> SectionT | None:
    """``(anchor, heading, intro_html, figures)`` for ``render_page``, or None when the analysis
    has no ``clock_pizza`` (an older run, or an operation other than add). The heatmap is left out
    when ``analysis.npz`` lacks ``clock_pizza_logits``."""
    cp = summary.get("clock_pizza")
    if not isinstance(cp, dict):
        return None
    reading = str(cp.get("reading") or "unclear")
    step = cp.get("checkpoint", summary.get("final_step"))
    at = f" at step {int(step):,}" if step is not None else ""
    verdict = {"pizza": "reads as a <b>pizza</b>", "clock": "reads as a <b>clock</b>",
               "unclear": "is <b>unclear</b>: neither rule holds"}.get(reading, html.escape(reading))
    intro = (
        "<p>Zhong et al. (2023) found two algorithms for modular addition. The <i>clock</i> (Nanda et "
        "al.'s) adds the angles of a and b; the <i>pizza</i> averages their embeddings and reads the "
        "answer off the slice the average falls in. They tell them apart by how symmetric the logit's "
        "gradients with respect to the two embeddings are and by whether the correct logit depends on "
        f"a − b. The final checkpoint{at} {verdict} (pizza if both pizza rules hold, clock if both "
        "clock rules hold, else unclear).</p>" + _table(cp))
    figs = [logit_table_figure(np.asarray(arrays["clock_pizza_logits"]))] \
        if "clock_pizza_logits" in arrays else []
    return ("clock-pizza", "Clock or pizza?", intro, figs)
