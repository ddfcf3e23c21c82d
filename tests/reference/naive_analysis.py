"""Naive oracles for groklab.analysis, written from the definitions with explicit loops.

Slow on purpose (use small p): every Fourier coefficient is a Python-level sum over tokens, every
projection uses an explicitly built vector, and the cos(w(a+b-c)) regressors are built as full
p^3 arrays. Nothing here imports groklab.analysis.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def basis_fn(p: int, i: int, x: int) -> float:
    """Value at token x of 1D basis row i (0 Const, 2k-1 cos k, 2k sin k), orthonormal."""
    if i == 0:
        return 1 / math.sqrt(p)
    k = (i + 1) // 2
    trig = math.cos if i % 2 == 1 else math.sin
    return trig(2 * math.pi * k * x / p) * math.sqrt(2 / p)


def naive_basis(p: int) -> np.ndarray:
    return np.array([[basis_fn(p, i, x) for x in range(p)] for i in range(p)])


def naive_ce(logits: np.ndarray, labels: np.ndarray, rows) -> float:
    """Mean -log softmax(logits[r])[labels[r]] over ``rows``, computed row by row in float64."""
    total = 0.0
    rows = list(rows)
    for r in rows:
        z = logits[r].astype(np.float64)
        m = z.max()
        lse = m + math.log(sum(math.exp(v - m) for v in z))
        total += lse - z[labels[r]]
    return total / len(rows)


def sum_vectors(p: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """cos(w_k(a+b)) and sin(w_k(a+b)) over the lexicographic grid, each scaled to unit norm."""
    c = np.zeros(p * p)
    s = np.zeros(p * p)
    for a in range(p):
        for b in range(p):
            c[a * p + b] = math.cos(2 * math.pi * k * (a + b) / p)
            s[a * p + b] = math.sin(2 * math.pi * k * (a + b) / p)
    return c / np.linalg.norm(c), s / np.linalg.norm(s)


def naive_restricted_loss(logits: np.ndarray, labels: np.ndarray, key: list[int], rows) -> float:
    """Paper §5.1: keep Const and the cos/sin(w_k(a+b)) components of each class column."""
    p = logits.shape[1]
    out = np.zeros_like(logits, dtype=np.float64)
    for c in range(p):
        col = logits[:, c].astype(np.float64)
        new = np.full(p * p, col.mean())
        for k in key:
            for v in sum_vectors(p, k):
                new += (v @ col) * v
        out[:, c] = new
    return naive_ce(out, labels, rows)


def naive_excluded_loss(logits: np.ndarray, labels: np.ndarray, key: list[int], rows) -> float:
    """Paper §5.1: subtract the cos/sin(w_k(a+b)) components of each class column."""
    p = logits.shape[1]
    out = logits.astype(np.float64).copy()
    for c in range(p):
        col = logits[:, c].astype(np.float64)
        for k in key:
            for v in sum_vectors(p, k):
                out[:, c] -= (v @ col) * v
    return naive_ce(out, labels, rows)


def naive_logit_fit(logits: np.ndarray, key: list[int]) -> tuple[np.ndarray, float, np.ndarray]:
    """OLS of (logits minus each row's mean) on the full p^3 cubes cos(w_k(a+b-c)).

    Returns (alpha, FVE, fitted [p*p, p]).
    """
    p = logits.shape[1]
    L = logits.astype(np.float64)
    L = L - L.mean(1, keepdims=True)
    X = np.zeros((p * p * p, len(key)))
    for j, k in enumerate(key):
        for a in range(p):
            for b in range(p):
                for c in range(p):
                    X[(a * p + b) * p + c, j] = math.cos(2 * math.pi * k * (a + b - c) / p)
    alpha, *_ = np.linalg.lstsq(X, L.reshape(-1), rcond=None)
    fit = X @ alpha
    fve = 1 - ((L.reshape(-1) - fit) ** 2).sum() / (L ** 2).sum()
    return alpha, float(fve), fit.reshape(p * p, p)


def naive_gini(x: np.ndarray) -> float:
    """Mean absolute difference over all ordered pairs divided by twice the mean."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    mad = sum(abs(x[i] - x[j]) for i in range(n) for j in range(n)) / (n * n)
    return float(mad / (2 * x.mean()))


def naive_neuron_fve(acts: np.ndarray, p: int) -> np.ndarray:
    """[(p-1)/2, n]: share of each centred neuron's variance in its {Const, cos k, sin k}^2 block,
    with every 2D coefficient a double sum over (a, b)."""
    n = acts.shape[1]
    A = acts.astype(np.float64) - acts.mean(0)
    B = naive_basis(p)
    out = np.zeros(((p - 1) // 2, n))
    for u in range(n):
        M = A[:, u].reshape(p, p)
        total = (M ** 2).sum() / 1.0
        # Parseval: total sum of squares equals the sum of squared 2D coefficients
        for k in range(1, (p - 1) // 2 + 1):
            idx = [0, 2 * k - 1, 2 * k]
            block = 0.0
            for i in idx:
                for j in idx:
                    coef = sum(B[i, a] * B[j, b] * M[a, b] for a in range(p) for b in range(p))
                    block += coef ** 2
            out[k - 1, u] = block / total if total > 0 else 0.0
    return out


def fourier_model_state(p: int, freqs: list[int], n_per_freq: int, seed: int = 0,
                        scale: float = 1.0, skip_noise: float = 0.0) -> tuple[dict, dict]:
    """Weights of a 1-layer transformer that adds mod p with the Fourier algorithm, by hand.

    * ``W_E[t]`` holds cos(w_k t), sin(w_k t) for each chosen k (the '=' row and ``W_pos`` are 0);
      with ``W_Q = W_K = 0`` the '=' position attends 1/3 to each of a, b, '=', and
      ``W_V = I``, ``W_O = 3 I`` copy cos(w_k a) + cos(w_k b), sin(...) + sin(...) to '='.
    * Neuron (k, phase phi): ReLU(cos(w_k a - phi) + cos(w_k b - phi)), whose main product term is
      cos(w_k(a+b) - 2 phi) (FVE ~0.96 in the k block). The phases of a frequency are evenly
      spaced from a random offset, so that the readout's cross terms cancel.
    * ``W_out`` writes (cos 2phi, sin 2phi) into an output plane for k, and ``W_U`` reads it as
      cos(w_k c), sin(w_k c): summed over neurons, logit(c) ~ cos(w_k(a+b-c)).
    * ``skip_noise`` adds a random readout of the embedding dims (functions of a or b alone).

    Returns:
        (state dict, model overrides for the config).
    """
    g = torch.Generator().manual_seed(seed)
    K = len(freqs)
    d_model = 4 * K
    d_mlp = K * n_per_freq
    tok = torch.arange(p, dtype=torch.float64)
    W_E = torch.zeros(p + 1, d_model, dtype=torch.float64)
    for i, k in enumerate(freqs):
        W_E[:p, 2 * i] = torch.cos(2 * math.pi * k * tok / p)
        W_E[:p, 2 * i + 1] = torch.sin(2 * math.pi * k * tok / p)
    W_in = torch.zeros(d_model, d_mlp, dtype=torch.float64)
    W_out = torch.zeros(d_mlp, d_model, dtype=torch.float64)
    offsets = torch.rand(K, generator=g, dtype=torch.float64) * 2 * math.pi
    for i in range(K):
        for j in range(n_per_freq):
            n = i * n_per_freq + j
            phi = float(offsets[i]) + 2 * math.pi * j / n_per_freq
            W_in[2 * i, n], W_in[2 * i + 1, n] = math.cos(phi), math.sin(phi)
            W_out[n, 2 * K + 2 * i] = math.cos(2 * phi) * scale
            W_out[n, 2 * K + 2 * i + 1] = math.sin(2 * phi) * scale
    W_U = torch.zeros(d_model, p + 1, dtype=torch.float64)
    for i, k in enumerate(freqs):
        W_U[2 * K + 2 * i, :p] = torch.cos(2 * math.pi * k * tok / p)
        W_U[2 * K + 2 * i + 1, :p] = torch.sin(2 * math.pi * k * tok / p)
    W_U[:2 * K, :p] = torch.randn(2 * K, p, generator=g, dtype=torch.float64) * skip_noise
    eye = torch.eye(d_model, dtype=torch.float64)
    state = {
        "embed.W_E": W_E, "pos_embed.W_pos": torch.zeros(3, d_model, dtype=torch.float64),
        "blocks.0.attn.W_Q": torch.zeros(1, d_model, d_model, dtype=torch.float64),
        "blocks.0.attn.W_K": torch.zeros(1, d_model, d_model, dtype=torch.float64),
        "blocks.0.attn.W_V": eye[None].clone(), "blocks.0.attn.W_O": 3 * eye[None],
        "blocks.0.mlp.W_in": W_in, "blocks.0.mlp.b_in": torch.zeros(d_mlp, dtype=torch.float64),
        "blocks.0.mlp.W_out": W_out, "blocks.0.mlp.b_out": torch.zeros(d_model, dtype=torch.float64),
        "unembed.W_U": W_U,
    }
    overrides = {"model.d_model": d_model, "model.n_heads": 1, "model.d_mlp": d_mlp,
                 "model.act_fn": "relu", "task.p": p}
    return {k: v.float() for k, v in state.items()}, overrides
