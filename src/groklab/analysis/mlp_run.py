"""``groklab analyze`` for PAIR's MLP family (``model.family: mlp``; Pearce et al. 2023).

Modular addition (pair2023, the five-neuron circle model, ``groklab construct star`` runs, and the
untied / collapsed variants): per checkpoint the collapsed ``W_input`` / ``W_output``, the Gini of
the DFT of ``W_input``, the norms of the trainable weights and the number of key frequencies; at
the final checkpoint each neuron's frequency and phases, the frequency groups, each group's star
geometry and group-logit FVE, and the full-grid accuracy; for addition with an input embedding
(not ``collapsed_in``) the clock-vs-pizza measures of the final checkpoint
(``analysis.clock_pizza``). Sparse parity: per checkpoint the parity and distractor weights of
``W_in`` and how many distractor weights are still live; when the last ones are pruned and when
test accuracy jumps. The schema and the rules are in
``docs/analysis_mlp.md``; the pure functions in ``analysis/mlp.py`` and ``analysis/parity.py``.

Checkpoints are streamed one at a time; only the small per-checkpoint arrays are kept.
Source: PAIR, "Do Machine Learning Models Memorize or Generalize?" (``pair.md`` §1.1, §1.3, §1.4).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..runs import Run, RunError, checkpoint_path
from . import mlp as M
from . import parity as P
from .clock_pizza import analysis_parts as clock_pizza_parts
from .files import write_analysis
from .fourier import fourier_basis, fourier_labels
from .outcome import run_outcome
from .spikes import run_spikes

SCHEMA_VERSION = 1
MIN_NEURONS = 2  # key-frequency rule (analysis.mlp.key_frequencies): >= 2 neurons share the frequency
PAIR_SEED_RULE = {"min_neurons": 1, "min_max_dft": 10.0}  # PAIR's seed sweep (mod-bot/seeds/parse.js)
GROK_ACC = 0.99  # grokking_step: first logged step with test accuracy >= this
MODULAR_ANALYSES = ("neuron_frequencies", "key_frequencies", "stars", "group_fve", "grid_accuracy",
                    "progress_measures")
PARITY_ANALYSES = ("distractor_pruning", "weight_norms")


def trainable_state(state: dict[str, Tensor], cfg) -> dict[str, Tensor]:
    """The trained weights of ``state``: everything but the fixed circle ``embed.W_E``
    (``model.embed: circle``), which the checkpoint stores but the optimizer never moves."""
    if cfg.model.embed == "circle":
        return {k: v for k, v in state.items() if k != "embed.W_E"}
    return dict(state)


def _final_metrics(run: Run) -> dict[str, Any]:
    r = run.metrics[-1] if run.metrics else {}
    return {k: r.get(k) for k in ("train_loss", "test_loss", "train_acc", "test_acc")}


def _state(run: Run, step: int) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in run.state_at(step).items()}


def _bad_state(run: Run, step: int, e: Exception) -> RunError:
    return RunError(f"{checkpoint_path(run.path, step)}: does not fit config.json's MLP ({e}); "
                    "re-train or delete the checkpoint")


def _tick(bar) -> None:
    if bar is not None:
        bar.update(1)


def analyze_mlp(run: Run, progress_bar=None) -> Path:
    """Analyse an MLP-family run (its checkpoints already checked to exist) and write
    ``RUN/analysis.json`` and ``RUN/analysis.npz`` atomically (``docs/analysis_mlp.md``).

    Args:
        run: from ``load_run``, with ``model.family: mlp`` and at least one checkpoint.
        progress_bar: an object with ``update(n)`` (tqdm), called once per checkpoint, or None.

    Returns:
        The path of ``analysis.json``.

    Raises:
        RunError: a task the MLP analysis does not know, no checkpoints, or a checkpoint whose
            weights do not fit the run's config.
    """
    if not run.steps:
        raise RunError(f"{run.path}: no checkpoints yet; wait for the first one and re-run")
    task = getattr(run.config.task, "name", "modular")
    if task == "modular":
        return _modular(run, progress_bar)
    if task == "sparse_parity":
        return _parity(run, progress_bar)
    raise RunError(f"{run.path}: task {task!r} has no MLP analysis (modular and sparse_parity do)")


# --- modular arithmetic ----------------------------------------------------------------------------
def _star_json(state: dict[str, Tensor], nf: M.NeuronFreqs, k: int, p: int, act: str,
               flags: dict[str, bool]) -> dict[str, Any]:
    sg = M.star_geometry(nf, k)
    L = M.group_logits_grid(state, act, sg.neurons, **flags)  # (p*p, p)
    return {
        "neurons": sg.neurons.tolist(), "n_neurons": int(sg.neurons.numel()),
        "in_angle": sg.in_angle.tolist(), "out_angle": sg.out_angle.tolist(),
        "in_norm": sg.in_norm.tolist(), "out_norm": sg.out_norm.tolist(), "spacing": sg.spacing.tolist(),
        "spacing_deviation": sg.spacing_deviation, "rotation_offset": sg.rotation_offset,
        "rotation_residual": sg.rotation_residual.tolist(),
        "rotation_max_residual": sg.rotation_max_residual, "rotation_rms_residual": sg.rotation_rms_residual,
        "group_fve": M.group_fve(L, p, k), "group_fve_phase_free": M.group_fve(L, p, k, phase_free=True),
    }


def _labels(task) -> Tensor | None:
    """The grid's correct classes for a non-addition task (None: ``(a + b) mod p``)."""
    if task.operation == "add":
        return None
    from ..tasks.modular import labels_for

    return labels_for(task.p, task.operation, task.data_seed)


def _modular(run: Run, bar) -> Path:
    t0 = time.time()
    cfg = run.config
    p, act = cfg.task.p, cfg.model.act_fn
    flags = {"collapsed_in": bool(cfg.model.collapsed_in), "collapsed_out": bool(cfg.model.collapsed_out)}
    F, _ = fourier_basis(p)
    F = F.to(torch.float64)
    rows, W_in_all, W_out_all, l2_by = [], [], [], []
    names = None
    state = nf = None
    for step in run.steps:
        state = _state(run, step)
        try:
            W_input, W_output = M.collapsed(state, **flags)
        except ValueError as e:
            raise _bad_state(run, step, e) from None
        nf = M.neuron_frequencies(W_input, W_output, F)
        key = M.key_frequencies(nf, MIN_NEURONS)
        wn = M.weight_norms(trainable_state(state, cfg))
        names = names or list(wn["l2_by_param"])
        rows.append({"step": step, "dft_gini": M.dft_gini(W_input, F), "weight_l2": wn["l2"],
                     "weight_l1": wn["l1"], "n_key_frequencies": len(key), "key_frequencies": key})
        l2_by.append([wn["l2_by_param"][n] for n in names])
        W_in_all.append(W_input.float().numpy())
        W_out_all.append(W_output.float().numpy())
        _tick(bar)

    final = run.steps[-1]
    W_input, W_output = M.collapsed(state, **flags)
    key = M.key_frequencies(nf, MIN_NEURONS)
    clusters = M.neuron_clusters(nf)
    stars = {str(k): _star_json(state, nf, k, p, act, flags) for k in key}
    labels = _labels(cfg.task)
    grok = next((int(r["step"]) for r in run.metrics if (r.get("test_acc") or 0) >= GROK_ACC), None)
    neurons = [{"index": j, "k": int(nf.k[j]), "in_angle": float(nf.in_angle[j]),
                "out_angle": float(nf.out_angle[j]), "in_norm": float(nf.in_norm[j]),
                "out_norm": float(nf.out_norm[j]), "max_dft": float(nf.max_dft[j])}
               for j in range(nf.k.numel())]
    circle = cfg.model.embed == "circle"
    cp_analyses, cp_json, cp_npz = clock_pizza_parts(run)  # empty unless modular addition
    notes = [] if labels is None else [
        f"operation {cfg.task.operation!r}: grid_accuracy uses its labels; the star geometry and "
        "group_fve test the a + b wave and are reported for comparison only"]
    summary: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "task": "modular", "family": "mlp",
        "analyses": list(MODULAR_ANALYSES) + cp_analyses,
        "p": p, "operation": cfg.task.operation, "act_fn": act,
        "embed": cfg.model.embed, **flags,
        "final_step": final, "n_checkpoints": len(run.steps),
        "metrics_last_step": run.metrics[-1]["step"] if run.metrics else None,
        "grid_accuracy": M.grid_accuracy(state, act, labels=labels, **flags),
        **run_outcome(run.metrics), **run_spikes(run.metrics), "grokking_step": grok,
        "key_frequencies": key,
        "key_frequency_rule": {"min_neurons": MIN_NEURONS, "min_max_dft": None, "checkpoint": final,
                               "per_checkpoint": "n_key_frequencies applies the same rule to each "
                                                 "checkpoint's own neuron frequencies"},
        "key_frequencies_pair_seed_rule": M.key_frequencies(nf, **PAIR_SEED_RULE),
        "pair_seed_rule": PAIR_SEED_RULE,
        "neuron_clusters": {str(k): len(v) for k, v in clusters.items()},
        "neuron_cluster_members": {str(k): v for k, v in clusters.items()},
        "neurons": neurons, "sort_order": nf.sort_order.tolist(), "stars": stars,
        **cp_json,
        "final": _final_metrics(run),
        "weight_norm_params": names,
        "conventions": {
            "fourier": "orthonormal basis rows Const, cos 1, sin 1, ...; k is 1-based (PAIR stores k - 1)",
            "angles": "radians in (-pi, pi], atan2(sin, cos) of the DFT coefficients at the neuron's k",
            "weight_norms": "L2 / L1 over the trainable weights (weight_norm_params)"
                            + ("; the fixed circle embed.W_E is excluded" if circle else ""),
            "group_fve": "per pair (one coefficient per (a, b)) of cos(2 pi k (a + b - c) / p)",
        },
        "notes": notes,
        "checkpoints": rows,
    }
    summary["elapsed_s"] = round(time.time() - t0, 3)
    f32 = lambda t: t.to(torch.float32).numpy()  # noqa: E731
    nz = {
        "steps": np.array(run.steps, dtype=np.int64),
        "W_input": np.stack(W_in_all), "W_output": np.stack(W_out_all),
        "dft_W_input": f32(M.dft(W_input, F)), "dft_W_output": f32(M.dft_out(W_output, F)),
        "fourier_labels": np.array(fourier_labels(p)),
        "neuron_k": nf.k.numpy().astype(np.int64), "neuron_in_angle": nf.in_angle.numpy(),
        "neuron_out_angle": nf.out_angle.numpy(), "neuron_in_norm": nf.in_norm.numpy(),
        "neuron_out_norm": nf.out_norm.numpy(), "neuron_max_dft": nf.max_dft.numpy(),
        "sort_order": nf.sort_order.numpy().astype(np.int64),
        "key_frequencies": np.array(key, dtype=np.int64),
        "n_key_frequencies": np.array([r["n_key_frequencies"] for r in rows], dtype=np.int64),
        **{k: np.array([r[k] for r in rows], dtype=np.float64)
           for k in ("dft_gini", "weight_l2", "weight_l1")},
        "weight_l2_by_param": np.array(l2_by, dtype=np.float64).reshape(len(rows), len(names)),
        "param_names": np.array(names),
        **cp_npz,
    }
    return write_analysis(run.path, summary, nz)


# --- sparse parity ---------------------------------------------------------------------------------
def _parity(run: Run, bar) -> Path:
    t0 = time.time()
    cfg = run.config
    n_bits, k = cfg.task.n_bits, cfg.task.k
    rows, W_ins, W_outs = [], [], []
    for step in run.steps:
        state = _state(run, step)
        W_in, W_out = state.get("mlp.W_in"), state.get("mlp.W_out")
        shape = lambda t: None if t is None else tuple(t.shape)  # noqa: E731
        if W_in is None or W_out is None or W_in.shape[0] != n_bits + 1 or W_out.shape[1:] != (1,):
            raise _bad_state(run, step, ValueError(
                f"need mlp.W_in [{n_bits + 1}, H] and mlp.W_out [H, 1], got {shape(W_in)}, {shape(W_out)}"))
        wn = M.weight_norms(trainable_state(state, cfg))
        rows.append({"step": step, "live_distractors": P.live_distractors(W_in, k, P.LIVE_THRESHOLD),
                     "live_distractors_rel": P.live_distractors_rel(W_in, k, P.LIVE_REL_FRAC),
                     "weight_l1": wn["l1"], "weight_l2": wn["l2"], **P.parity_norms(W_in, k)})
        W_ins.append(W_in.float().numpy())
        W_outs.append(W_out[:, 0].float().numpy())
        _tick(bar)
    acc_rows = [r for r in run.metrics if r.get("test_acc") is not None]
    acc_steps = [int(r["step"]) for r in acc_rows]
    acc = [float(r["test_acc"]) for r in acc_rows]
    col = lambda key: [r[key] for r in rows]  # noqa: E731
    ab = P.pruning_step(run.steps, col("live_distractors"), acc_steps, acc, P.ACC_LEVEL)
    rel = P.pruning_step(run.steps, col("live_distractors_rel"), acc_steps, acc, P.ACC_LEVEL)
    gap = lambda s: None if s is None or ab.acc_step is None else ab.acc_step - s  # noqa: E731
    summary: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "task": "sparse_parity", "family": "mlp",
        "analyses": list(PARITY_ANALYSES), "n_bits": n_bits, "k": k,
        "n_train": cfg.task.n_train, "n_test": cfg.task.n_test,
        "final_step": run.steps[-1], "n_checkpoints": len(run.steps),
        "metrics_last_step": run.metrics[-1]["step"] if run.metrics else None,
        **run_outcome(run.metrics), **run_spikes(run.metrics),
        "grid_accuracy": None,  # 2^n_bits inputs: see final.test_acc
        "final": _final_metrics(run),
        "live_threshold": P.LIVE_THRESHOLD, "live_rel_frac": P.LIVE_REL_FRAC,
        "prune_step": ab.prune_step, "prune_step_rel": rel.prune_step,
        "acc_jump_step": ab.acc_step, "acc_level": P.ACC_LEVEL,
        "acc_jump_minus_prune": gap(ab.prune_step), "acc_jump_minus_prune_rel": gap(rel.prune_step),
        "n_distractor_weights": (n_bits - k) * int(W_ins[-1].shape[1]),
        "rule": (f"a distractor weight (W_in rows {k}..{n_bits - 1}) is live if |w| > live_threshold "
                 f"({P.LIVE_THRESHOLD:g}); _rel: if |w| > {P.LIVE_REL_FRAC:g} x max |parity-bit weight| "
                 "(rows 0..k-1) at that checkpoint; prune_step = first checkpoint from which no distractor "
                 f"weight is live to the end; acc_jump_step = first logged step with test_acc >= "
                 f"{P.ACC_LEVEL:g}; norms are Frobenius"),
        "checkpoints": rows,
    }
    summary["elapsed_s"] = round(time.time() - t0, 3)
    nz = {
        "steps": np.array(run.steps, dtype=np.int64),
        "W_in": np.stack(W_ins), "W_out": np.stack(W_outs),
        "live_distractors": np.array(col("live_distractors"), dtype=np.int64),
        "live_distractors_rel": np.array(col("live_distractors_rel"), dtype=np.int64),
        "test_acc_steps": np.array(acc_steps, dtype=np.int64),
        "test_acc": np.array(acc, dtype=np.float64),
        **{k_: np.array(col(k_), dtype=np.float64) for k_ in (
            "weight_l1", "weight_l2", "parity_weight_norm", "distractor_weight_norm")},
    }
    return write_analysis(run.path, summary, nz)
