"""groklab's fused attention kernel for small heads on the CPU (``_attn_kernel.cpp``).

``fused_attention(xq, xkv, lim, H)`` computes, for every example ``b``, head ``h`` and query ``i``,
``softmax(q_i k_j^T)_{j < lim[b, i]} v`` (``q`` pre-scaled by ``1 / sqrt(d_head)``): the
attention of a causal or a loss-slot mask, whose visible keys are always a prefix. It is one
pass per (example, head) with no ``[L, L]`` scores buffer. When autograd will need the backward,
the forward keeps its softmax for it, each query's row only as long as its keys (the prefix,
rounded up to 8: ~7.5 MB for induction's layer 0, batch 128); the backward then skips the scores,
their exp and K's transpose (forward + backward 1.11-1.13x). Without it (no grad) nothing is
kept, and a backward given no pattern recomputes it from the log-sum-exp (FlashAttention's
recomputation, Dao et al. 2022, §3.1). The kernel reads ``q, k, v`` as ``[B, L, H, d]`` views of the packed
projections (``[.., 3 H d]``, or q and ``[.., 2 H d]``), with no copy; the result is ``[B, Lq, H d]``.
``fused_attention_tables`` is the same causal attention for a first layer whose projections are a
token table plus a position table: the kernel adds the two rows as it loads them, and its backward
scatters the gradient into the tables itself, so the gathered ``[B, L, 3 H d]`` rows are never
stored (induction step 1.08x against gathering them first).

The same extension also holds ``softmax_ce_rows``, the cancellation-free cross-entropy of
``models.softmax_ce`` in one pass per row (induction step 1.03-1.05x against its ~14 torch ops).

The kernel is C++, compiled once per checkout and kernel version with torch's ``cpp_extension``
(needs a C++ compiler and ninja; ~1 min, cached under ``TORCH_EXTENSIONS_DIR`` in a folder named
by a hash of the source's path and text, ``_build_name``). Where it cannot be built,
or with ``GROKLAB_NO_KERNEL=1``, ``available()`` is False (one line on stderr says why) and
``models.multipos`` keeps its batched-GEMM attention; the numbers agree to rounding either way
(``tests/unit/test_attn_kernel.py``, ``tests/unit/test_multipos.py``).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "fused_attention", "fused_attention_folded", "fused_attention_tables",
           "softmax_ce_rows"]

_SOURCE = Path(__file__).with_name("_attn_kernel.cpp")
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast"]  # also benchmarks/bench_attn_kernel.py
_module = None
_tried = False


def _build_name() -> str:
    """The extension's name, hence its build folder: ``groklab_attn_kernel_`` and a hash of the
    source's path and text. torch rebuilds an extension whose source path or text changed, so
    with one name two checkouts on a machine rebuilt each other's kernel at every switch (~1 min)."""
    h = hashlib.sha1(str(_SOURCE.resolve()).encode() + b"\0" + _SOURCE.read_bytes() + str(_CFLAGS).encode())
    return f"groklab_attn_kernel_{h.hexdigest()[:12]}"


def _load():
    """The compiled extension, or None (with one line on stderr) where it cannot be built."""
    global _module, _tried
    if _tried:
        return _module
    _tried = True
    if os.environ.get("GROKLAB_NO_KERNEL"):
        return None
    try:
        from torch.utils.cpp_extension import get_default_build_root, load

        root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
        name = _build_name()
        if not any(root.glob(f"{name}/{name}*.so")):
            print("groklab: building the fused attention kernel (once per checkout and kernel version, "
                  "~1 min)", file=sys.stderr)
        _module = load(name=name, sources=[str(_SOURCE)], extra_cflags=_CFLAGS, verbose=False)
    except Exception as e:  # no compiler, no ninja, no headers: fall back, don't fail the run
        first = (str(e).splitlines() or [""])[0][:160]
        print(f"groklab: the fused attention kernel could not be built ({type(e).__name__}: {first}); "
              "using batched-GEMM attention (slower, same numbers). GROKLAB_NO_KERNEL=1 skips the "
              "build; GROKLAB_KERNEL_DEBUG=1 prints the compiler's error.", file=sys.stderr)
        if os.environ.get("GROKLAB_KERNEL_DEBUG"):
            print(e, file=sys.stderr)
        _module = None
    return _module


def available() -> bool:
    """True when the compiled kernel loads (builds it on first call)."""
    return _load() is not None


def _qkv(xq: Tensor, xkv: Tensor | None, H: int) -> list[Tensor]:
    """q, k, v as ``[B, L, H, d]`` views (no copy) of packed ``xq [B, Lq, 3 H d]`` (``xkv``
    None), or of ``xq [B, Lq, H d]`` and ``xkv [B, Lk, 2 H d]``."""
    def heads(x: Tensor, n: int) -> list[Tensor]:
        B, L, C = x.shape
        return list(x.view(B, L, n, H, C // (n * H)).unbind(2))
    return heads(xq, 3) if xkv is None else heads(xq, 1) + heads(xkv, 2)


def _needs_grad(*xs: Tensor | None) -> bool:
    """Whether autograd will call the backward: then the forward saves its pattern for it."""
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs)


class _Fused(torch.autograd.Function):
    """``_Fused.apply(xq, xkv, lim, H)``: ``xq [B, Lq, 3 H d]`` packed q | k | v (``xkv`` None),
    or ``xq [B, Lq, H d]`` and ``xkv [B, Lk, 2 H d]``; returns ``z [B, Lq, H d]`` (heads
    concatenated). The gradients are written straight into packed tensors of the inputs' shapes."""

    @staticmethod
    def forward(ctx, xq: Tensor, xkv: Tensor | None, lim: Tensor, H: int, save: bool):
        z, lse, pat = _module.forward(*_qkv(xq, xkv, H), lim, save)
        ctx.save_for_backward(xq, xkv, lim, z, lse, pat)
        ctx.H = H
        return z.flatten(2)

    @staticmethod
    def backward(ctx, dz: Tensor):
        xq, xkv, lim, z, lse, pat = ctx.saved_tensors
        gq = torch.empty_like(xq, memory_format=torch.contiguous_format)
        gkv = None if xkv is None else torch.empty_like(xkv, memory_format=torch.contiguous_format)
        _module.backward(*_qkv(xq, xkv, ctx.H), lim, z, lse, pat, dz.contiguous().view(z.shape),
                         *_qkv(gq, gkv, ctx.H))
        return gq, gkv, None, None, None


def fused_attention(xq: Tensor, xkv: Tensor | None, lim: Tensor, H: int) -> Tensor:
    """Prefix-masked softmax attention, autograd-aware: head outputs ``z [B, Lq, H * d]``.

    ``xq`` holds the queries (scaled by ``1 / sqrt(d)``): ``[B, Lq, 3 * H * d]`` with keys and
    values packed after them (``xkv`` None, ``Lk = Lq``), or ``[B, Lq, H * d]`` with
    ``xkv [B, Lk, 2 * H * d]``; heads concatenated as ``W_Q.permute(1, 0, 2).flatten(1)`` lays
    them out. ``lim [B, Lq]`` int32 is the number of keys each query sees (keys ``0 .. lim - 1``,
    ``0 <= lim <= Lk``; a query with ``lim`` 0 sees no keys and gets ``z = 0`` and no gradient, the
    convention for a fully masked row, and trailing ones cost nothing: ``models.multipos`` gives them
    to the positions past an example's last loss slot). float32 or float64 CPU tensors, ``d <= 16``.
    Raises RuntimeError when the kernel is not ``available()`` or the shapes disagree.
    """
    if _load() is None:
        raise RuntimeError("groklab's fused attention kernel is not available (see attn_kernel.available())")
    save = _needs_grad(xq, xkv)
    return _Fused.apply(xq.contiguous(), None if xkv is None else xkv.contiguous(), lim.contiguous(), H, save)


def _check_tables(TE: Tensor, tok: Tensor) -> None:
    """RuntimeError unless the kernel is built and ``tok`` indexes rows of ``TE`` (the kernel
    would read past it)."""
    if _load() is None:
        raise RuntimeError("groklab's fused attention kernel is not available (see attn_kernel.available())")
    if tok.numel() and (int(tok.min()) < 0 or int(tok.max()) >= TE.shape[0]):
        raise RuntimeError(f"tok must index rows of TE (0 .. {TE.shape[0] - 1}), got {int(tok.min())} .. "
                           f"{int(tok.max())}")


class _FusedTables(torch.autograd.Function):
    """``_FusedTables.apply(TE, TP, tok, lim, H, N)``: causal attention of layer 0 with its packed
    projections given as tables (``fused_attention_tables``); returns ``z [B, P, H d]``, and the
    gradients of ``TE`` and ``TP`` (the gather's scatter, done in the kernel)."""

    @staticmethod
    def forward(ctx, TE: Tensor, TP: Tensor, tok: Tensor, lim: Tensor, H: int, N: int, save: bool):
        z, lse, pat = _module.forward_tables(TE, TP, tok, lim, H, N, save)
        ctx.save_for_backward(TE, TP, tok, lim, z, lse, pat)
        ctx.dims = (H, N)
        return z.flatten(2)

    @staticmethod
    def backward(ctx, dz: Tensor):
        TE, TP, tok, lim, z, lse, pat = ctx.saved_tensors
        H, N = ctx.dims
        dTE, dTP = _module.backward_tables(TE, TP, tok, lim, z, lse, pat, dz.contiguous().view(z.shape), H, N)
        return dTE, dTP, None, None, None, None, None


def fused_attention_tables(TE: Tensor, TP: Tensor, tok: Tensor, lim: Tensor, H: int, N: int) -> Tensor:
    """``fused_attention`` for a first layer whose packed projections are tables, autograd-aware:
    the q | k | v row of example ``b`` at position ``j`` is ``TE[tok[b, j]] + TP[(b // N) * P + j]``
    (``models.multipos._Embed``: ``x_0 W = (W_E W)[t_j] + (W_pos W)[j]``), added as the kernel
    loads it, so the ``[B, P, 3 H d]`` gather is never stored and its backward (a scatter-add into
    ``TE`` and ``TP``) is done in the kernel, summed over chunks of examples in a fixed order.

    ``TE [R, 3 H d]`` (every member's token table, stacked), ``TP [E * P, 3 H d]`` (each member's
    position rows, biases included), ``tok [B, P]`` int64 rows of ``TE`` (member offsets added),
    ``B = E * N`` examples, member-major; ``lim [B, P]`` int32 keys per query. Returns ``z [B, P,
    H * d]``. Raises RuntimeError when the kernel is not ``available()``, the shapes disagree or
    ``tok`` is out of range.
    """
    _check_tables(TE, tok)
    return _FusedTables.apply(TE.contiguous(), TP.contiguous(), tok.contiguous(), lim.contiguous(), H, N,
                              _needs_grad(TE, TP))


class _FusedFolded(torch.autograd.Function):
    """``_FusedFolded.apply(xq, D, TE, TP, tok, lim, H, N, save)``: slot queries ``xq [B, Lq, H d]``
    on keys and values ``D + TE[tok] + TP[position]`` (``fused_attention_folded``); returns ``z
    [B, Lq, H d]``, and the gradients of ``xq``, ``D`` (dense) and the tables (scattered in the kernel)."""

    @staticmethod
    def forward(ctx, xq: Tensor, D: Tensor, TE: Tensor, TP: Tensor, tok: Tensor, lim: Tensor, H: int, N: int,
                save: bool):
        z, lse, pat = _module.forward_folded(*_qkv(xq, D, H), TE, TP, tok, lim, H, N, save)
        ctx.save_for_backward(xq, D, TE, TP, tok, lim, z, lse, pat)
        ctx.dims = (H, N)
        return z.flatten(2)

    @staticmethod
    def backward(ctx, dz: Tensor):
        xq, D, TE, TP, tok, lim, z, lse, pat = ctx.saved_tensors
        H, N = ctx.dims
        gq, gD = torch.empty_like(xq), torch.empty_like(D)
        dTE, dTP = _module.backward_folded(*_qkv(xq, D, H), TE, TP, tok, lim, z, lse, pat,
                                           dz.contiguous().view(z.shape), *_qkv(gq, gD, H), H, N)
        return gq, gD, dTE, dTP, None, None, None, None, None


def fused_attention_folded(xq: Tensor, D: Tensor, TE: Tensor, TP: Tensor, tok: Tensor, lim: Tensor, H: int,
                           N: int) -> Tensor:
    """``fused_attention(xq, xkv, lim, H)`` with ``xkv = D + TE[tok] + TP[position]``, added as the
    kernel loads each row, autograd-aware: the last layer of a 2-layer attention-only model, whose
    keys and values ``x_1 W_KV = c x_0 W_KV + z_0 (W_O W_KV)`` are a table part and one product
    of layer 0's head outputs (``models.multipos``), so the residual ``x_1`` is never formed at
    every position and the tables' gradient (the gather's scatter) is summed in the kernel.

    ``xq [B, Lq, H * d]`` queries (scaled), ``D [B, Lk, 2 * H * d]`` the dense k | v part, ``TE
    [R, 2 * H * d]`` token rows (every member's, stacked), ``TP [E * Lk, 2 * H * d]`` each member's
    position rows (biases included), ``tok [B, Lk]`` int64 rows of ``TE`` (member offsets added),
    ``B = E * N`` examples, member-major; ``lim [B, Lq]`` int32 keys per query. Returns ``z [B, Lq,
    H * d]``. Raises RuntimeError when the kernel is not ``available()``, the shapes disagree or
    ``tok`` is out of range.
    """
    _check_tables(TE, tok)
    return _FusedFolded.apply(xq.contiguous(), D.contiguous(), TE.contiguous(), TP.contiguous(),
                              tok.contiguous(), lim.contiguous(), H, N, _needs_grad(xq, D, TE, TP))


def softmax_ce_rows(lg: Tensor, lab: Tensor, N: int) -> tuple[Tensor, Tensor]:
    """``(loss [R], g [R, C])``: ``models.softmax_ce.softmax_ce_exact`` of float32 rows ``lg [R,
    C]`` with labels ``lab [R]`` (any integer dtype), by the compiled kernel in one pass per row;
    ``g`` is ``d (sum of losses / N) / d lg``. Raises ``RuntimeError`` where the kernel is not
    built, or for a label outside ``[0, C)``."""
    if _load() is None:
        raise RuntimeError("the fused attention kernel is not built (attn_kernel.available() is False)")
    return tuple(_module.softmax_ce_exact(lg.contiguous(), lab.contiguous().long(), float(N)))
