"""The words of a non-modular run's page: the summary table and the story, from this run's numbers."""

from __future__ import annotations

import html

import numpy as np

from .zoo_data import ZooData, part_label
from .zoo_figures import _phase, main_split

WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine",
         10: "ten", 11: "eleven", 12: "twelve", 16: "sixteen"}

WHAT = {
    "digit_addition": (
        "The network reads two {n}-digit numbers, most significant digit first (<code>x + y =</code>), "
        "and writes their {n1}-digit sum after '='; each answer digit is a part of the loss, "
        "<code>digit0</code> being the final carry and <code>digit{n}</code> the units digit. Nanda & "
        "Lieberum (2022) found one phase change per digit, at different times."),
    "repeated_subsequence": (
        "A sequence of random tokens contains a subsequence of {sub} tokens repeated {rep} times; the "
        "loss is on predicting the tokens of the later copies (parts <code>copy1</code>, ...). Noise "
        "cannot be predicted, but a repeated token can, by an <i>induction circuit</i> (Olsson et al. "
        "2022): a previous-token head in layer 0 and an induction head in layer 1 that attends to the "
        "token after the earlier occurrence of the current one."),
    "max_element": (
        "A sequence of {L} small noise tokens holds one large special token; at END the network must "
        "name it (its label, one of {R}). Each label is a <i>skip trigram</i> 'special(i) … END → i', "
        "learned by END's attention to the special token; Nanda & Lieberum (2022) found the "
        "{Rw} phase changes at about the same time."),
}


def _step(s) -> str:
    return "—" if s is None else f"{int(s):,}"


def _g(x) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.3g}"


def first_below(steps: np.ndarray, y: np.ndarray, level: float) -> int | None:
    """The first step at which ``y`` is below ``level`` (None if never)."""
    idx = np.flatnonzero(np.nan_to_num(y, nan=np.inf) < level)
    return int(steps[idx[0]]) if idx.size else None


def _last(y: np.ndarray) -> float | None:
    ok = np.flatnonzero(np.isfinite(y))
    return float(y[ok[-1]]) if ok.size else None


def _count(n: int) -> str:
    return WORDS.get(n, str(n))


def part_changes(d: ZooData, split: str) -> list[tuple[str, int | None]]:
    """``(part, steepest step or None)`` for every part, in part order."""
    out = []
    for p in d.parts:
        pc = _phase(d, f"{split}.{p}")
        out.append((p, None if pc is None else int(pc["steepest"])))
    return out


def _phase_sentence(d: ZooData, split: str) -> str:
    if not d.phase_changes:
        return ("The phase changes are not marked: this run has no analysis yet "
                "(<code>groklab analyze</code>).")
    changes = part_changes(d, split)
    found = sorted([(s, p) for p, s in changes if s is not None])
    missing = [part_label(d.task, p) for p, s in changes if s is None]
    kind = {"digit_addition": "digit", "max_element": "skip-trigram", "repeated_subsequence": "copy"}.get(
        d.name, "part")
    if not found:
        return f"No per-part phase change was detected in the {split} loss."
    listed = ", ".join(f"{html.escape(part_label(d.task, p))} at {'step ' if i == 0 else ''}{s:,}"
                       for i, (s, p) in enumerate(found))
    if len(found) > 1 and found[0][0] == found[-1][0]:
        return (f"The {_count(len(found))} parts' {split} losses drop together, steepest at the same step "
                f"({found[0][0]:,}): one phase change shared by every part."
                + (f" No phase change was found for {html.escape(', '.join(missing))}." if missing else ""))
    if len(found) == 1:
        out = f"One {kind} phase change was found (the steepest drop of a part's {split} loss): {listed}"
    else:
        out = (f"The {_count(len(found))} {kind} phase changes (steepest drop of each part's {split} loss) "
               f"came in this order: {listed}")
    first, last = found[0][1], found[-1][1]
    spread = found[-1][0] - found[0][0]
    total = max(int(d.metric_steps.max(initial=1)), 1)
    if len(found) > 1:
        if spread <= 0.05 * total:
            out += f": at about the same time (within {spread:,} steps)"
        else:
            out += (f"; {html.escape(part_label(d.task, first))} first and "
                    f"{html.escape(part_label(d.task, last))} last")
            if d.name == "digit_addition" and first == "digit0":
                out += " (the carry digit first, as in the paper)"
    out += "."
    if missing:
        out += f" No phase change was found for {html.escape(', '.join(missing))}."
    return out


def _induction_sentence(d: ZooData, split: str) -> str:
    info = d.summary.get("induction")
    if not isinstance(info, dict):
        return ("The analysis has not named the circuit's heads yet; the scores figure below is "
                "computed by the report itself.") if d.name == "repeated_subsequence" else ""
    prev = ", ".join(info.get("prev_token_heads") or []) or "none"
    ind = ", ".join(info.get("induction_heads") or []) or "none"
    out = (f"The analysis names the previous-token head(s) {prev} in layer 0 and the induction head(s) "
           f"{ind} in layer 1")
    formed = info.get("formed_step")
    if formed is None:
        return out + "; the circuit has not formed in this run."
    out += f"; the circuit formed at step {int(formed):,}"
    pc = _phase(d, split)
    if pc is not None and pc.get("start") is not None and pc.get("end") is not None:
        where = ("inside" if pc["start"] <= formed <= pc["end"] else
                 "before" if formed < pc["start"] else "after")
        out += f", {where} the loss drop (steps {pc['start']:,}–{pc['end']:,})"
    return out + "."


def _trigram_sentence(d: ZooData) -> str:
    formed = (d.summary.get("skip_trigrams") or {}).get("formed_step")
    if not isinstance(formed, dict):
        return ""
    got = sorted((int(s), p) for p, s in formed.items() if s is not None)
    if not got:
        return "No skip trigram has formed yet (END does not attend to the special token)."
    out = (f"END's attention on the special token formed for {len(got)} of {len(formed)} labels, "
           f"between step {got[0][0]:,} ({got[0][1]}) and step {got[-1][0]:,} ({got[-1][1]})")
    return out + "."


def example_html(d: ZooData) -> str:
    """The example sequence as HTML, the tokens that carry a loss in bold (the predicted tokens; for
    max element the special token, whose label END predicts)."""
    ex = d.example
    tokens = [int(t) for t in ex.tokens[0]]
    if d.name == "max_element":
        bold = {int(ex.tokens[0].argmax())}
    else:
        bold = {int(p) + 1 for p in ex.positions[0] if int(p) + 1 < len(tokens)}
    words = [html.escape(d.task.vocab[t]) for t in tokens]
    return "<code>" + " ".join(f"<b>{w}</b>" if i in bold else w for i, w in enumerate(words)) + "</code>"


def story_paragraphs(d: ZooData) -> list[str]:
    """The run's story, paragraph by paragraph (HTML)."""
    c = d.run.config.task
    fmt = dict(n=getattr(c, "n_digits", 0), n1=getattr(c, "n_digits", 0) + 1, sub=getattr(c, "subseq_len", 0),
               rep=getattr(c, "num_repeats", 0), L=getattr(c, "seq_len", 0), R=getattr(c, "rand_size", 0),
               Rw=_count(getattr(c, "rand_size", 0)))
    out = [f"<b>What is being learned.</b> {WHAT.get(d.name, 'A sequence task.').format(**fmt)} "
           f"An example (in bold, the tokens the loss is on): {example_html(d)}."]
    steps = d.metric_steps
    tr, te = d.loss("train"), d.loss("test")
    t1, e1 = first_below(steps, tr, 1.0), first_below(steps, te, 1.0)
    data = (f"{c.n_train:,} fixed training examples" if d.finite else
            "a fresh batch every step (so the train loss is measured on unseen data)")
    loss = f"<b>The loss.</b> Trained on {data}, the train loss fell below 1 "
    loss += f"at step {t1:,}" if t1 is not None else "at no step of this run"
    if np.isfinite(te).any():
        if d.finite:
            loss += (f"; the test loss followed at step {e1:,}, {e1 - t1:,} steps later" if e1 is not None
                     and t1 is not None else f"; the test loss at step {e1:,}" if e1 is not None else
                     "; the test loss has not fallen below 1 yet (no grokking in this run)")
        else:
            loss += f" (test loss at step {e1:,})" if e1 is not None else ""
    loss += f". Final train / test loss: {_g(_last(tr))} / {_g(_last(te))}."
    split = main_split(d)
    pc = _phase(d, split)
    if pc is not None:
        loss += (f" The total {split} loss has one phase change from step {_step(pc.get('start'))} to "
                 f"{_step(pc.get('end'))}, steepest at {_step(pc['steepest'])}.")
    out.append(loss)
    out.append(f"<b>Phase changes.</b> {_phase_sentence(d, split)}")
    if d.name == "repeated_subsequence":
        out.append(f"<b>The circuit.</b> {_induction_sentence(d, split)} Use the slider in "
                   "<a href='#trajectory'>the attention view</a> to watch the heads' patterns form.")
    elif d.name == "max_element" and (s := _trigram_sentence(d)):
        out.append(f"<b>Skip trigrams.</b> {s}")
    out += [f"<i>Note: {html.escape(str(n))}</i>" for n in d.notes + list(d.summary.get("notes") or [])]
    return out


def summary_rows(d: ZooData) -> list[tuple[str, str]]:
    """``(label, value)`` rows of the summary table (values HTML-escaped)."""
    cfg = d.run.config
    t, m, tr = cfg.task, cfg.model, cfg.train
    skip = ("name", "data_seed", "n_train", "n_test", "test_fresh")
    keys = {k: v for k, v in vars(t).items() if k not in skip}
    last = d.run.metrics[-1] if d.run.metrics else {}
    by_part = last.get(f"{'test' if d.finite else 'train'}_loss_by_part") or {}
    rows = [
        ("run", html.escape(str(d.run.path))),
        ("task", html.escape(f"{d.name}: " + ", ".join(f"{k} {v}" for k, v in keys.items()))),
        ("data", html.escape((f"{t.n_train:,} examples drawn once" if d.finite else
                              "a fresh batch every step")
                             + f"; test: {t.n_test:,} examples, "
                             + ("fresh at every evaluation" if t.test_fresh else "one fixed set")
                             + f"; data seed {t.data_seed}")),
        ("model", html.escape(f"{m.n_layers} layer{'s' if m.n_layers > 1 else ''}, "
                              + ("attention only, " if m.attn_only else f"d_mlp {m.d_mlp}, {m.act_fn}, ")
                              + f"{m.n_heads} head{'s' if m.n_heads > 1 else ''}, d_model {m.d_model}, "
                              f"d_head {m.d_head}"
                              + (", doubled residual" if getattr(m, "doubled_residual", False) else ""))),
        ("training", html.escape(f"{tr.steps:,} AdamW steps, batch {tr.batch_size or 'full'}, lr {tr.lr:g}, "
                                 f"weight decay {tr.weight_decay:g}, seed {tr.seed}"
                                 + (f", preset {cfg.preset}" if cfg.preset else ""))),
        ("final step", _step(last.get("step"))),
        ("final train / test loss", f"{_g(last.get('train_loss'))} / {_g(last.get('test_loss'))}"),
        ("train / test loss < 1 at step", f"{_step(first_below(d.metric_steps, d.loss('train'), 1))} / "
                                          f"{_step(first_below(d.metric_steps, d.loss('test'), 1))}"),
        (f"final {'test' if d.finite else 'train'} loss by part",
         html.escape(", ".join(f"{p} {_g(by_part.get(p))}" for p in d.parts))),
        ("phase changes (steepest step)",
         html.escape("; ".join(f"{p} {_step(s)}" for p, s in part_changes(d, main_split(d))))
         if d.phase_changes else "no analysis"),
    ]
    info = d.summary.get("induction")
    if isinstance(info, dict):
        rows.append(("induction circuit", html.escape(
            f"previous-token heads {', '.join(info.get('prev_token_heads') or []) or 'none'}; induction "
            f"heads {', '.join(info.get('induction_heads') or []) or 'none'}; formed at step "
            f"{_step(info.get('formed_step'))}")))
    formed = (d.summary.get("skip_trigrams") or {}).get("formed_step")
    if isinstance(formed, dict):
        rows.append(("skip trigrams formed",
                     html.escape(", ".join(f"{p} {_step(s)}" for p, s in formed.items()))))
    if d.summary.get("analyses"):
        rows.append(("analyses", html.escape(", ".join(map(str, d.summary["analyses"])))))
    return rows
