"""Clock or pizza? The three measures of Zhong, Liu, Tegmark & Andreas 2023, "The Clock and the
Pizza: Two Stories in Mechanistic Explanation of Neural Networks" (NeurIPS 2023; repository
fjzzq2002/pizza, ``code/eval-main.ipynb`` cells 10, 12 and 14; ``pair.md`` §5).

A *clock* adds angles: its correct logit ``cos(w(a + b - c))`` at ``c = a + b`` does not depend on
``a - b``, and it needs the product of the two embeddings (attention), so the logit's gradients
with respect to the embeddings of a and of b differ. A *pizza* averages the two embeddings: its
correct logit carries ``|cos(w(a - b)/2)|`` (it depends on the distance of a and b on the
circle) and it depends on ``W_E[a] + W_E[b]`` only, so the two gradients are equal.

* ``gradient_symmetricity``: mean cosine of ``d logit_c / d W_E[a]`` and ``d logit_c / d W_E[b]``
  over 100 sampled triples (a, b, c). Pizza ~0.99; clock lower (median 0.48 at attention rate
  alpha 0.9-1).
* ``distance_irrelevance``: ``L[(a + b) mod p, (a - b) mod p]`` = correct logit; the mean over
  columns of the std down a column, over the std of all of L. Clock ~0.85; pizza ~0.17-0.35.
* ``circularity``: how much of each of the top 4 principal components of the number embeddings
  lies on one frequency (1: every component is a cos/sin wave).

Differences from the paper's models: ours read out at the '=' token (position 2 of ``a b =``),
theirs at b (position 1 of ``a b``); the gradients are still taken at the embedding vectors of a
and b as they enter the model, before the position embedding is added (their ``forward_h``).
Formulas, sampling and thresholds: ``docs/analysis.md``, "Clock or pizza".
"""

from __future__ import annotations

import copy
import math
import random
from array import array
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

N_TRIPLES = 100  # triples (a, b, c) for gradient symmetricity (the notebook's xs[:100])
SEED = 42  # random.Random(42).shuffle, the notebook's
N_COMPONENTS = 4  # principal components for circularity (the notebook's first_k)
# The reading. Medians over the paper's 1-layer d_model=128 runs (result/1l_fixedwidth.csv, pair.md
# §5): attention rate alpha 0-0.5 (pizza) grad-sym 0.991-0.993, DI 0.33-0.37 (model A: 0.994,
# 0.17); alpha 0.9-1 (clock) grad-sym 0.48, DI 0.85; between them alpha 0.6-0.7 (0.87, 0.62) reads
# "unclear", 0.7-0.8 (0.72, 0.70) is on the clock rule's DI edge, 0.8-0.9 (0.61, 0.78) reads "clock".
# Pizza: strict on grad-sym (symmetric to ~1%), DI past the pizza medians but short of the clock's;
# clock: DI >= 0.7 with grad-sym clearly below a pizza's. Both pure-end medians pass with margin.
THRESHOLDS = {
    "pizza": {"gradient_symmetricity_min": 0.98, "distance_irrelevance_max": 0.5},
    "clock": {"distance_irrelevance_min": 0.7, "gradient_symmetricity_max": 0.9},
}


def sample_triples(p: int, n: int = N_TRIPLES, seed: int = SEED) -> Int[Tensor, "n 3"]:
    """The notebook's sample of triples (a, b, c): all of ``range(p)^3`` in lexicographic order,
    shuffled with ``random.Random(seed).shuffle``, the first ``n`` kept.

    ``shuffle`` draws the same swaps for any sequence of the same length, so shuffling the indices
    ``0 .. p^3 - 1`` (a compact ``array``) and decoding ``i -> (i // p^2, i // p % p, i % p)`` gives
    exactly the shuffled tuple list. Cost: p^3 draws (about 1 s at p = 113).

    Args:
        p: the modulus. n: triples kept (at most p^3). seed: the ``random.Random`` seed.

    Returns:
        ``[n, 3]`` int64 rows ``(a, b, c)``.

    Source: ``code/eval-main.ipynb`` cell 12 (``xs = [(a, b, c) ...]; random.Random(42).shuffle(xs)``).
    """
    idx = array("q", range(p ** 3))
    random.Random(seed).shuffle(idx)
    i = torch.tensor(idx[:n].tolist(), dtype=torch.int64)
    return torch.stack([i // (p * p), i // p % p, i % p], 1)


def sum_diff_table(correct_logits: Float[Tensor, "p p"]) -> Float[Tensor, "p p"]:
    """Re-index the correct logit of every pair by sum and difference:
    ``L[(a + b) mod p, (a - b) mod p] = correct_logits[a, b]`` (a bijection for odd p).

    Args:
        correct_logits: ``[p, p]``, indexed ``[a, b]``: the logit of the right answer (a + b) mod p.

    Returns:
        ``[p, p]`` float64, rows ``(a + b) mod p``, columns ``(a - b) mod p``.

    Raises:
        ValueError: a non-square input or an even p (the map is then not one-to-one).

    Source: ``code/eval-main.ipynb`` cell 10 (``oo[(A+B)%C][(A-B)%C]``).
    """
    p = correct_logits.shape[0]
    if correct_logits.shape != (p, p) or p % 2 == 0:
        raise ValueError(f"correct_logits must be [p, p] with p odd, got {tuple(correct_logits.shape)}")
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    L = torch.empty(p, p, dtype=torch.float64)
    L[(a + b) % p, (a - b) % p] = correct_logits.reshape(-1).to(torch.float64)
    return L


def distance_irrelevance(correct_logits: Float[Tensor, "p p"]) -> float:
    """How little the correct logit depends on ``a - b``: with ``L = sum_diff_table(...)``,
    ``mean_d std_s L[s, d] / std L`` (population std, ``ddof = 0``, as numpy's default).

    1 when the correct logit depends on a + b only (every column varies as much as the whole
    table), 0 when it depends on a - b only (every column is constant). Clock ~0.85, pizza
    ~0.17-0.35 (``pair.md`` §5).

    Args:
        correct_logits: ``[p, p]`` indexed ``[a, b]``.

    Returns:
        The ratio (dimensionless); NaN for a constant table.

    Source: ``code/eval-main.ipynb`` cell 10 (``np.mean(np.std(oo, axis=0)) / np.std(oo.flatten())``).
    """
    L = sum_diff_table(correct_logits)
    total = L.std(correction=0)
    if float(total) == 0.0:
        return math.nan
    return float(L.std(0, correction=0).mean() / total)


def pca_frequency_shares(W_E: Float[Tensor, "p d_model"], n_components: int = N_COMPONENTS
                         ) -> tuple[Float[Tensor, " n"], Int[Tensor, " n"]]:
    """For each top principal component of the number embeddings, the largest share of its energy
    on one frequency pair ``{k, p - k}``, and that k.

    The component's scores ``v`` (``[p]``, over the numbers; centred, so ``DFT(v)_0 = 0``) have the
    share ``(|V_k|^2 + |V_{p-k}|^2) / sum_j |V_j|^2`` with ``V = DFT(v)``; this is the notebook's
    ``2 |sum_t v[t] e^{2 pi i t k / p}|^2`` for ``v`` scaled to norm ``1 / sqrt(p)`` (its loop over
    ``v[t i mod p]`` visits frequency ``i^{-1}``, every k once for prime p). Clipped to [0, 1].

    Args:
        W_E: ``[p, d]``, the embeddings of the p numbers (no '=' row).
        n_components: how many top components; fewer are used when the centred embedding has
            lower rank (singular values below ``max(p, d) * eps(W_E.dtype) * S_max`` do not count).

    Returns:
        ``(shares [n], freqs [n])``, float64 and int64 with ``k`` in ``1 .. (p - 1) / 2``, for
        ``n = min(n_components, rank)`` components in order of variance.

    Source: ``code/eval-main.ipynb`` cell 14 (sklearn ``PCA`` = centred SVD).
    """
    p, d = W_E.shape
    X = W_E.to(torch.float64)
    X = X - X.mean(0)
    U, S, _ = torch.linalg.svd(X, full_matrices=False)
    tol = max(p, d) * torch.finfo(W_E.dtype).eps * float(S[0]) if S.numel() else 0.0
    n = min(n_components, int((S > tol).sum()))
    V = torch.fft.fft(U[:, :n] * S[:n], dim=0).abs().pow(2)  # (p, n)
    half = (p - 1) // 2
    pair = V[1:half + 1] + V[p - half:].flip(0)  # (half, n): row k-1 is {k, p-k}
    share = (pair / V.sum(0)).clamp(0.0, 1.0)
    best, arg = share.max(0)
    return best, arg + 1


def circularity(W_E: Float[Tensor, "p d_model"], n_components: int = N_COMPONENTS) -> float:
    """Mean over the top ``n_components`` principal components of the number embeddings of each
    one's best single-frequency share (``pca_frequency_shares``): 1 for an embedding made of
    cos/sin waves, lower when a component mixes frequencies or is not periodic. The paper filters
    non-circular runs with it (``circularity > 0.99``).

    Args:
        W_E: ``[p, d]`` embeddings of the numbers (no '=' row).
        n_components: 4 in the paper.

    Returns:
        In [0, 1]; NaN for a constant embedding.

    Source: ``code/eval-main.ipynb`` cell 14.
    """
    shares, _ = pca_frequency_shares(W_E, n_components)
    return float(shares.mean()) if shares.numel() else math.nan


def input_embedding(model) -> Tensor | None:
    """The embedding ``[d_vocab, d]`` the model reads a and b through, or None when it has none
    (an MLP with ``collapsed_in``, or a bit-vector task)."""
    m = model.cfg.model
    if getattr(m, "family", "transformer") == "mlp":
        if m.collapsed_in or getattr(model, "kind", "pair") != "pair" or not hasattr(model, "embed"):
            return None
    return model.embed.W_E


def embedding_logits(model, tokens: Int[Tensor, "n 3"], emb: Float[Tensor, "n 2 d"]
                     ) -> Float[Tensor, "n d_vocab_out"]:
    """The read-out logits of ``tokens`` (``a b =``) with the embedding vectors of a and b replaced
    by ``emb``, through the model's own forward (so the logits are differentiable in ``emb``).

    ``HookedTransformer``: a hook on ``hook_embed`` (the ``W_E[tokens]`` term, before ``W_pos`` is
    added) puts ``emb`` at positions 0 and 1; logits at the last position. ``MLPModel``: a hook on
    ``mlp.hook_pre`` returns ``emb[:, 0] W_in + emb[:, 1] W_in`` (the family's contract,
    ``models/mlp.py``), checked equal to the model's own value.

    Raises:
        ValueError: the model has no input embedding (``input_embedding`` is None).
        RuntimeError: the MLP's ``hook_pre`` is not ``W_E[a] W_in + W_E[b] W_in`` any more.
    """
    if input_embedding(model) is None:
        raise ValueError("this model reads a and b without an embedding (collapsed_in or a bit task): "
                         "gradient symmetricity needs embedding vectors; it is None for such models")
    if getattr(model.cfg.model, "family", "transformer") == "mlp":
        W_in = model.mlp.W_in

        def replace(pre: Tensor, _name: str) -> Tensor:
            new = emb[:, 0] @ W_in + emb[:, 1] @ W_in
            scale = float(pre.detach().abs().max()) or 1.0
            if not torch.allclose(new.detach(), pre.detach(), rtol=1e-4, atol=1e-5 * scale):
                raise RuntimeError("MLPModel's mlp.hook_pre is no longer W_E[a] W_in + W_E[b] W_in; "
                                   "update analysis.clock_pizza.embedding_logits to the new forward")
            return new

        name = "mlp.hook_pre"
    else:
        def replace(out: Tensor, _name: str) -> Tensor:
            return torch.cat([emb.to(out.dtype), out[:, 2:]], 1)

        name = "hook_embed"
    with model.hooks([(name, replace)]):
        return model(tokens)[:, -1]


def embedding_gradients(model, triples: Int[Tensor, "n 3"]) -> Float[Tensor, "n 2 d"] | None:
    """``d logit_c / d W_E[a]`` and ``d logit_c / d W_E[b]`` (row 0 and 1) for each ``(a, b, c)``,
    at the embedding vectors as they enter the model; None without an input embedding.

    One backward pass: the examples of a batch do not interact, so the gradient of the summed
    selected logits is each example's own. Units: logit per embedding unit.
    """
    W_E = input_embedding(model)
    if W_E is None:
        return None
    p = model.cfg.task.p
    tokens = torch.stack([triples[:, 0], triples[:, 1], torch.full_like(triples[:, 0], p)], 1)
    emb = W_E.detach()[tokens[:, :2]].clone().requires_grad_(True)  # (n, 2, d)
    with torch.enable_grad():
        logits = embedding_logits(model, tokens, emb)
        (grad,) = torch.autograd.grad(logits.gather(1, triples[:, 2:3]).sum(), emb)
    return grad


def gradient_symmetricity(model, triples: Int[Tensor, "n 3"] | None = None) -> float | None:
    """Mean over the triples of the cosine similarity of ``d logit_c / d W_E[a]`` and
    ``d logit_c / d W_E[b]`` (``embedding_gradients``).

    1 when the logits depend on ``W_E[a] + W_E[b]`` only (a pizza; every model of PAIR's MLP
    family, by construction); lower for a clock. A triple whose gradient is 0 (dead ReLUs) has an
    undefined cosine, which makes the mean NaN, as in the notebook.

    Args:
        model: a ``HookedTransformer`` or an ``MLPModel`` of a modular task.
        triples: ``[n, 3]`` rows ``(a, b, c)``; default ``sample_triples(p)``.

    Returns:
        The mean cosine in [-1, 1], or None for a model without an input embedding.

    Source: ``code/eval-main.ipynb`` cell 12.
    """
    if input_embedding(model) is None:
        return None
    triples = sample_triples(model.cfg.task.p) if triples is None else triples
    g = embedding_gradients(model, triples).to(torch.float64)
    cos = (g[:, 0] * g[:, 1]).sum(-1) / (g[:, 0].norm(dim=-1) * g[:, 1].norm(dim=-1))
    return float(cos.mean())


@torch.no_grad()
def correct_logit_grid(model, p: int, chunk: int = 4096) -> Float[Tensor, "p p"]:
    """The logit of the answer ``(a + b) mod p`` for every pair, ``[p, p]`` indexed ``[a, b]``,
    read out at the last position of ``a b =``."""
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    tokens = torch.stack([a, b, torch.full_like(a, p)], 1)
    c = ((a + b) % p).unsqueeze(1)
    out = [model(tokens[i:i + chunk])[:, -1].gather(1, c[i:i + chunk]) for i in range(0, p * p, chunk)]
    return torch.cat(out)[:, 0].reshape(p, p)


def clock_or_pizza(gradient_sym: float | None, dist_irr: float | None,
                   thresholds: dict[str, dict[str, float]] = THRESHOLDS) -> str:
    """Read the two measures: ``"pizza"`` if grad-sym >= 0.98 and DI < 0.5, ``"clock"`` if
    DI >= 0.7 and grad-sym < 0.9, else ``"unclear"`` (also when a measure is None or NaN).

    Why these numbers: in the paper's 1-layer d_model = 128 runs (``pair.md`` §5) the pizza end
    (attention rate alpha 0-0.5) has median grad-sym 0.991-0.993 and DI 0.33-0.37, the clock end
    (alpha 0.9-1) grad-sym 0.48 and DI 0.85. A pizza is symmetric to about 1%, hence the strict
    0.98; DI 0.5 is past the pizza medians and well short of the clock's. The clock rule asks for
    DI >= 0.7 with grad-sym clearly below any pizza's (< 0.9). Between the ends, alpha 0.6-0.7
    (0.87, 0.62) reads "unclear", alpha 0.8-0.9 (0.61, 0.78) "clock". The thresholds are
    ``THRESHOLDS`` (written to ``analysis.json``).

    Args:
        gradient_sym: ``gradient_symmetricity``. dist_irr: ``distance_irrelevance``.
        thresholds: the rules, shaped as ``THRESHOLDS``.
    """
    if gradient_sym is None or dist_irr is None:
        return "unclear"
    if not (math.isfinite(gradient_sym) and math.isfinite(dist_irr)):
        return "unclear"
    pz, ck = thresholds["pizza"], thresholds["clock"]
    if gradient_sym >= pz["gradient_symmetricity_min"] and dist_irr < pz["distance_irrelevance_max"]:
        return "pizza"
    if dist_irr >= ck["distance_irrelevance_min"] and gradient_sym < ck["gradient_symmetricity_max"]:
        return "clock"
    return "unclear"


def clock_pizza(model_or_run, *, correct_logits: Float[Tensor, "p p"] | None = None,
                n_triples: int = N_TRIPLES, seed: int = SEED, n_components: int = N_COMPONENTS
                ) -> dict[str, Any]:
    """The three measures of a modular-addition model and what they read as.

    Args:
        model_or_run: a ``HookedTransformer`` / ``MLPModel``, or a ``Run`` (its last checkpoint).
        correct_logits: ``correct_logit_grid(model, p)`` if already computed.
        n_triples, seed: the gradient-symmetricity sample (``sample_triples``).
        n_components: principal components for circularity.

    Returns:
        JSON-ready: ``gradient_symmetricity`` (None without an input embedding),
        ``distance_irrelevance``, ``circularity`` (None without an input embedding), ``reading``
        (``"pizza"``, ``"clock"`` or ``"unclear"``, by ``clock_or_pizza``), ``thresholds``,
        ``sampling`` (``n_triples``, ``seed``) and ``pca`` (``frequencies`` and ``shares`` of the
        components circularity averages). A ``Run`` adds ``checkpoint`` (the step).

    Source: Zhong et al. 2023 and ``code/eval-main.ipynb``; ``docs/analysis.md``.
    """
    step = None
    if hasattr(model_or_run, "model_at"):
        step = model_or_run.steps[-1]
        model = model_or_run.model_at(step)
    else:
        model = model_or_run
    p = model.cfg.task.p
    grid = correct_logit_grid(model, p) if correct_logits is None else correct_logits
    di = distance_irrelevance(grid)
    gs = gradient_symmetricity(model, sample_triples(p, n_triples, seed))
    W_E = input_embedding(model)
    shares = freqs = None
    if W_E is not None:
        shares, freqs = pca_frequency_shares(W_E.detach()[:p], n_components)
    out: dict[str, Any] = {
        "gradient_symmetricity": gs,
        "distance_irrelevance": di,
        "circularity": float(shares.mean()) if shares is not None and shares.numel() else None,
        "reading": clock_or_pizza(gs, di),
        "thresholds": copy.deepcopy(THRESHOLDS),
        "sampling": {"n_triples": n_triples, "seed": seed},
        "pca": {"frequencies": freqs.tolist() if freqs is not None else None,
                "shares": shares.tolist() if shares is not None else None},
    }
    if step is not None:
        out["checkpoint"] = step
    return out


def applies(cfg) -> bool:
    """Whether ``groklab analyze`` computes ``clock_pizza`` for a run: modular addition
    (``task.operation: add``), by a transformer or by an MLP with an input embedding (not
    ``collapsed_in``). Other operations have no clock or pizza to tell apart."""
    if getattr(cfg.task, "name", "modular") != "modular" or cfg.task.operation != "add":
        return False
    return cfg.model.family != "mlp" or not cfg.model.collapsed_in


def final_clock_pizza(run) -> tuple[dict[str, Any], Float[Tensor, "p p"]]:
    """``clock_pizza`` of the run's last checkpoint (with ``checkpoint``) and its
    ``sum_diff_table`` (``[p, p]``, for ``analysis.npz`` ``clock_pizza_logits``)."""
    step = run.steps[-1]
    model = run.model_at(step)
    grid = correct_logit_grid(model, run.config.task.p)
    out = clock_pizza(model, correct_logits=grid)
    out["checkpoint"] = step
    return out, sum_diff_table(grid)


def analysis_parts(run) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """What ``groklab analyze`` adds for the clock-vs-pizza measures, for both model families:
    ``(analyses, json, npz)`` = ``(["clock_pizza"], {"clock_pizza": ...}, {"clock_pizza_logits":
    [p, p]})`` when they ``applies`` to the run's config, else three empty containers."""
    if not applies(run.config):
        return [], {}, {}
    summary, table = final_clock_pizza(run)
    return ["clock_pizza"], {"clock_pizza": summary}, {"clock_pizza_logits": table.numpy()}
