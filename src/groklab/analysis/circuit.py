"""The Fourier multiplication circuit of a trained model (Nanda et al. 2023, §4).

Pure functions on tensors: neuron clusters, key frequencies, the neuron-logit map W_L, the
embedding circles and PCA, attention in the Fourier basis, and the fit of the logits to
``sum_k alpha_k cos(w_k (a + b - c))``. Shapes use the paper's orientation where it has one:
``W_L`` is ``[p, d_mlp]`` (classes x neurons), i.e. ``(W_out @ W_U[:, :p]).T``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from .fourier import freq_norms, neuron_freq_fractions, sum_directions

THRESHOLD = 0.85  # paper §4.2: a neuron is explained by one frequency above 85% FVE


@dataclass(frozen=True)
class NeuronClusters:
    """Each neuron's best frequency and fraction of variance explained (FVE).

    Attributes:
        frac_by_freq: ``[(p-1)/2, d_mlp]``; row k-1 is the FVE of frequency k.
        frac_explained: ``[d_mlp]``, the max over k.
        best_freq: ``[d_mlp]`` int, the argmax frequency (1-based), before thresholding.
        freq: ``[d_mlp]`` int, ``best_freq`` where ``frac_explained >= threshold``, else -1.
        counts: ``{freq: n_neurons}`` for every frequency with a neuron, and -1 (always present).
    """

    frac_by_freq: Tensor
    frac_explained: Tensor
    best_freq: Tensor
    freq: Tensor
    counts: dict[int, int] = field(default_factory=dict)


def neuron_clusters(acts: Float[Tensor, "pairs d_mlp"], F: Float[Tensor, "p p"],
                    threshold: float = THRESHOLD) -> NeuronClusters:
    """Cluster neurons by the frequency whose {Const, cos k, sin k}^2 block explains them.

    Args:
        acts: ``blocks.0.mlp.hook_post`` at the last position over all p^2 pairs.
        F: 1D Fourier basis. threshold: FVE below which a neuron goes to cluster -1.

    Source: paper §4.2 ("433 (84.6%) neurons ... over 85%"); notebook ``neuron_freqs``.
    """
    fr = neuron_freq_fractions(acts, F)
    frac, arg = fr.max(dim=0)
    best = arg + 1
    freq = torch.where(frac >= threshold, best, torch.full_like(best, -1))
    counts = {int(k): int((freq == k).sum()) for k in torch.unique(freq).tolist()}
    counts.setdefault(-1, 0)
    return NeuronClusters(fr, frac, best, freq, counts)


@dataclass(frozen=True)
class KeyFrequencies:
    """Key frequencies and the evidence for them.

    Attributes:
        freqs: sorted key frequencies.
        rule: ``"neuron_clusters"`` or ``"W_L_sparsity"`` (fallback when no cluster qualifies).
        min_neurons: the cluster size a frequency needed.
        W_L_freqs: frequencies whose W_L norm is > 1/4 of the largest (cross-check).
        W_E_freqs: same rule on W_E.
        agree_W_L: whether ``freqs == W_L_freqs``.
    """

    freqs: list[int]
    rule: str
    min_neurons: int
    W_L_freqs: list[int]
    W_E_freqs: list[int]
    agree_W_L: bool


def sparse_freqs(component_norms: Float[Tensor, " p"], rel: float = 0.25) -> list[int]:
    """Frequencies whose combined cos/sin norm exceeds ``rel`` times the largest (Const ignored).

    The TransformerLens demo's rule (norm > max/4), applied per frequency.
    """
    fn = freq_norms(component_norms)
    return sorted((torch.nonzero(fn > rel * fn.max()).flatten() + 1).tolist())


def key_frequencies(clusters: NeuronClusters, W_L_norms: Float[Tensor, " p"],
                    W_E_norms: Float[Tensor, " p"], min_frac: float = 0.02,
                    max_fallback: int = 6) -> KeyFrequencies:
    """Key frequencies of a trained model, found from the model itself.

    Rule: a frequency is key if its neuron cluster (neurons with FVE >= 0.85 for it) holds at
    least ``max(2, ceil(min_frac * d_mlp))`` neurons (the notebook's rule (a), restricted to
    clusters with a non-trivial number of neurons). If no cluster qualifies (e.g. before
    grokking), fall back to W_L sparsity: frequencies whose W_L Fourier norm exceeds a quarter
    of the largest, at most ``max_fallback`` of them (the largest; trained models use 3-6, and
    an untrained W_L has every frequency above max/4). W_L and W_E sparsity are recorded as a
    cross-check.

    Args:
        clusters: from ``neuron_clusters``.
        W_L_norms, W_E_norms: ``[p]`` Fourier component norms (``fourier.component_norms``).

    Source: nanda.md §3.2 rules (a)-(c); paper §4.1 and App. C.2.
    """
    d_mlp = clusters.freq.numel()
    need = max(2, math.ceil(min_frac * d_mlp))
    freqs = sorted(k for k, n in clusters.counts.items() if k > 0 and n >= need)
    wl, we = sparse_freqs(W_L_norms), sparse_freqs(W_E_norms)
    rule = "neuron_clusters"
    if not freqs:
        fn = freq_norms(W_L_norms)
        top = sorted(wl, key=lambda k: -float(fn[k - 1]))[:max_fallback]
        freqs, rule = sorted(top), "W_L_sparsity"
    return KeyFrequencies(freqs, rule, need, wl, we, freqs == wl)


def neuron_logit_map(W_out: Float[Tensor, "d_mlp d_model"], W_U: Float[Tensor, "d_model v"], p: int
                     ) -> Float[Tensor, "p d_mlp"]:
    """The paper's ``W_L = W_U^T W_out^T``: ``[p, d_mlp]``, the '=' output column dropped."""
    return (W_out.to(torch.float64) @ W_U[:, :p].to(torch.float64)).T


@dataclass(frozen=True)
class WLStats:
    """``W_L`` in the Fourier basis and how low-rank it is.

    Attributes:
        fourier: ``F @ W_L``, ``[p, d_mlp]`` (rows in basis order).
        singular_values: ``[min(p, d_mlp)]`` of ``W_L``.
        effective_rank: ``exp(H)`` of the normalised singular values (Roy & Vetterli 2007).
        rank_99: singular values needed for 99% of ``||W_L||_F^2``.
        residual_frac: ``||W_L - P W_L||_F / ||W_L||_F``, P the projection on the 2K key cos/sin
            directions (paper §4.1: < 0.55%).
        residual_frac_no_const: the same with the Const direction also projected out (the
            Const row shifts every logit equally and does not change the softmax).
    """

    fourier: Tensor
    singular_values: Tensor
    effective_rank: float
    rank_99: int
    residual_frac: float
    residual_frac_no_const: float


def wl_stats(W_L: Float[Tensor, "p d_mlp"], F: Float[Tensor, "p p"], key: list[int]) -> WLStats:
    """Fourier view, effective rank and key-direction residual of ``W_L`` (paper §4.1, Fig. 3b)."""
    W_L = W_L.to(torch.float64)
    four = F.to(torch.float64) @ W_L
    s = torch.linalg.svdvals(W_L)
    e = s ** 2 / (s ** 2).sum()
    eff = float(torch.exp(-(e[e > 0] * e[e > 0].log()).sum()))
    r99 = int((torch.cumsum(e, 0) < 0.99).sum()) + 1
    idx = [i for k in key for i in (2 * k - 1, 2 * k)]
    tot = float(four.norm())
    rest = four.clone()
    rest[idx] = 0
    res = float(rest.norm()) / tot if tot else 0.0
    rest[0] = 0
    res_nc = float(rest.norm()) / tot if tot else 0.0
    return WLStats(four, s, eff, r99, res, res_nc)


def embed_key_planes(W_E: Float[Tensor, "p d_model"], F: Float[Tensor, "p p"], key: list[int]
                     ) -> Float[Tensor, "K p 2"]:
    """Each token's embedding projected on the unit cos k / sin k Fourier directions of W_E.

    For key frequency k, ``u = W_E^T F[2k-1]`` and ``v = W_E^T F[2k]`` are the directions in
    the residual stream carrying cos k and sin k; the projections ``W_E u/|u|`` and
    ``W_E v/|v|`` draw each token on a circle (paper §4.1). A zero direction gives zeros.

    Returns:
        ``[K, p, 2]``.
    """
    W_E = W_E.to(torch.float64)
    F = F.to(torch.float64)
    out = torch.zeros(len(key), W_E.shape[0], 2, dtype=torch.float64)
    for i, k in enumerate(key):
        for j, row in enumerate((2 * k - 1, 2 * k)):
            d = W_E.T @ F[row]
            n = d.norm()
            if n > 0:
                out[i, :, j] = W_E @ (d / n)
    return out


def embed_pca(W_E: Float[Tensor, "p d_model"], n_var: int = 8
              ) -> tuple[Float[Tensor, "p 2"], Float[Tensor, " k"]]:
    """PCA of the token embeddings (mean removed): coordinates on the top 2 PCs and the share of
    variance of the top ``n_var`` components. Source: TransformerLens demo (SVD of W_E)."""
    X = W_E.to(torch.float64)
    X = X - X.mean(0)
    U, S, _ = torch.linalg.svd(X, full_matrices=False)
    var = S ** 2 / (S ** 2).sum() if float(S.sum()) > 0 else S
    return U[:, :2] * S[:2], var[:n_var]


def attention_fourier(scores_eq_to_a: Float[Tensor, "heads p"], F: Float[Tensor, "p p"]
                      ) -> Float[Tensor, "heads p"]:
    """Pre-softmax attention score from '=' to position 0 as a function of token a, in the 1D
    Fourier basis: ``scores @ F.T`` (rows per head, columns in basis order). Source: paper
    App. (``W_attnf``, Fig. 8)."""
    return scores_eq_to_a.to(torch.float64) @ F.to(torch.float64).T


@dataclass(frozen=True)
class LogitFit:
    """OLS fit ``logits ~ sum_k alpha_k cos(w_k (a + s b - c))`` over the key frequencies.

    Attributes:
        freqs: the frequencies used. alpha: ``[K]`` coefficients (logit units).
        fve: ``1 - ||L~ - fit||^2 / ||L~||^2`` with ``L~`` the logits minus each pair's mean over
            classes (a softmax-invariant shift the cosines cannot express).
        fitted: ``[p*p, p]`` the fitted logits, or None when not requested.
    """

    freqs: list[int]
    alpha: Tensor
    fve: float
    fitted: Tensor | None


def _cs(p: int, k: int) -> tuple[Tensor, Tensor]:
    c = torch.arange(p, dtype=torch.float64)
    return torch.cos(2 * math.pi * k * c / p), torch.sin(2 * math.pi * k * c / p)


class CosFitter:
    """Precomputed pieces for fitting logits to ``cos(w_k (a + sign*b - c))``, k in ``freqs``.

    Uses ``cos(w(x - c)) = cos(wx) cos(wc) + sin(wx) sin(wc)`` with x = a + sign*b, so the normal
    equations need only the ``[2K, p]`` projection ``U^T L`` of the logits on the unit
    cos/sin(w_k x) directions: never a ``[K, p, p, p]`` cube (TransformerLens issue #543).
    Memory O(p^2 K); the fitted logits (``[p*p, p]``) are built only on request.
    """

    def __init__(self, p: int, freqs: list[int], sign: int = 1):
        self.p, self.freqs = p, list(freqs)
        self.U = sum_directions(p, self.freqs, sign)  # (p^2, 2K) unit columns
        K = len(self.freqs)
        self.cc = torch.stack([_cs(p, k)[0] for k in self.freqs], 1) if K else torch.zeros(p, 0)
        self.sc = torch.stack([_cs(p, k)[1] for k in self.freqs], 1) if K else torch.zeros(p, 0)
        cab, sab = self.U[:, 0::2], self.U[:, 1::2]
        cc, sc = self.cc.double(), self.sc.double()
        # Gram matrix of the regressors X_k = u_ab (x) cos_c + v_ab (x) sin_c (u, v unit columns)
        self.G = ((cab.T @ cab) * (cc.T @ cc) + (cab.T @ sab) * (cc.T @ sc)
                  + (sab.T @ cab) * (sc.T @ cc) + (sab.T @ sab) * (sc.T @ sc))

    def project(self, logits: Float[Tensor, "pairs p"]) -> Float[Tensor, "twoK p"]:
        """``U^T L``: coefficients of each class's logits on the cos/sin(w_k x) directions."""
        return self.U.T @ logits.to(torch.float64)

    def _rhs(self, proj: Tensor) -> Tensor:
        return (proj[0::2] * self.cc.T).sum(1) + (proj[1::2] * self.sc.T).sum(1)  # <X_k, L>

    def cos_coeffs(self, proj: Tensor) -> Tensor:
        """Coefficient of each unit-norm cos(w_k(x - c)) cube in the logits, ``[K]`` (notebook
        ``get_cos_coeffs``; each regressor here has norm sqrt(p))."""
        return self._rhs(proj) / math.sqrt(self.p)

    def fit(self, logits: Float[Tensor, "pairs p"], proj: Tensor | None = None,
            fitted: bool = False) -> LogitFit:
        """OLS coefficients and FVE (see ``LogitFit``); ``proj`` may be passed if known."""
        L = logits.to(torch.float64)
        if proj is None:
            proj = self.project(L)
        if not self.freqs:
            return LogitFit([], torch.zeros(0, dtype=torch.float64), 0.0,
                            torch.zeros_like(L) if fitted else None)
        rhs = self._rhs(proj)  # the per-pair mean is orthogonal to every regressor
        alpha = torch.linalg.lstsq(self.G, rhs[:, None]).solution[:, 0]
        row_mean = L.mean(1)
        tot = float((L ** 2).sum()) - self.p * float((row_mean ** 2).sum())  # ||L~||^2
        resid = tot - 2 * float(alpha @ rhs) + float(alpha @ self.G @ alpha)
        fve = 1.0 - resid / tot if tot > 0 else 0.0
        fit = None
        if fitted:
            fit = (self.U[:, 0::2] * alpha) @ self.cc.T + (self.U[:, 1::2] * alpha) @ self.sc.T
        return LogitFit(list(self.freqs), alpha, fve, fit)


def logit_fit(logits: Float[Tensor, "pairs p"], freqs: list[int], sign: int = 1) -> LogitFit:
    """Fit the logits to ``sum_k alpha_k cos(w_k (a + sign*b - c))`` by least squares.

    Args:
        logits: ``[p*p, p]`` ('=' class dropped). freqs: key frequencies.

    Returns:
        ``LogitFit`` with the fitted ``[p*p, p]`` logits (``fitted``).

    Source: paper §4.3 ("explains 95% of the variance"); notebook ``get_cos_coeffs``. See
    ``CosFitter`` for the memory-safe identity used.
    """
    return CosFitter(logits.shape[1], freqs, sign).fit(logits, fitted=True)


def cos_coeffs(logits: Float[Tensor, "pairs p"], freqs: list[int], sign: int = 1) -> Tensor:
    """Coefficient of each unit-norm cos(w_k(a + sign*b - c)) in the logits (notebook
    ``get_cos_coeffs``), ``[K]``."""
    f = CosFitter(logits.shape[1], freqs, sign)
    return f.cos_coeffs(f.project(logits))
