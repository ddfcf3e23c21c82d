"""The words of an MLP-family run's page: the story and the summary table, from this run's numbers
(``analysis.json``: outcome, grokking step, key frequencies, neurons per frequency, the stars'
spacing and doubled-rotation fits; sparse parity: the prune step and the accuracy jump)."""

from __future__ import annotations

import html
import math

from .mlp_data import MLPData
from .mlp_figures import first_at

OUTCOMES = {  # PAIR's four classes (analysis/outcome.py), as the page says them
    "grok": "<b>grokking</b>: test loss fell long after train loss",
    "together": "<b>train and test loss fell together</b> (no memorisation first)",
    "memorise": "<b>memorisation</b>: the test loss never fell below PAIR's 1e-5",
    "cant_fit": "<b>it could not fit</b> the training data (train loss stayed above PAIR's 1e-5)",
}
STAR_DEG = 20.0  # a group "is a star" when its spacing and doubled rotation are this close (degrees)


def _n(x) -> str:
    return "—" if x is None else f"{int(x):,}"


def _g(x, fmt: str = ".3g") -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _training(d: MLPData) -> str:
    t = d.run.config.train
    reg = "L1" if t.regularization == "l1" else "L2"
    return f"{t.steps:,} steps of AdamW (lr {t.lr:g}, {reg} weight decay {t.weight_decay:g})"


def _outcome(d: MLPData) -> str:
    o = d.summary.get("outcome")
    return OUTCOMES.get(o, f"<b>{html.escape(str(o))}</b>") if o else "not classified (no test loss logged)"


def _by_loss(d: MLPData) -> str:
    """A note when PAIR's loss thresholds and the accuracies disagree (e.g. a tiny model that is
    right on every pair but never pushes its loss below 1e-5)."""
    o, fin = d.summary.get("outcome"), d.summary.get("final") or {}
    tr, te = fin.get("train_acc") or 0.0, fin.get("test_acc") or 0.0
    if o == "cant_fit" and tr >= 0.99:
        return (f" The classifier goes by the loss alone: train accuracy is {tr:.1%}"
                + (f" and test accuracy {te:.1%}" if te >= 0.99 else "") + ".")
    if o == "memorise" and te >= 0.99:
        return f" The classifier goes by the loss alone: test accuracy is {te:.1%}."
    return ""


def star_words(d: MLPData, k: int) -> str:
    """One group's star fit in words: spacing and doubled rotation (degrees), and its logits' FVE."""
    s = d.star(k)
    sp, rot = math.degrees(s["spacing_deviation"]), math.degrees(s["rotation_max_residual"])
    fve = s.get("group_fve")
    wave = f"one wave explains {fve:.0%} of its logits" if fve is not None else ""
    if len(s["neurons"]) < 3:  # two antipodal directions: the geometry is trivially "perfect"
        return f"k = {k}: two neurons (no star to judge)" + (f", {wave}" if wave else "")
    return (f"k = {k}: spacing within {sp:.0f}° of even, doubled rotation within {rot:.0f}°"
            + (f", {wave}" if wave else ""))


def is_star(d: MLPData, k: int) -> bool:
    """At least 3 neurons, spaced and doubled within ``STAR_DEG`` degrees."""
    s = d.star(k)
    return (len(s["neurons"]) >= 3 and math.degrees(s["spacing_deviation"]) < STAR_DEG
            and math.degrees(s["rotation_max_residual"]) < STAR_DEG)


def modular_story(d: MLPData) -> list[str]:
    c = d.run.config
    m, p, H, act = c.model, d.p, d.n_neurons, "ReLU" if d.act == "relu" else "x²"
    out = []
    if d.is_construction:
        out.append(
            f"These weights were <b>set by hand</b>, not trained: PAIR's star construction (the post's "
            f"Appendix A) for (a + b) mod {p}, {H} neurons with {act}. The page shows what the analysis of "
            "trained runs makes of it.")
    elif d.is_circle:
        w = "2πa" if m.circle_freq == 1 else f"2π·{m.circle_freq}a"
        out.append(
            f"This is PAIR's <b>{H}-neuron model</b> (Pearce et al. 2023, <i>Modular Addition With Five "
            f"Neurons</i>) for (a + b) mod {p}: a and b sit on a fixed circle, (cos, sin)({w}/{p}); "
            f"the same W_in-proj (2×{H}) takes each to the {H} neurons, {act} acts on the sum, and "
            f"W_out-proj ({H}×2) maps back onto the circle. Only those {4 * H} weights are trained, "
            f"on {c.task.frac_train:.0%} of the a ≤ b pairs, for {_training(d)}.")
    else:
        out.append(
            f"This is PAIR's <b>one-layer MLP</b> (Pearce et al. 2023) for (a + b) mod {p}: "
            f"{act}(W_input[a] + W_input[b]) W_output with {H} neurons, where W_input = W_E W_in ({p}×{H}) "
            f"and W_output = W_out W_Eᵀ ({H}×{p}). It trained on {c.task.frac_train:.0%} of the a ≤ b pairs "
            f"for {_training(d)}.")
    fin = d.summary.get("final") or {}
    grid = d.summary.get("grid_accuracy")
    if d.is_construction:
        out.append(f"On the whole {p}×{p} grid the construction's argmax is right for {_g(grid, '.1%')} "
                   "of the pairs.")
    else:
        tr, g = first_at(d, "train_acc", 0.99), d.summary.get("grokking_step")
        out.append(
            f"Outcome (PAIR's classifier): {_outcome(d)}.{_by_loss(d)} Train accuracy reached 99% "
            + (f"at step {tr:,}" if tr is not None else "never")
            + "; test accuracy " + (f"at step {int(g):,}" if g is not None else "never") + ". "
            f"At the end: train accuracy {_g(fin.get('train_acc'), '.1%')}, "
            f"test {_g(fin.get('test_acc'), '.1%')}"
            + (f", the full grid {_g(grid, '.1%')}." if grid is not None else "."))
    keys = d.key_freqs
    clusters = {int(k): int(n) for k, n in (d.summary.get("neuron_clusters") or {}).items()}
    if keys:
        per = ", ".join(f"k = {k} ({clusters.get(k, len(d.star(k)['neurons']))} neurons)" for k in keys)
        rest = H - sum(len(d.star(k)["neurons"]) for k in keys)
        judged = [k for k in keys if len(d.star(k)["neurons"]) >= 3]
        stars = [k for k in judged if is_star(d, k)]
        verdict = ("Every group of 3 or more neurons is a star" if judged and len(stars) == len(judged) else
                   f"{len(stars)} of the {len(judged)} groups of 3 or more neurons are stars" if stars else
                   "No group is a clean star yet")
        freqs = "frequency" if len(keys) == 1 else "frequencies"
        others = f"; {rest} neuron{'s' if rest != 1 else ''} in no key frequency" if rest else ""
        out.append(
            f"At step {d.final_step:,} the neurons use {len(keys)} key {freqs}: {per}{others}. "
            f"{verdict} (evenly spaced W_input angles, W_output at twice the angle, both within "
            f"{STAR_DEG:.0f}°): " + "; ".join(star_words(d, k) for k in keys) + ".")
    else:
        out.append(f"At step {d.final_step:,} no frequency has two or more neurons: there is no Fourier "
                   "structure yet.")
    return out


def parity_story(d: MLPData) -> list[str]:
    c, s = d.run.config, d.summary
    t = c.task
    live = d.arrays["live_distractors"].astype(int)
    out = [
        f"This is PAIR's <b>sparse parity</b> (<i>Generalizing With 1s and 0s</i>): sequences of {t.n_bits} "
        f"0s and 1s whose label is the parity of the first {t.k}; the other {t.n_bits - t.k} digits "
        "distract. "
        f"A one-layer MLP with {d.n_neurons} neurons reads the digits and a constant 1 (W_input is "
        f"{t.n_bits + 1}×{d.n_neurons}, its last row the bias) and W_output is one column. It trained on "
        + (f"{t.n_train:,} fixed sequences" if t.n_train else "fresh sequences") + f" for {_training(d)}.",
        f"Outcome (PAIR's classifier): {_outcome(d)}.{_by_loss(d)} Test accuracy reached "
        f"{s.get('acc_level', 0.9):g} "
        + (f"at step {int(s['acc_jump_step']):,}" if s.get("acc_jump_step") is not None else "never") + ".",
    ]
    thr, prune, jump = s.get("live_threshold"), s.get("prune_step"), s.get("acc_jump_step")
    if live.size:
        words = (f"Distractor weights with |w| > {_g(thr)}: {live[0]:,} at step {int(d.steps[0]):,}, "
                 f"{live[-1]:,} at the end")
        if prune is not None:
            words += f"; the last ones were pruned by step {int(prune):,}"
            if jump is not None:
                near = abs(int(jump) - int(prune)) <= 0.05 * d.final_step
                words += (", just as test accuracy jumped" if near else
                          f", {'after' if int(prune) > int(jump) else 'before'} test accuracy jumped")
        out.append(words + ".")
    return out


def story_paragraphs(d: MLPData) -> list[str]:
    return (modular_story(d) if d.task == "modular" else parity_story(d)) + [html.escape(n) for n in d.notes]


def summary_rows(d: MLPData) -> list[tuple[str, str]]:
    """``(label, html)`` rows of the summary table."""
    c, s = d.run.config, d.summary
    m, fin = c.model, s.get("final") or {}
    rows = [("run", html.escape(f"{c.preset or 'custom'} · {d.run.path.name}"))]
    if d.task == "modular":
        rows.append(("task", f"(a + b) mod {d.p}, {c.task.frac_train:.0%} of the a ≤ b pairs in training"))
    else:
        rows.append(("task", f"parity of the first {c.task.k} of {c.task.n_bits} bits, "
                             f"{c.task.n_train or 'fresh'} train / {c.task.n_test} test sequences"))
    emb = "circle (fixed)" if d.is_circle else m.embed
    rows += [("model", f"one-layer MLP, {m.d_hidden} neurons, {m.act_fn}, embedding {html.escape(emb)}"
              + ("" if d.task != "modular" else f", d_embed {m.d_embed}")),
             ("training", "hand-set (construction)" if d.is_construction else _training(d)),
             ("final loss (train / test)", f"{_g(fin.get('train_loss'))} / {_g(fin.get('test_loss'))}"),
             ("final accuracy (train / test)",
              f"{_g(fin.get('train_acc'), '.1%')} / {_g(fin.get('test_acc'), '.1%')}"),
             ("outcome (PAIR)", _outcome(d))]
    if d.task == "modular":
        rows += [("grid accuracy (all p² pairs)", _g(s.get("grid_accuracy"), ".2%")),
                 ("grokking step (test acc ≥ 99%)", _n(s.get("grokking_step"))),
                 ("key frequencies", ", ".join(map(str, d.key_freqs)) or "none"),
                 ("neurons per frequency",
                  ", ".join(f"k{k}: {n}" for k, n in (s.get("neuron_clusters") or {}).items())),
                 ("stars", "<br>".join(star_words(d, k) for k in d.key_freqs) or "—")]
    else:
        rows += [("prune step (no live distractor after)", _n(s.get("prune_step"))),
                 (f"test accuracy ≥ {s.get('acc_level', 0.9):g} at", _n(s.get("acc_jump_step")))]
    rows.append(("checkpoints analysed", f"{len(d.steps):,} (to step {d.final_step:,})"))
    return rows
