"""Fourier bases over Z_p and the Fourier views of weights and activations.

Convention (Nanda et al. 2023, §4 and progress-measures-paper ``make_fourier_basis``; see
``docs/analysis.md``): for an odd prime p the 1D basis has p orthonormal rows

    Const = 1/sqrt(p),  cos k = cos(2 pi k x / p) * sqrt(2/p),  sin k = sin(2 pi k x / p) * sqrt(2/p)

in the order ``Const, cos 1, sin 1, ..., cos (p-1)/2, sin (p-1)/2`` (cos before sin; the
TransformerLens demo puts sin first, we do not). Row ``2k-1`` is ``cos k`` and row ``2k`` is
``sin k``. The 2D basis over the (a, b) grid is the outer product of two 1D rows; its index
``(i, j)`` means row ``i`` on the ``a`` axis and row ``j`` on the ``b`` axis.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor


def _check_p(p: int) -> None:
    if p < 3 or p % 2 == 0:
        raise ValueError(f"p={p}: the Fourier basis here is for odd p >= 3 (no Nyquist term)")


def fourier_labels(p: int) -> list[str]:
    """``["Const", "cos 1", "sin 1", ..., "cos (p-1)/2", "sin (p-1)/2"]`` (length p)."""
    _check_p(p)
    out = ["Const"]
    for k in range(1, (p - 1) // 2 + 1):
        out += [f"cos {k}", f"sin {k}"]
    return out


def fourier_basis(p: int, dtype: torch.dtype = torch.float64) -> tuple[Float[Tensor, "p p"], list[str]]:
    """The orthonormal 1D Fourier basis over Z_p, rows in the paper's order, plus labels.

    Args:
        p: an odd modulus (a prime in practice).
        dtype: floating dtype of the result.

    Returns:
        ``(F, labels)``: ``F[i, x]`` is basis function ``i`` at ``x``, shape ``[p, p]``, with
        ``F @ F.T == I``; ``fft1d(t) = F @ t`` along the token axis.

    Raises:
        ValueError: p even or < 3.

    Source: Nanda et al. 2023 §4; progress-measures-paper ``make_fourier_basis``.
    """
    _check_p(p)
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.full((p,), 1.0 / math.sqrt(p), dtype=torch.float64)]
    scale = math.sqrt(2.0 / p)
    for k in range(1, (p - 1) // 2 + 1):
        rows.append(torch.cos(2 * math.pi * k * x / p) * scale)
        rows.append(torch.sin(2 * math.pi * k * x / p) * scale)
    return torch.stack(rows).to(dtype), fourier_labels(p)


def fourier_basis_2d(p: int, dtype: torch.dtype = torch.float64
                     ) -> tuple[Float[Tensor, "p2 p2"], list[str]]:
    """The 2D Fourier basis over the (a, b) grid: row ``i*p + j`` is ``outer(F[i], F[j]).flatten()``.

    Memory is O(p^4) (p=113: 163M entries); use ``fft2d`` for real work, this is for small p and
    tests. Flattening follows the task grid: pair (a, b) is column ``a*p + b``.

    Returns:
        ``(F2, labels)``, ``F2`` of shape ``[p*p, p*p]`` (orthonormal rows) and labels like
        ``"cos 3 x sin 5"`` (a-axis label first).
    """
    F, lab = fourier_basis(p, dtype)
    F2 = torch.einsum("ia,jb->ijab", F, F).reshape(p * p, p * p)
    return F2, [f"{u} x {v}" for u in lab for v in lab]


def fft1d(t: Float[Tensor, "p ..."], F: Float[Tensor, "p p"]) -> Float[Tensor, "p ..."]:
    """Coefficients of ``t`` along its first (token) axis in the basis ``F``: ``F @ t``."""
    return torch.einsum("fx,x...->f...", F.to(t.dtype), t)


def fft2d(t: Float[Tensor, "pairs ..."], F: Float[Tensor, "p p"]) -> Float[Tensor, "p p ..."]:
    """2D Fourier coefficients over the (a, b) grid: ``F M F^T`` on the a and b axes.

    Args:
        t: ``[p*p, ...]`` in lexicographic order (row ``a*p + b``), e.g. neuron activations.
        F: the 1D basis from ``fourier_basis``.

    Returns:
        ``[p, p, ...]``: entry ``[i, j]`` is the coefficient of ``F[i](a) F[j](b)``.

    Source: progress-measures-paper ``helpers.fft2d``.
    """
    p = F.shape[0]
    m = t.reshape(p, p, -1)
    F = F.to(t.dtype)
    out = torch.einsum("fx,xyz,gy->fgz", F, m, F)
    return out.reshape(p, p, *t.shape[1:])


def freq_indices(k: int) -> list[int]:
    """Basis rows ``[2k-1, 2k]`` (cos k, sin k) of frequency ``k``."""
    return [2 * k - 1, 2 * k]


def component_norms(W: Float[Tensor, "p d"], F: Float[Tensor, "p p"]) -> Float[Tensor, " p"]:
    """Norm of each Fourier component of a per-token matrix: ``(F @ W).norm(dim=1)``.

    Args:
        W: ``[p, d]`` one row per token 0..p-1 (e.g. ``W_E`` without the '=' row, or the
            paper's ``W_L`` ``[p, d_mlp]``).

    Returns:
        ``[p]`` in basis order (labels from ``fourier_labels``). Source: paper Fig. 3 (§4.1).
    """
    return (F.to(W.dtype) @ W).norm(dim=1)


def freq_norms(component: Float[Tensor, "... p"]) -> Float[Tensor, "... half"]:
    """Combine cos/sin component norms per frequency: ``sqrt(cos_k^2 + sin_k^2)``, k = 1..(p-1)/2."""
    return (component[..., 1::2] ** 2 + component[..., 2::2] ** 2).sqrt()


def sum_directions(p: int, freqs: list[int], sign: int = 1, dtype: torch.dtype = torch.float64
                   ) -> Float[Tensor, "pairs twoK"]:
    """Unit vectors of cos(w_k(a + s b)) and sin(w_k(a + s b)) over the p^2 grid, w_k = 2 pi k / p.

    Column ``2i`` is cos and ``2i+1`` is sin for ``freqs[i]``. For ``sign=+1`` these equal the
    notebook's ``(F_{2k-1} (x) F_{2k-1} - F_{2k} (x) F_{2k}) / sqrt(2)`` and
    ``(F_{2k} (x) F_{2k-1} + F_{2k-1} (x) F_{2k}) / sqrt(2)`` (``get_component_cos_xpy``); each
    column has norm 1, they are mutually orthogonal and orthogonal to constants. ``sign=-1``
    gives the a - b directions (used for subtraction).

    Returns:
        ``[p*p, 2 * len(freqs)]``.
    """
    a = torch.arange(p, dtype=torch.float64).repeat_interleave(p)
    b = torch.arange(p, dtype=torch.float64).repeat(p)
    cols = []
    for k in freqs:
        arg = 2 * math.pi * k * (a + sign * b) / p
        cols += [torch.cos(arg), torch.sin(arg)]
    if not cols:
        return torch.zeros(p * p, 0, dtype=dtype)
    return (torch.stack(cols, dim=1) * (math.sqrt(2.0) / p)).to(dtype)


def neuron_freq_fractions(acts: Float[Tensor, "pairs d_mlp"], F: Float[Tensor, "p p"]
                          ) -> Float[Tensor, "half d_mlp"]:
    """Fraction of each neuron's variance in the {Const, cos k, sin k}^2 block, for every k.

    The activations are centred per neuron (mean over the p^2 pairs removed), transformed with
    ``fft2d``, and for each k = 1..(p-1)/2 the sum of squares of the 3x3 block over rows
    ``[0, 2k-1, 2k]`` on both axes is divided by the total sum of squares. A constant neuron
    gets 0 for every k.

    Args:
        acts: ``hook_post`` at the last position over all p^2 pairs (lexicographic).

    Returns:
        ``[(p-1)/2, d_mlp]``; row ``k-1`` is frequency k. Source: paper §4.2 and Fig. 5a; notebook
        ``neuron_explanation``; progress-measures-paper ``calculate_key_freqs`` (which skips
        k = (p-1)/2; we include it).
    """
    acts = acts.to(torch.float64)
    four = fft2d(acts - acts.mean(0), F.to(torch.float64))  # (p, p, n)
    sq = four ** 2
    total = sq.sum(dim=(0, 1))  # (n,)
    # block sum: rows {0, 2k-1, 2k} x cols {0, 2k-1, 2k}
    pair_r = sq[1::2] + sq[2::2]  # (half, p, n): rows {cos k, sin k}
    inner = pair_r[:, 1::2] + pair_r[:, 2::2]  # (half, half, n): {cos,sin}k x {cos,sin}j
    diag = torch.diagonal(inner, dim1=0, dim2=1).T  # (half, n): j == k
    row0 = sq[0, 1::2] + sq[0, 2::2]  # (half, n): Const x {cos k, sin k}
    col0 = pair_r[:, 0]  # (half, n): {cos k, sin k} x Const
    block = diag + row0 + col0 + sq[0, 0]
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return block / safe[None] * (total > 0)[None]


def logit_fourier_norms(logits: Float[Tensor, "pairs c"], F: Float[Tensor, "p p"]) -> Float[Tensor, "p p"]:
    """Norm over output classes of the logits in the 2D Fourier basis of (a, b).

    Args:
        logits: ``[p*p, p]`` at the last position, '=' class dropped; not centred, so the
            (Const, Const) entry carries the per-class mean.

    Returns:
        ``[p, p]``; entry ``[i, j]`` is ``||coefficient of F[i](a) F[j](b)||_2`` over classes.
        Source: paper Fig. 4c (``norm_fourier_logits``).
    """
    return fft2d(logits.to(torch.float64), F.to(torch.float64)).norm(dim=-1)
