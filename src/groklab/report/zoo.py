"""The report of a non-modular run (digit addition, repeated subsequences, max element): the page
is built from the parts that apply to the task.

Every run: the story, the summary, the loss by part (linear and log y) with its phase changes, and
a checkpoint slider over the attention patterns of every head on one example sequence. Repeated
subsequences add the induction and previous-token scores through training; max element adds
END's attention on the special token per label. There is no Fourier section: that belongs to
modular arithmetic (``build.py``). The slider's data is packed as in ``trajectory.py`` (uint8
levels, gzip, base64) and redrawn with ``Plotly.restyle``.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ..runs import atomic_write
from .base import Figure
from .page import render_page, slider_script
from .trajectory import _pack, frame_indices
from .zoo_data import ZooData, attention_patterns, load_zoo_data
from .zoo_figures import (
    attention_figure,
    default_head,
    induction_scores_figure,
    loss_parts_figure,
    phase_changes_figure,
    skip_trigram_figure,
    trajectory_loss_figure,
)
from .zoo_story import example_html, story_paragraphs, summary_rows

ATTN_LEVELS = 64  # colour levels of the slider's attention maps (attention in [0, 1])
TASK_TITLES = {"digit_addition": "{n_digits}-digit addition", "repeated_subsequence": "repeated subsequences",
               "max_element": "max element (skip trigrams)"}

ZOO_JS = slider_script("""\
    const L = T.n_layers, H = T.n_heads, n = T.n, top = T.levels - 1;
    for (let l = 0; l < L; l++) {
      const zs = [];
      for (let h = 0; h < H; h++) {
        const base = ((f * L + l) * H + h) * n * n, rows = [];
        for (let q = 0; q < n; q++) {
          rows.push(Array.from(A.attn.subarray(base + q * n, base + (q + 1) * n), v => v / top));
        }
        zs.push(rows);
      }
      Plotly.restyle(T.figs[l], {z: zs}, range(H));
    }""", ["attn"], 400)


def attention_trajectory(d: ZooData) -> tuple[list[Figure], dict]:
    """The slider's figures (drawn at its last frame) and its payload: ``steps`` and the
    ``[F, n_layers, n_heads, n, n]`` attention on the example sequence as ``ATTN_LEVELS`` levels."""
    steps = [d.run.steps[i] for i in frame_indices(d.run.steps, d.run.steps)]
    pats = np.stack([attention_patterns(d, s) for s in steps])  # (F, L, H, n, n)
    levels = np.clip(np.rint(pats * (ATTN_LEVELS - 1)), 0, ATTN_LEVELS - 1).astype(np.uint8)
    last = levels[-1].astype(np.float32) / (ATTN_LEVELS - 1)  # the page opens on the last frame
    figs = [attention_figure(d, last[layer], layer, head=default_head(d, layer, last))
            for layer in range(d.n_layers)]
    payload = {"steps": steps, "n_layers": d.n_layers, "n_heads": d.n_heads, "n": int(pats.shape[-1]),
               "levels": ATTN_LEVELS, "attn": _pack(levels), "figs": [f.id for f in figs]}
    return [trajectory_loss_figure(d, steps[-1]), *figs], payload


def _intro(text: str) -> str:
    return f"<p>{text}</p>"


def zoo_sections(d: ZooData) -> tuple[list[tuple[str, str, str, list[Figure]]], dict]:
    """``(anchor, heading, intro, figures)`` of every section that applies to the run, and the
    slider payload."""
    traj_figs, payload = attention_trajectory(d)
    sections = [
        ("training", "Loss by part", _intro(
            "The loss of each part (Nanda & Lieberum 2022, section <i>Phase Changes</i>), on a linear and "
            "a log scale, and the phase changes the analysis found in every curve. Click a legend entry "
            "to hide a part."), [loss_parts_figure(d), phase_changes_figure(d)]),
        ("trajectory", "Attention through training", _intro(
            "Drag the slider (or press play) to move through the checkpoints. The heatmaps are the "
            f"attention of every head on one example sequence, drawn from the task with a fixed seed: "
            f"{example_html(d)} (in bold, the tokens the loss is on). Axis labels are its tokens."),
         traj_figs),
    ]
    if d.name == "repeated_subsequence" and d.n_layers >= 2:
        sections.append(("circuit", "The induction circuit", _intro(
            "Per head and checkpoint, on held-out sequences: the previous-token score (layer 0, mean "
            "attention from position i to i−1) and the induction score (layer 1, mean attention from a "
            "repeated token to the position just after its earlier occurrence), after Olsson et al. "
            "(2022)."), [induction_scores_figure(d)]))
    if d.name == "max_element":
        sections.append(("circuit", "Skip trigrams", _intro(
            "For each label, the END position's attention on the special token through training: a "
            "skip trigram has formed when END attends to the special token."), [skip_trigram_figure(d)]))
    return sections, payload


def build_zoo_report(run_dir: Path, output: Path | None, fmt: str | None) -> Path:
    """``write_report`` for a non-modular run (``fmt`` already checked)."""
    d = load_zoo_data(run_dir)
    output = output or run_dir / "report.html"
    sections, payload = zoo_sections(d)
    c = d.run.config
    task = TASK_TITLES.get(d.name, d.name).format(**vars(c.task))
    title = f"groklab report: {c.preset or 'run'} {run_dir.name}"
    m = c.model
    sub = html.escape(f"{task} · {m.n_layers}-layer {'attention-only ' if m.attn_only else ''}transformer "
                      f"· {len(d.run.metrics):,} evaluations · {len(d.run.steps):,} checkpoints")
    page = render_page(title, sub, story_paragraphs(d), summary_rows(d), sections, payload, "trajectory",
                       slider_js=ZOO_JS)
    atomic_write(output, page)  # follows the umask, like any tool's output
    if fmt is not None:
        from .export import export_figures

        export_figures(output, [f for _, _, _, figs in sections for f in figs], fmt)
    return output
