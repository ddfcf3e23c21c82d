"""``groklab analyze`` for the phase-change zoo (Nanda & Lieberum 2022, "Phase Changes"):
``digit_addition``, ``repeated_subsequence`` and ``max_element`` runs.

Every task gets the loss parts through training (``metrics.jsonl``) and the phase-change detector
(``analysis.phase``) on each loss curve and part. Repeated subsequences add the induction circuit
(Olsson et al. 2022, "In-context Learning and Induction Heads"): a previous-token score per
layer-0 head and an induction score per layer-1 head at every checkpoint. Max element adds the
skip trigrams: the END position's attention on the special token, per label, at every checkpoint.
Rules and the schema of ``analysis.json`` / ``analysis.npz``: ``docs/analysis_zoo.md``.

The score functions are pure (tensors in, tensors out) so they apply to any attention pattern.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..runs import Run
from ..tasks import Batch, build_task, generator
from .files import write_analysis
from .outcome import run_outcome
from .phase import EDGE_FRAC, FLOOR_FRAC, MAX_WIDTH_FRAC, MIN_FALL, MIN_SHARPNESS, PATIENCE, find_drops
from .spikes import run_spikes

SCHEMA_VERSION = 1
ANALYSIS_STREAM = 1000  # tasks.generator stream of the held-out analysis examples (not a training stream)
N_INDUCTION_SEQS = 64  # held-out sequences for the induction and previous-token scores
N_MAX_EXAMPLES = 1024  # held-out sequences for the skip-trigram attention (~100 per label)
PREV_TOKEN_THRESHOLD = 0.2  # a layer-0 head is a previous-token head if its final score is >= this
INDUCTION_THRESHOLD = 0.3  # a layer-1 head is an induction head if its final score is >= this
FORMED_FRAC = 0.5  # a circuit forms at the first checkpoint where its score reaches this x its final
SKIP_MIN_RISE = 0.1  # a skip trigram forms only if END's attention on its token rose by at least this

PHASE_RULE = (
    f"ln(max(loss, {FLOOR_FRAC:g} x initial level)) smoothed (Gaussian, sigma = max(1, n/150) points); "
    "steepest = most negative slope; its extent = the points around it whose slope is below "
    f"{EDGE_FRAC:g} x that peak, crossing at most {PATIENCE:g} sigma points above it in a row; start / "
    "end = first step covering 10% / 90% of the extent's fall; significant if it ends a new low by "
    f">= {MIN_FALL:.4f} (a factor 2 below every earlier smoothed value) and, if wider than "
    f"{MAX_WIDTH_FRAC:g} x the curve's span, its peak slope is >= {MIN_SHARPNESS:g} x its mean slope; "
    "repeated on unclaimed points; phase_changes keeps the drop with the largest fall (null: none)"
)


# --- induction circuit (pure) -----------------------------------------------------------------------
def prev_token_by_position(pattern: Float[Tensor, "batch head query key"]) -> Float[Tensor, "head query"]:
    """Attention from position i to i - 1 per head, averaged over the batch: ``[head, n_ctx - 1]``,
    column ``i - 1`` for query i."""
    return torch.diagonal(pattern, offset=-1, dim1=2, dim2=3).double().mean(0)


def prev_token_scores(pattern: Float[Tensor, "batch head query key"]) -> Float[Tensor, " head"]:
    """Previous-token score per head: mean attention from position i to i - 1, over i >= 1 and the
    batch (Olsson et al. 2022). 1 for a perfect previous-token head."""
    return prev_token_by_position(pattern).mean(1)


def uniform_pattern(batch: int, n_ctx: int) -> Float[Tensor, "batch 1 n_ctx n_ctx"]:
    """The causal pattern of a head that attends uniformly to positions 0..i: the baseline of the
    scores (prev-token: mean of 1/(i+1); 0.048 at n_ctx 85)."""
    tri = torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.float64))
    return (tri / tri.sum(1, keepdim=True)).expand(batch, 1, n_ctx, n_ctx)


def copy_starts(tokens: Int[Tensor, "batch pos"], positions: Int[Tensor, "batch K"], num_repeats: int,
                subseq_len: int) -> Int[Tensor, "batch R"]:
    """Start of every copy of a repeated-subsequence batch (``tasks.repeated_subsequence``).

    Copies 1.. start at the first loss slot of each block of ``subseq_len - 1`` slots; copy 0 (no
    loss) is found as the first window of the first interval whose tokens equal copy 1.

    Raises:
        ValueError: a sequence without an earlier copy of its repeated subsequence.
    """
    B, L = tokens.shape[0], subseq_len
    later = positions.reshape(B, num_repeats - 1, L - 1)[:, :, 0]  # (B, R-1)
    interval = (tokens.shape[1] - 1) // num_repeats
    win = tokens.unfold(1, L, 1)  # (B, n_ctx - L + 1, L): windows by start position
    rows = torch.arange(B)
    copy1 = win[rows, later[:, 0]]  # (B, L)
    cand = win[:, 1:interval - L + 2]  # starts 1 .. interval - L + 1
    match = (cand == copy1[:, None]).all(-1)  # (B, n_cand)
    if not bool(match.any(1).all()):
        raise ValueError("a sequence has no earlier copy of its repeated subsequence")
    first = 1 + match.int().argmax(1)
    return torch.cat([first[:, None], later], 1)


def induction_scores(pattern: Float[Tensor, "batch head query key"], starts: Int[Tensor, "batch R"],
                     subseq_len: int) -> Float[Tensor, " head"]:
    """Induction score per head (Olsson et al. 2022): for every token of a later copy that carries
    a loss (copy i >= 1, offsets j = 0 .. subseq_len - 2, query ``s_i + j``), the attention on the
    positions just after that token's earlier occurrences (``s_m + j + 1`` for every copy m < i),
    summed over those occurrences, then averaged over queries and the batch. 1 for a perfect
    induction head."""
    B, R = starts.shape
    j = torch.arange(subseq_len - 1)
    b = torch.arange(B)[:, None]
    total = torch.zeros(pattern.shape[1], dtype=torch.float64)
    n = 0
    for i in range(1, R):
        q = starts[:, i:i + 1] + j  # (B, L-1)
        for m in range(i):
            k = starts[:, m:m + 1] + j + 1
            total += pattern[b, :, q, k].double().sum(dim=(0, 1))  # (B, L-1, H) -> (H,)
        n += B * len(j)
    return total / n


# --- skip trigrams (pure) ---------------------------------------------------------------------------
def attn_on_special(pattern: Float[Tensor, "batch head query key"], tokens: Int[Tensor, "batch pos"],
                    labels: Int[Tensor, " batch"], rand_size: int) -> Float[Tensor, " label"]:
    """Per label: the END (last) position's attention on the special token, averaged over heads
    and the examples of that label (``tasks.max_element``; special tokens are ids >= rand_size + 2).
    NaN for a label without examples."""
    where = (tokens >= rand_size + 2).int().argmax(1)  # the one special token's position
    B = tokens.shape[0]
    a = pattern[torch.arange(B), :, -1, where].double().mean(1)  # (B,)
    out = torch.full((rand_size,), float("nan"), dtype=torch.float64)
    for r in range(rand_size):
        sel = labels == r
        if bool(sel.any()):
            out[r] = a[sel].mean()
    return out


def first_crossing(steps: list[int], values: np.ndarray, level: float) -> int | None:
    """The first step whose value is >= ``level``, or None."""
    hit = np.nonzero(np.asarray(values) >= level)[0]
    return int(steps[hit[0]]) if len(hit) else None


# --- loss parts and phase changes -------------------------------------------------------------------
def _f(x: Any) -> float:
    return float("nan") if x is None else float(x)


def loss_parts(metrics: list[dict], parts: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The loss curves of ``metrics.jsonl`` as arrays: ``metric_steps [S]``, ``train_loss`` /
    ``test_loss [S]`` and ``train_loss_by_part`` / ``test_loss_by_part [S, P]`` (NaN where absent)."""
    out = {"metric_steps": np.array([r["step"] for r in metrics], dtype=np.int64)}
    for split in ("train", "test"):
        out[f"{split}_loss"] = np.array([_f(r.get(f"{split}_loss")) for r in metrics], dtype=np.float64)
        out[f"{split}_loss_by_part"] = np.array(
            [[_f((r.get(f"{split}_loss_by_part") or {}).get(p)) for p in parts] for r in metrics],
            dtype=np.float64).reshape(len(metrics), len(parts))
    return out


def phase_changes(curves: dict[str, np.ndarray], parts: tuple[str, ...]) -> tuple[dict, dict]:
    """``phase_changes`` (main drop per curve, or None) and every significant drop per curve, for
    ``train``, ``test`` and ``<split>.<part>``."""
    steps = curves["metric_steps"].tolist()
    named = {}
    for split in ("train", "test"):
        named[split] = curves[f"{split}_loss"]
        for i, p in enumerate(parts):
            named[f"{split}.{p}"] = curves[f"{split}_loss_by_part"][:, i]
    main, every = {}, {}
    for name, y in named.items():
        drops = find_drops(steps, [None if not np.isfinite(v) else v for v in y])
        every[name] = [d.as_dict() for d in drops]
        best = max(drops, key=lambda d: d.fall) if drops else None
        main[name] = best.as_json() if best is not None else None
    return main, every


# --- the per-checkpoint passes ---------------------------------------------------------------------
def _patterns(model, tokens: Tensor, layers: list[int]) -> dict[int, Tensor]:
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in layers]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names=names)
    return {layer: cache[n] for layer, n in zip(layers, names, strict=True)}


def _inside(drop: dict | None, step: int | None) -> bool | None:
    """Whether ``step`` lies in the phase change ``drop`` (``start <= step <= end``); None when
    either is missing."""
    return None if drop is None or step is None else bool(drop["start"] <= step <= drop["end"])


def _induction(run: Run, task, bar) -> tuple[dict, dict]:
    cfg = run.config
    tc, L = cfg.task, cfg.model.n_layers
    batch: Batch = task.sample(N_INDUCTION_SEQS, generator(tc.data_seed, ANALYSIS_STREAM))
    starts = copy_starts(batch.tokens, batch.positions, tc.num_repeats, tc.subseq_len)
    ind_layer = 1 if L > 1 else 0
    uni = uniform_pattern(len(batch), batch.tokens.shape[1])
    base_prev = float(prev_token_scores(uni)[0])
    base_ind = float(induction_scores(uni, starts, tc.subseq_len)[0])
    prev, ind, by_pos = [], [], []
    for step in run.steps:
        pats = _patterns(run.model_at(step), batch.tokens, sorted({0, ind_layer}))
        by_pos.append(prev_token_by_position(pats[0]).numpy())
        prev.append(by_pos[-1].mean(1))
        ind.append(induction_scores(pats[ind_layer], starts, tc.subseq_len).numpy())
        if bar is not None:
            bar.update(1)
    prev_a, ind_a = np.stack(prev), np.stack(ind)  # (C, H)
    fp, fi = prev_a[-1], ind_a[-1]
    prev_heads = [f"L0H{h}" for h in np.argsort(-fp) if fp[h] >= PREV_TOKEN_THRESHOLD]
    ind_heads = [f"L{ind_layer}H{h}" for h in np.argsort(-fi) if fi[h] >= INDUCTION_THRESHOLD]
    formed = prev_formed = None
    if ind_heads:
        h = int(np.argmax(fi))
        formed = first_crossing(run.steps, ind_a[:, h], FORMED_FRAC * fi[h])
    if prev_heads:
        h = int(np.argmax(fp))
        prev_formed = first_crossing(run.steps, prev_a[:, h], FORMED_FRAC * fp[h])
    js = {
        "prev_token_heads": prev_heads, "induction_heads": ind_heads, "formed_step": formed,
        "prev_token_formed_step": prev_formed,
        "rule": (f"{N_INDUCTION_SEQS} held-out sequences (tasks.generator(data_seed, {ANALYSIS_STREAM})); "
                 "previous-token score of a layer-0 head = mean attention from position i to i-1 (i >= 1); "
                 f"induction score of a layer-{ind_layer} head = mean over the loss-carrying tokens of later "
                 "copies of the attention on the positions just after their earlier occurrences (summed "
                 f"over earlier copies); uniform_* = the scores of a uniform causal head; a head is named if "
                 f"its final score is >= {PREV_TOKEN_THRESHOLD:g} "
                 f"(previous-token) / {INDUCTION_THRESHOLD:g} (induction), best first; formed_step = first "
                 f"checkpoint where the best induction head's score reaches {FORMED_FRAC:g} x its final "
                 "value (null without an induction head); prev_token_formed_step likewise"),
        "prev_token_layer": 0, "induction_layer": ind_layer, "n_sequences": N_INDUCTION_SEQS,
        "final_prev_token_scores": fp.tolist(), "final_induction_scores": fi.tolist(),
        "uniform_prev_token_score": base_prev, "uniform_induction_score": base_ind,
        "thresholds": {"prev_token": PREV_TOKEN_THRESHOLD, "induction": INDUCTION_THRESHOLD,
                       "formed_frac": FORMED_FRAC},
    }
    return js, {"steps": np.array(run.steps, dtype=np.int64), "prev_token_score": prev_a,
                "induction_score": ind_a, "prev_token_by_position": np.stack(by_pos)}


def _skip_trigrams(run: Run, task, parts: tuple[str, ...], main: dict, bar) -> tuple[dict, dict]:
    tc = run.config.task
    R = tc.rand_size
    batch: Batch = task.sample(N_MAX_EXAMPLES, generator(tc.data_seed, ANALYSIS_STREAM))
    labels = batch.labels[:, 0]
    rows = []
    for step in run.steps:
        pat = _patterns(run.model_at(step), batch.tokens, [0])[0]
        rows.append(attn_on_special(pat, batch.tokens, labels, R).numpy())
        if bar is not None:
            bar.update(1)
    a = np.stack(rows)  # (C, R)
    formed, loss_steep = {}, {}
    for r, p in enumerate(parts):
        a0, a1 = a[0, r], a[-1, r]
        ok = np.isfinite(a0) and np.isfinite(a1) and a1 - a0 >= SKIP_MIN_RISE
        formed[p] = first_crossing(run.steps, a[:, r], a0 + FORMED_FRAC * (a1 - a0)) if ok else None
        d = main.get(f"test.{p}")
        loss_steep[p] = d["steepest"] if d else None
    js = {
        "formed_step": formed,
        "rule": (f"{N_MAX_EXAMPLES} held-out sequences (tasks.generator(data_seed, {ANALYSIS_STREAM})); "
                 "attention of the END position on the special token, mean over heads and the examples "
                 f"of each label, at every checkpoint; a skip trigram forms at the first checkpoint where "
                 f"that attention has covered {FORMED_FRAC:g} of its rise from the first checkpoint to the "
                 f"last (null if it rose by less than {SKIP_MIN_RISE:g}); loss_drop_steepest = the steepest "
                 "step of the label's test loss drop (phase_changes)"),
        "loss_drop_steepest": loss_steep,
        "final_attn_on_special": {p: float(a[-1, r]) for r, p in enumerate(parts)},
        "initial_attn_on_special": {p: float(a[0, r]) for r, p in enumerate(parts)},
        "n_examples": N_MAX_EXAMPLES,
    }
    return js, {"steps": np.array(run.steps, dtype=np.int64), "attn_on_special": a}


def _final(run: Run) -> dict:
    if not run.metrics:
        return {}
    at = [r for r in run.metrics if r["step"] == run.steps[-1]]
    r = at[-1] if at else run.metrics[-1]
    keys = ("step", "train_loss", "test_loss", "train_acc", "test_acc", "train_loss_by_part",
            "test_loss_by_part")
    return {k: r.get(k) for k in keys}


def analyze_zoo(run: Run, progress_bar=None) -> Path:
    """Analyse a zoo-task run (its checkpoints already checked to exist) and write
    ``RUN/analysis.json`` and ``RUN/analysis.npz`` atomically. Returns the json's path.

    ``progress_bar``: an object with ``update(n)`` (tqdm) called once per checkpoint, or None.
    """
    t0 = time.time()
    task = build_task(run.config.task)
    parts = tuple(task.part_names)
    curves = loss_parts(run.metrics, parts)
    main, every = phase_changes(curves, parts)
    analyses = ["loss_parts", "phase_changes"]
    summary: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "task": task.name, "analyses": analyses,
        "final_step": run.steps[-1], "n_checkpoints": len(run.steps),
        "metrics_last_step": run.metrics[-1]["step"] if run.metrics else None,
        "parts": list(parts), "final": _final(run), **run_outcome(run.metrics), **run_spikes(run.metrics),
        "grid_accuracy": None,  # no finite grid of inputs: see final.test_acc
        "phase_changes": main, "phase_change_drops": every, "phase_change_rule": PHASE_RULE,
    }
    nz: dict[str, np.ndarray] = {**curves, "part_names": np.array(parts)}
    if task.name == "repeated_subsequence":
        js, arr = _induction(run, task, progress_bar)
        f = js["formed_step"]
        js["formed_inside_train_drop"] = _inside(main.get("train"), f)
        # the drop the circuit causes: the test loss's with finite data (the train loss's own drop
        # there is memorisation), the train loss's with infinite data (fresh batches: no memorising)
        curve = "train" if run.config.task.n_train is None else "test"
        js["formed_inside_drop"] = {"curve": curve, "inside": _inside(main.get(curve), f)}
        analyses.append("induction")
        summary["induction"] = js
        nz.update(arr)
    elif task.name == "max_element":
        js, arr = _skip_trigrams(run, task, parts, main, progress_bar)
        analyses.append("skip_trigrams")
        summary["skip_trigrams"] = js
        nz.update(arr)
    else:
        nz["steps"] = np.array(run.steps, dtype=np.int64)
        if progress_bar is not None:
            progress_bar.update(len(run.steps))
    summary["elapsed_s"] = round(time.time() - t0, 3)
    return write_analysis(run.path, summary, nz)
