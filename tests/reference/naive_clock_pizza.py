"""The clock-vs-pizza measures written straight from their definitions, one example at a time: the
oracle for ``groklab.analysis.clock_pizza``.

Written from ``code/eval-main.ipynb`` of fjzzq2002/pizza (Zhong et al. 2023; cells 10, 12, 14, as
summarised in ``../shared/reference/pair.md`` §5), never from groklab's analysis code: nested
Python loops, numpy's ``std`` and ``svd``, complex sums ``sum_t v[t] e^{2 pi i t / p}`` over the
re-ordered ``v[t i mod p]``, and one ``torch.autograd.grad`` per triple on embedding vectors built
fresh for that triple (no hooks). Import as ``from reference import naive_clock_pizza``.
"""

from __future__ import annotations

import cmath
import math
import random

import numpy as np
import torch


def triples(p: int, n: int = 100, seed: int = 42) -> list[tuple[int, int, int]]:
    """The notebook's sample: the explicit tuple list, shuffled, first n."""
    xs = [(a, b, c) for a in range(p) for b in range(p) for c in range(p)]
    random.Random(seed).shuffle(xs)
    return xs[:n]


def distance_irrelevance(correct: np.ndarray) -> float:
    """``correct[a][b]`` -> ``oo[(a+b)%p][(a-b)%p]``; ``mean(std(oo, axis=0)) / std(oo)``."""
    p = len(correct)
    oo = [[0.0] * p for _ in range(p)]
    for a in range(p):
        for b in range(p):
            oo[(a + b) % p][(a - b) % p] = float(correct[a][b])
    oo = np.array(oo)
    return float(np.mean(np.std(oo, axis=0)) / np.std(oo.flatten()))


def circularity(W_E: np.ndarray, first_k: int = 4) -> float:
    """PCA (centred SVD) of ``W_E [p, d]``; per component, scale to norm 1/sqrt(p) and take the
    best ``2 |sum_t v[t i mod p] e^{2 pi i t / p}|^2`` over i = 1 .. p-1, clipped to [0, 1]."""
    p = W_E.shape[0]
    X = W_E - W_E.mean(0)
    U, S, _ = np.linalg.svd(X, full_matrices=False)
    total = 0.0
    for ix in range(first_k):
        vs = U[:, ix] * S[ix]
        vs = vs / math.sqrt(float(np.sum(vs * vs))) / math.sqrt(p)
        best = 0.0
        for i in range(1, p):
            sa = sum(vs[t * i % p] * cmath.exp(2j * math.pi * t / p) for t in range(p))
            best = max(best, 2 * abs(sa) ** 2)
        total += max(min(best, 1.0), 0.0)
    return total / first_k


def _cos(g0: np.ndarray, g1: np.ndarray) -> float:
    return float(np.sum(g0 * g1) / np.sqrt(np.sum(g0 ** 2)) / np.sqrt(np.sum(g1 ** 2)))


def transformer_gradients(model, a: int, b: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """``d logit_c / d e_a`` and ``d / d e_b`` for a groklab ``HookedTransformer``: fresh leaf
    vectors ``e_a = W_E[a]``, ``e_b = W_E[b]``, the residual ``[e_a, e_b, W_E[p]] + W_pos`` run
    through ``model.blocks`` by hand, the logit of c read at the last position."""
    p = model.cfg.task.p
    W_E = model.embed.W_E.detach()
    e_a = W_E[a].clone().requires_grad_(True)
    e_b = W_E[b].clone().requires_grad_(True)
    resid = torch.stack([e_a, e_b, W_E[p]])[None] + model.pos_embed.W_pos[:3]
    for block in model.blocks:
        resid = block(resid)
    if model.cfg.model.use_ln:
        resid = model.ln_final(resid)
    logits = resid[0, -1] @ model.unembed.W_U
    if model.cfg.model.unembed_bias:
        logits = logits + model.unembed.b_U
    g_a, g_b = torch.autograd.grad(logits[c], (e_a, e_b))
    return g_a.double().numpy(), g_b.double().numpy()


def mlp_gradients(model, a: int, b: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """The same for a groklab ``MLPModel`` with an input embedding: ``act(e_a W_in + e_b W_in)``
    times ``W_out`` and the unembedding (``W_E^T`` tied, ``W_U`` untied, nothing if collapsed)."""
    m = model.cfg.model
    W_E = model.embed.W_E.detach()
    e_a = W_E[a].clone().requires_grad_(True)
    e_b = W_E[b].clone().requires_grad_(True)
    pre = e_a @ model.mlp.W_in + e_b @ model.mlp.W_in
    post = torch.relu(pre) if m.act_fn == "relu" else pre * pre
    out = post @ model.mlp.W_out
    if not m.collapsed_out:
        out = out @ (model.unembed.W_U if hasattr(model, "unembed") else model.embed.W_E.T)
    g_a, g_b = torch.autograd.grad(out[c], (e_a, e_b))
    return g_a.double().numpy(), g_b.double().numpy()


def gradient_symmetricity(model, xs: list[tuple[int, int, int]], grads=transformer_gradients) -> float:
    """Mean over ``xs`` of the cosine of the two gradients (``grads(model, a, b, c)``)."""
    return sum(_cos(*grads(model, a, b, c)) for a, b, c in xs) / len(xs)
