"""Shared test fixtures."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch


# --- report fixtures (issue #4) ------------------------------------------------------------------
def _fourier_basis(p: int) -> torch.Tensor:
    """Rows Const, cos 1, sin 1, ..., orthonormal, ``[p, p]``."""
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * torch.pi * k * x / p), torch.sin(2 * torch.pi * k * x / p)]
    F = torch.stack(rows)
    return F / F.norm(dim=1, keepdim=True)


def _gini(c: np.ndarray) -> float:
    c = np.sort(np.abs(c))
    n = len(c)
    return float(2 * np.sum(np.arange(1, n + 1) * c) / (n * c.sum()) - (n + 1) / n)


def write_fake_analysis(run_dir: Path, n_key: int = 3) -> None:
    """Write ``analysis.json`` and ``analysis.npz`` with the agreed schema for a real run.

    The weight-level arrays are real (Fourier norms, circles, neuron FVE, attention); the progress
    measures that need the full analysis (restricted/excluded loss) are stand-ins.
    """
    from groklab import load_run, make_data

    run = load_run(run_dir)
    p = run.config.task.p
    F = _fourier_basis(p)
    data = make_data(run.config.task)
    rows = {r["step"]: r for r in run.metrics}
    ef, wlf, planes, cks = [], [], [], []
    last = run.steps[-1]
    final_norms = (F @ run.state_at(last)["embed.W_E"][:p].double()).norm(dim=1)
    freq_power = final_norms[1::2] ** 2 + final_norms[2::2] ** 2
    keys = (torch.argsort(freq_power, descending=True)[:n_key] + 1).tolist()
    for step in run.steps:
        st = {k: v.double() for k, v in run.state_at(step).items()}
        W_E = st["embed.W_E"][:p]
        W_L = st["unembed.W_U"][:, :p].T @ st["blocks.0.mlp.W_out"].T  # [p, d_mlp]
        ef.append((F @ W_E).norm(dim=1).numpy())
        wlf.append((F @ W_L).norm(dim=1).numpy())
        pl = []
        for k in keys:
            u, v = W_E.T @ F[2 * k - 1], W_E.T @ F[2 * k]
            pl.append(torch.stack([W_E @ (u / u.norm()), W_E @ (v / v.norm())], dim=1).numpy())
        planes.append(np.stack(pl))
        r = rows.get(step, {})
        tl, tr = r.get("test_loss", 1.0), r.get("train_loss", 1.0)
        cks.append({
            "step": step, "train_loss": tr, "test_loss": tl,
            "restricted_loss": tl * 0.3 + 1e-3, "restricted_acc": r.get("test_acc", 0.0),
            "excluded_loss": tr * 3 + 0.1, "excluded_acc": r.get("train_acc", 0.0),
            "gini_W_E": _gini(ef[-1]), "gini_W_L": _gini(wlf[-1]),
            "sum_sq_weights": float(sum((v ** 2).sum() for v in st.values())),
            "excluded_loss_by_freq": {str(k): tr * 2 for k in keys},
        })
    model = run.model_at(last)
    with torch.no_grad():
        logits, cache = model.run_with_cache(data.tokens, names=["blocks.0.mlp.hook_post",
                                                                 "blocks.0.attn.hook_pattern"])
    acts = cache["blocks.0.mlp.hook_post"][:, -1].double().reshape(p, p, -1)  # (a, b, n)
    four = torch.einsum("ia,abn,jb->nij", F, acts, F)
    four[:, 0, 0] = 0
    total = (four ** 2).sum(dim=(1, 2)) + 1e-30
    fracs = []
    for k in keys:
        idx = torch.tensor([0, 2 * k - 1, 2 * k])
        fracs.append((four[:, idx][:, :, idx] ** 2).sum(dim=(1, 2)) / total)
    fracs = torch.stack(fracs)  # (K, n)
    frac, arg = fracs.max(dim=0)
    nfreq = torch.tensor(keys)[arg]
    nfreq[frac < 0.85] = -1
    L = logits[:, -1, :p].double().reshape(p, p, p)
    logit_norms = torch.einsum("ia,abc,jb->ijc", F, L, F).norm(dim=-1)
    attn = cache["blocks.0.attn.hook_pattern"][:, :, -1, 0].reshape(p, p, -1).permute(2, 0, 1)
    W_E = run.state_at(last)["embed.W_E"][:p].double().numpy()
    Wc = W_E - W_E.mean(0)
    U, S, _ = np.linalg.svd(Wc, full_matrices=False)
    W_L = (run.state_at(last)["unembed.W_U"][:, :p].T.double()
           @ run.state_at(last)["blocks.0.mlp.W_out"].T.double())
    np.savez(run_dir / "analysis.npz",
             steps=np.array(run.steps, dtype=np.int64), embed_fourier_norms=np.stack(ef),
             W_L_fourier_norms=np.stack(wlf), embed_key_planes=np.stack(planes),
             neuron_frac_explained=frac.numpy(), neuron_freq=nfreq.numpy().astype(np.int64),
             logit_fourier_norms=logit_norms.numpy(), W_L_fourier=(F @ W_L).numpy(),
             attn_eq_to_a=attn.double().numpy(), embed_pca=U[:, :2] * S[:2],
             embed_pca_var=(S ** 2 / (S ** 2).sum())[:8])
    clusters = {str(k): int((nfreq == k).sum()) for k in [*keys, -1]}
    accs = [(r["step"], r.get("train_acc", 0), r.get("test_acc", 0)) for r in run.metrics]
    mem = next((s for s, a, _ in accs if a >= 0.999), None)
    grok = next((s for s, _, t in accs if t >= 0.99), None)
    summary = {
        "key_frequencies": keys, "neuron_clusters": clusters,
        "frac_neurons_explained": float((nfreq >= 0).double().mean()), "logit_fit_fve": 0.9,
        "phase_boundaries": {"memorization_end": mem, "circuit_formation_end": grok,
                             "cleanup_end": None if grok is None else min(grok + 100, last)},
        "p": p, "final_step": last, "grokking_step": grok, "checkpoints": cks,
    }
    (run_dir / "analysis.json").write_text(json.dumps(summary))


@pytest.fixture(scope="session")
def report_run(tmp_path_factory) -> Path:
    """A tiny trained run (p=13, 160 steps) with a fake analysis beside it."""
    from groklab import Config, TaskConfig, TrainConfig, train
    from groklab.config import ModelConfig

    cfg = Config(task=TaskConfig(p=13, frac_train=0.6),
                 model=ModelConfig(d_model=32, d_mlp=64, n_heads=2),
                 train=TrainConfig(steps=160, lr=3e-3, eval_every=10, checkpoint_every=20))
    out = tmp_path_factory.mktemp("report") / "run"
    with warnings.catch_warnings():  # the trainer's own warnings are its tests' business
        warnings.filterwarnings("ignore", message=r"torch.searchsorted\(\): input value tensor")
        train(cfg, str(out))
    write_fake_analysis(out)
    return out
