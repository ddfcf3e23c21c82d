"""The words on the page: the summary table and the grokking story, written from the numbers."""

from __future__ import annotations

import html

from .data import ReportData


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{digits}g}"
    return html.escape(str(x))


def _step(s) -> str:
    return "not reached" if s is None else f"{int(s):,}"


def _until(s) -> str:
    return "not reached in this run" if s is None else f"until step {int(s):,}"


def summary_rows(d: ReportData) -> list[tuple[str, str]]:
    """``(label, value)`` rows of the summary table (values already HTML-escaped)."""
    c = d.run.config
    last = d.run.metrics[-1] if d.run.metrics else {}
    ph = d.phases
    clusters = d.summary.get("neuron_clusters") or {}
    frac = d.summary.get("frac_neurons_explained")
    fve = d.summary.get("logit_fit_fve")
    return [
        ("run", html.escape(str(d.run.path))),
        ("task", f"(a {html.escape(c.task.operation)} b) mod {c.task.p}, "
                 f"{100 * c.task.frac_train:.0f}% of the {c.task.p ** 2:,} pairs for training"),
        ("model", f"{c.model.n_layers} layer, {c.model.n_heads} heads, d_model {c.model.d_model}, "
                  f"d_mlp {c.model.d_mlp}, {html.escape(c.model.act_fn)}"),
        ("training", f"{c.train.steps:,} full-batch AdamW steps, lr {c.train.lr:g}, "
                     f"weight decay {c.train.weight_decay:g}, seed {c.train.seed}"
                     + (f", preset {html.escape(c.preset)}" if c.preset else "")),
        ("final step", _step(last.get("step", d.summary.get("final_step")))),
        ("final train / test loss", f"{_fmt(last.get('train_loss'))} / {_fmt(last.get('test_loss'))}"),
        ("final train / test accuracy", f"{_fmt(last.get('train_acc'))} / {_fmt(last.get('test_acc'))}"),
        ("grokking step", _step(d.summary.get("grokking_step"))),
        ("phase boundaries", f"memorisation ends {_step(ph['memorization_end'])}; circuit formation "
                             f"ends {_step(ph['circuit_formation_end'])}; cleanup ends "
                             f"{_step(ph['cleanup_end'])}"),
        ("key frequencies", ", ".join(map(str, d.key_freqs)) or "none found"),
        ("neuron clusters", ", ".join(f"k={k}: {v}" if int(k) >= 0 else f"unexplained: {v}"
                                      for k, v in sorted(clusters.items(), key=lambda kv: int(kv[0]) < 0))
         + (f" ({100 * frac:.1f}% explained)" if frac is not None else "")),
        ("logits ≈ Σ α_k cos(w_k(a+b−c))", f"{100 * fve:.1f}% of variance explained"
         if fve is not None else "—"),
    ]


def _at(d: ReportData, step) -> dict:
    """The analysis checkpoint nearest to ``step`` (empty if there are none)."""
    cks = d.checkpoints
    if not cks or step is None:
        return {}
    return min(cks, key=lambda c: abs(int(c["step"]) - int(step)))


def _change(d: ReportData, start, end, keys: list[tuple[str, str]]) -> str:
    """' Measured here: test loss 12.3 → 0.45, ...' between two steps (empty if unknown)."""
    a, b = _at(d, start), _at(d, end)
    if not a or not b or a is b:
        return ""
    parts = [f"{label} {_fmt(a.get(k))} → {_fmt(b.get(k))}" for k, label in keys
             if a.get(k) is not None and b.get(k) is not None]
    span = f"from step {int(a['step']):,} to {int(b['step']):,}"
    return f" <i>In this run, {span}: " + "; ".join(parts) + ".</i>"


def story_paragraphs(d: ReportData) -> list[str]:
    """The grokking story for this run, paragraph by paragraph (HTML)."""
    ph, keys = d.phases, d.key_freqs
    m = d.run.metrics
    grok = d.summary.get("grokking_step")
    mem, circ, clean = ph["memorization_end"], ph["circuit_formation_end"], ph["cleanup_end"]
    peak = max(m, key=lambda r: r.get("test_loss", 0.0)) if m else {}
    ks = ", ".join(map(str, keys)) or "(none found)"
    frac, fve = d.summary.get("frac_neurons_explained"), d.summary.get("logit_fit_fve")
    out = [
        "<b>What is being learned.</b> The network sees two numbers a and b (and an '=' token) and "
        f"must output (a + b) mod {d.p}. It trains on a fixed fraction of all pairs and is tested on "
        "the rest. Nanda et al. (2023) showed that a network that <i>groks</i> this task computes it "
        "with a Fourier algorithm: it embeds each number as waves cos(w_k a), sin(w_k a) for a few "
        "<i>key frequencies</i> w_k = 2πk/p, multiplies them in the MLP to get cos(w_k(a+b)) and "
        "sin(w_k(a+b)), and reads out the answer c where cos(w_k(a+b−c)) peaks.",
        f"<b>1. Memorisation</b> ({_until(mem)}). Train loss falls within a few hundred "
        f"steps while test loss climbs to about {_fmt(peak.get('test_loss'))} (step "
        f"{_step(peak.get('step'))}): the network has memorised the training pairs and does worse than "
        "guessing on the rest. The embedding's Fourier spectrum is still spread over all frequencies "
        "and its points, drawn on any frequency's plane, are a cloud.",
        f"<b>2. Circuit formation</b> ({_until(circ)}). Test loss barely moves, but inside "
        "the network the Fourier circuit is being built: the restricted loss (only the key-frequency "
        "part of the logits kept) falls and the excluded loss (those parts removed) rises, while "
        "weight decay slowly lowers the sum of squared weights. The key frequencies "
        f"({ks}) grow in the embedding and the circles appear."
        + _change(d, mem, circ if circ is not None else d.run.steps[-1],
                  [("test_loss", "test loss"), ("restricted_loss", "restricted loss"),
                   ("excluded_loss", "excluded loss"), ("sum_sq_weights", "Σw²")]),
        f"<b>3. Cleanup</b> ({_until(clean)}). Weight decay removes the memorising "
        "components the circuit no longer needs. Test loss now falls sharply"
        + (f": the model groks at step {_step(grok)}" if grok is not None else
           " (this run has not grokked yet: test accuracy never passed the threshold)")
        + ". The Gini coefficients of the Fourier norms of W_E and W_L jump: the weights become "
        "sparse in the Fourier basis."
        + (_change(d, circ, clean if clean is not None else d.run.steps[-1],
                   [("test_loss", "test loss"), ("gini_W_E", "Gini W_E"), ("gini_W_L", "Gini W_L"),
                    ("sum_sq_weights", "Σw²")]) if circ is not None else ""),
        f"<b>The algorithm.</b> At the end the embedding uses the key frequencies {ks}; MLP "
        "neurons specialise in one of them each (the neuron clusters), and W_L maps each cluster "
        "to the cos/sin directions of its frequency"
        + (f" ({100 * frac:.0f}% of the neurons are explained by one key frequency)" if frac is not None
           else "")
        + (f"; the fit Σ α_k cos(w_k(a+b−c)) explains {100 * fve:.0f}% of the logits' variance"
           if fve is not None else "")
        + ". Use the slider in <a href='#trajectory'>the trajectory view</a> to watch the circles "
        "and the neuron patterns form.",
    ]
    out += [f"<i>Analysis note: {html.escape(str(n))}</i>" for n in d.summary.get("notes") or []]
    if d.summary.get("final_step") is not None and d.run.steps and \
            int(d.summary["final_step"]) < d.run.steps[-1]:
        out.append(f"<i>Note: the analysis covers steps up to {int(d.summary['final_step']):,} but the "
                   f"run has checkpoints to {d.run.steps[-1]:,}; re-run <code>groklab analyze</code>.</i>")
    return out
