"""``groklab analyze RUN``: the Fourier circuit of the final checkpoint and progress measures at
every checkpoint, written to ``RUN/analysis.json`` and ``RUN/analysis.npz``.

The analyses fit the task: modular arithmetic (``task.name`` "modular", and milestone-1 runs
without a ``task.name``) gets everything below; the other tasks go to ``analysis.zoo`` (loss parts,
phase changes, induction heads or skip trigrams; ``docs/analysis_zoo.md``). ``analysis.json``
names the task and lists the analyses that ran (``task``, ``analyses``).

Modular addition (``task.operation: add``) also gets the clock-vs-pizza measures of the final
checkpoint (``analysis.clock_pizza``; Zhong et al. 2023), key ``clock_pizza``; other operations
have no such key.

Key frequencies are found once, from the final checkpoint, and reused for every checkpoint (as the
paper's notebook does). Checkpoints are streamed one at a time; only small per-checkpoint
vectors are kept. The schema is documented in ``docs/analysis.md``.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._heap import release_freed_memory
from ..runs import RunError, load_run
from ..tasks import make_data
from . import circuit as C
from .clock_pizza import analysis_parts as clock_pizza_parts
from .files import write_analysis
from .fourier import component_norms, fourier_basis, fourier_labels, logit_fourier_norms
from .measures import measure_all
from .outcome import run_outcome
from .progress import phase_boundaries, split_scores
from .spikes import run_spikes

SCHEMA_VERSION = 1
SIGNS = {"add": 1, "subtract": -1}  # a + s*b; other operations have no additive Fourier circuit
MODULAR_ANALYSES = ("fourier_circuit", "progress_measures", "phase_boundaries")  # "analyses" of a modular run


def _final_forward(model, tokens: Tensor, p: int, chunk: int = 4096):
    """Logits ``[N, p]``, last-block ``hook_post`` and block-0 attention at the '=' query."""
    L = model.cfg.model.n_layers
    names = [f"blocks.{L - 1}.mlp.hook_post", "blocks.0.attn.hook_pattern",
             "blocks.0.attn.hook_attn_scores"]
    logits, post, pat, sc = [], [], [], []
    with torch.no_grad():
        for i in range(0, len(tokens), chunk):
            out, cache = model.run_with_cache(tokens[i:i + chunk], names=names)
            logits.append(out[:, -1, :p])
            post.append(cache[names[0]][:, -1])
            pat.append(cache[names[1]][:, :, -1])  # (N, H, k)
            sc.append(cache[names[2]][:, :, -1])
    return torch.cat(logits), torch.cat(post), torch.cat(pat), torch.cat(sc)


def _analyse_final(run, data, F: Tensor, sign: int) -> tuple[dict, dict, list[int]]:
    """Circuit analysis of the last checkpoint. Returns (json part, npz part, key freqs)."""
    cfg, p = run.config, run.config.task.p
    model = run.model_at(run.steps[-1])
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    L = cfg.model.n_layers
    logits, post, pat, scores = _final_forward(model, data.tokens, p)
    W_E = sd["embed.W_E"][:p].double()
    W_L = C.neuron_logit_map(sd[f"blocks.{L - 1}.mlp.W_out"], sd["unembed.W_U"], p)
    clusters = C.neuron_clusters(post, F)
    kf = C.key_frequencies(clusters, component_norms(W_L, F), component_norms(W_E, F))
    key = kf.freqs
    wl = C.wl_stats(W_L, F, key)
    fit = C.logit_fit(logits, key, sign)
    fit_scores = split_scores(fit.fitted, data.labels, data.is_train)
    H = pat.shape[1]
    attn_a = pat[:, :, 0].reshape(p, p, H).permute(2, 0, 1).double()  # (H, a, b)
    attn_b = pat[:, :, 1].reshape(p, p, H).permute(2, 0, 1).double()
    score_a = scores[:, :, 0].reshape(p, p, H).mean(1).T  # (H, a): depends on a only
    attn_four = C.attention_fourier(score_a, F)
    head_power = attn_four[:, 1::2] ** 2 + attn_four[:, 2::2] ** 2  # (H, half)
    pca, pca_var = C.embed_pca(W_E)
    full = split_scores(logits, data.labels, data.is_train)
    n_mlp = clusters.freq.numel()
    js = {
        "grid_accuracy": float((logits.argmax(-1) == data.labels).double().mean()),
        "key_frequencies": key,
        "key_frequency_source": {
            "checkpoint": run.steps[-1], "reused_for_all_checkpoints": True, "rule": kf.rule,
            "min_neurons_per_cluster": kf.min_neurons, "neuron_fve_threshold": C.THRESHOLD,
            "W_L_sparse_freqs": kf.W_L_freqs, "W_E_sparse_freqs": kf.W_E_freqs,
            "agrees_with_W_L": kf.agree_W_L,
        },
        "neuron_clusters": {str(k): v for k, v in sorted(clusters.counts.items())},
        "frac_neurons_explained": float((clusters.freq >= 0).double().mean()),
        "logit_fit_fve": fit.fve,
        "logit_fit_alpha": {str(k): float(a) for k, a in zip(key, fit.alpha, strict=True)},
        "logit_fit_loss": {"train": fit_scores.train_loss, "test": fit_scores.test_loss,
                           "all": fit_scores.all_loss},
        "final": {
            "train_loss": full.train_loss, "test_loss": full.test_loss, "all_loss": full.all_loss,
            "train_acc": full.train_acc, "test_acc": full.test_acc,
            "W_L_effective_rank": wl.effective_rank, "W_L_rank_99": wl.rank_99,
            "W_L_residual_frac": wl.residual_frac,
            "W_L_residual_frac_no_const": wl.residual_frac_no_const,
            "attn_head_freq": [int(i) + 1 for i in head_power.argmax(1)],
            "attn_head_freq_frac": [float(r.max() / r.sum()) if float(r.sum()) > 0 else 0.0
                                    for r in head_power],
            "attn_eq_to_eq_mean": float(pat[:, :, 2].double().mean()),
            "embed_pca_var": pca_var.tolist(),
        },
    }
    nz = {
        "neuron_frac_explained": clusters.frac_explained.numpy(),
        "neuron_freq": clusters.freq.numpy().astype(np.int64),
        "neuron_frac_by_freq": clusters.frac_by_freq.numpy(),
        "neuron_acts_first": post[:, :min(4, n_mlp)].T.reshape(-1, p, p).double().numpy(),
        "logit_fourier_norms": logit_fourier_norms(logits, F).numpy(),
        "W_L_fourier": wl.fourier.numpy(), "W_L_singular_values": wl.singular_values.numpy(),
        "attn_eq_to_a": attn_a.numpy(), "attn_eq_to_b": attn_b.numpy(),
        "attn_score_fourier": attn_four.numpy(),
        "embed_pca": pca.numpy(), "embed_pca_var": pca_var.numpy(),
        "logit_fit_alpha": fit.alpha.numpy(),
    }
    return js, nz, key


def _progress_bar(total: int, progress: bool):
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc="analyze", unit="ckpt", file=sys.stderr)


@contextmanager
def _threads(n: int | None):
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def analyze_run(run_dir: Path, progress: bool = True, *, num_threads: int | None = 1,
                workers: int | None = 1) -> Path:
    """Analyse a run: circuit of the final checkpoint plus progress measures at every checkpoint
    (modular arithmetic), or the zoo analyses of its task (``analysis.zoo.analyze_zoo``: loss parts,
    phase changes, induction heads / skip trigrams; ``docs/analysis_zoo.md``).

    Writes ``RUN/analysis.json`` (summary and per-checkpoint measures) and ``RUN/analysis.npz``
    (arrays), both atomically. Works on a run that is still training: it reads the checkpoints
    that exist when it starts (checkpoint files are written atomically, so each is complete).

    Args:
        run_dir: a run directory written by ``groklab train``.
        progress: show a progress bar on stderr.
        num_threads: torch CPU threads during the analysis (restored afterwards); None keeps the
            current setting. The default 1 is fastest on a shared machine: the per-checkpoint
            work is many small ops, and with busy cores OpenMP's spin-waits cost ~5x.
        workers: processes measuring checkpoints (each streams its share, one thread each).
            Default 1 (None means 1): on the shared 2-core benchmark machine 2 workers were slower (other jobs
            already use the cores); on an idle multi-core machine 2 or more can help.

    Returns:
        The path of ``analysis.json``.

    Raises:
        RunError: missing or corrupt run directory or checkpoint, no checkpoints yet, or an
            attention-only modular model (it has no MLP neurons to analyse).

    Source: Nanda et al. 2023 §4 (circuit) and §5 (progress measures); see docs/analysis.md.
    Zoo tasks: Nanda & Lieberum 2022 "Phase Changes", Olsson et al. 2022; docs/analysis_zoo.md.
    """
    with _threads(num_threads):
        return _analyze(Path(run_dir), progress, workers)


def _analyze(run_dir: Path, progress: bool, workers: int | None) -> Path:
    t0 = time.time()
    run = load_run(run_dir)
    if not run.steps:
        raise RunError(f"{run_dir}: no checkpoints yet; wait for the first one "
                       f"(every {run.config.train.checkpoint_every} steps) and re-run")
    task_name = getattr(run.config.task, "name", "modular")  # milestone-1 runs have no task.name
    if run.config.model.family == "mlp" or task_name != "modular":
        if run.config.model.family == "mlp":  # PAIR's MLP family: docs/analysis_mlp.md
            from .mlp_run import analyze_mlp as analyze
        else:
            from .zoo import analyze_zoo as analyze
        bar = _progress_bar(len(run.steps), progress)
        try:
            return analyze(run, bar)
        finally:
            if bar is not None:
                bar.close()
    cfg, p = run.config, run.config.task.p
    if cfg.model.attn_only:
        raise RunError(f"{run_dir}: attention-only model; the Fourier analysis needs MLP neurons")
    op = cfg.task.operation
    sign = SIGNS.get(op, 1)
    data = make_data(cfg.task)
    F, _ = fourier_basis(p)
    final_js, final_nz, key = _analyse_final(run, data, F, sign)
    cp_analyses, cp_json, cp_npz = clock_pizza_parts(run)  # empty unless modular addition

    n_workers = max(1, workers or 1)
    bar = _progress_bar(len(run.steps), progress)
    rows, arrays = [], {k: [] for k in ("ef", "wlf", "planes", "ssw", "cos", "exk")}
    names = None
    try:
        for row, arr in measure_all(run_dir, run.steps, key, sign, n_workers,
                                    bar.update if bar is not None else None):
            rows.append(row)
            if len(rows) % 16 == 0:  # glibc otherwise keeps the freed pages: RSS grew ~3.8 MB
                release_freed_memory()  # per checkpoint (1.9 GB for 401 checkpoints; 0.5 with)
            names = names if names is not None else [str(n) for n in arr["ssw_names"]]
            for k in arrays:
                arrays[k].append(arr[k])
    finally:
        if bar is not None:
            bar.close()

    col = lambda k: [r[k] for r in rows]  # noqa: E731
    phases = phase_boundaries(col("step"), col("train_acc"), col("test_loss"), col("test_acc"), p,
                              col("sum_sq_weights"))
    grok = next((int(r["step"]) for r in run.metrics if (r.get("test_acc") or 0) >= 0.99), None)
    applicable = op in SIGNS
    summary = {
        "schema_version": SCHEMA_VERSION, "task": "modular",
        "analyses": list(MODULAR_ANALYSES) + cp_analyses,
        "p": p, "operation": op, "final_step": run.steps[-1],
        "n_checkpoints": len(run.steps), "grokking_step": grok, **run_outcome(run.metrics),
        **run_spikes(run.metrics),
        "metrics_last_step": run.metrics[-1]["step"] if run.metrics else None,
        **final_js,
        **cp_json,
        "fourier_circuit_applicable": applicable,
        "fourier_directions": f"cos/sin(w_k(a {'+' if sign > 0 else '-'} b))",
        "notes": [] if applicable else [
            f"operation {op!r} has no additive Fourier circuit; measures use the a+b directions "
            "and are reported for comparison only"],
        "conventions": {
            "loss": "mean float64 cross-entropy over p classes ('=' output dropped), nats",
            "restricted_loss": "all pairs (restricted_loss_train/_test also given)",
            "excluded_loss": "train split, no bias correction",
            "gini": "Hurley-Rickard over the p-1 non-constant Fourier component norms",
        },
        "phase_boundaries": phases,
        "checkpoints": rows,
        "elapsed_s": round(time.time() - t0, 3),
    }
    K = len(key)
    nz = {
        "steps": np.array(run.steps, dtype=np.int64),
        "key_frequencies": np.array(key, dtype=np.int64),
        "fourier_labels": np.array(fourier_labels(p)),
        "embed_fourier_norms": np.stack(arrays["ef"]),
        "W_L_fourier_norms": np.stack(arrays["wlf"]),
        "embed_key_planes": np.stack(arrays["planes"]).reshape(len(rows), K, p, 2),
        "sum_sq_weights_by_param": np.array(arrays["ssw"], dtype=np.float64),
        "param_names": np.array(names),
        "cos_coeffs": np.array(arrays["cos"], dtype=np.float64).reshape(len(rows), K),
        "excluded_loss_by_freq": np.array(arrays["exk"], dtype=np.float64).reshape(len(rows), K),
        **{k: np.array(col(k), dtype=np.float64) for k in (
            "train_loss", "test_loss", "restricted_loss", "excluded_loss", "gini_W_E", "gini_W_L",
            "sum_sq_weights")},
        **final_nz,
        **cp_npz,
    }
    return write_analysis(run_dir, summary, nz)
