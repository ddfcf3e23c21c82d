"""Batched-GEMM attention for an ensemble: the path ``models.multipos`` takes where the fused
kernel (``attn_kernel``) does not apply (GPU, float16/bfloat16, heads wider than 16 dims, or no
C++ compiler).

Heads come split out, ``[E*N*H, L, d]`` (``split_heads``), and ``attend`` returns them merged
back, ``[E, N*L, H*d]`` (heads concatenated, as ``W_O.flatten(1, 2)`` reads them). One autograd
node (``_Attention``) covers all members, examples and heads: batched GEMMs over cache-sized
chunks of the batch, or, causal, over query blocks that each see only the keys up to their last
query, with the pattern saved for the backward. Measured on the 2-core CPU it beat
``F.scaled_dot_product_attention`` (whose flash kernel is slow for heads of 12-32 dims) by
~1.3-1.5x.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["attend", "causal_mask", "merge_heads", "slot_mask", "split_heads"]


_CHUNK_BYTES = 1 << 21  # score block per chunk of the batch: stays in L2 between its passes (1 MiB: -10%
# at 1 thread against no chunks; larger keeps the op count, and the 2-thread barriers, down)


class _Attention(torch.autograd.Function):
    """``_Attention.apply(q, k, v, neg, H) -> softmax(q k^T + neg) v`` for ``q [B, Lq, d]``,
    ``k, v [B, Lk, d]`` (batch ``b = (example, head)``, ``H`` heads innermost) and an additive
    mask ``neg`` (0 or -inf), ``[Lq, Lk]`` for all or ``[B / H, Lq, Lk]`` per example; ``q``
    comes pre-scaled by ``1 / sqrt(d_head)``.

    Batched GEMMs and one softmax pass, over chunks of the batch whose ``[chunk, Lq, Lk]`` scores
    stay in cache, or for the causal mask over ``_query_blocks`` (block ``r`` sees keys
    ``[0, r.stop)``: with 4 blocks the scores cover 62% of the square); the backward reuses
    the saved pattern ``p``: ``dv = p^T dz``, ``ds = p * (dz v^T - rowsum(p * dz v^T))``,
    ``dq = ds k``, ``dk = ds^T q``. Measured on the
    2-core CPU, faster than ``scaled_dot_product_attention`` for heads of 12-32 dims.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, neg: Tensor, H: int):
        B, Lq, Lk = q.shape[0], q.shape[1], k.shape[1]
        ctx.blocks = _query_blocks(B, Lq, q.element_size()) if neg.dim() == 2 else None
        if ctx.blocks is not None:  # causal: query block r sees keys [0, r.stop) only
            saved, zs = [], []
            for r in ctx.blocks:
                qb, kb, vb = q[:, r].contiguous(), k[:, :r.stop].contiguous(), v[:, :r.stop].contiguous()
                p = torch.softmax(torch.baddbmm(neg[r, :r.stop], qb, kb.transpose(1, 2)), -1)
                zs.append(torch.bmm(p, vb))
                saved += [qb, kb, vb, p]
            ctx.save_for_backward(*saved)
            return torch.cat(zs, 1)
        step = H * max(1, _CHUNK_BYTES // (H * Lq * Lk * q.element_size()))
        p, z = q.new_empty(B, Lq, Lk), q.new_empty(B, Lq, v.shape[2])
        for i in range(0, B, step):
            c = slice(i, i + step)
            if neg.dim() == 2:
                s = torch.baddbmm(neg, q[c], k[c].transpose(1, 2))
            else:  # one mask per example, shared by its H heads
                s = torch.bmm(q[c], k[c].transpose(1, 2))
                s.view(-1, H, Lq, Lk).add_(neg[i // H:(i + step) // H].unsqueeze(1))
            torch.softmax(s, -1, out=p[c])
            torch.bmm(p[c], v[c], out=z[c])
        ctx.save_for_backward(q, k, v, p)
        ctx.step = step
        return z

    @staticmethod
    def backward(ctx, dz: Tensor):
        dz = dz.contiguous()
        if ctx.blocks is not None:
            saved = ctx.saved_tensors
            dqs, dk, dv = [], None, None
            for i in reversed(range(len(ctx.blocks))):  # the last block sees every key
                r, (qb, kb, vb, p) = ctx.blocks[i], saved[4 * i:4 * i + 4]
                dzb = dz[:, r].contiguous()
                ds = torch._softmax_backward_data(torch.bmm(dzb, vb.transpose(1, 2)), p, -1, p.dtype)
                dqs.append(torch.bmm(ds, kb))
                dkb, dvb = torch.bmm(ds.transpose(1, 2), qb), torch.bmm(p.transpose(1, 2), dzb)
                if dk is None:
                    dk, dv = dkb, dvb
                else:
                    dk[:, :r.stop].add_(dkb)
                    dv[:, :r.stop].add_(dvb)
            return torch.cat(dqs[::-1], 1), dk, dv, None, None
        q, k, v, p = ctx.saved_tensors
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        for i in range(0, q.shape[0], ctx.step):
            c = slice(i, i + ctx.step)
            ds = torch._softmax_backward_data(torch.bmm(dz[c], v[c].transpose(1, 2)), p[c], -1, p.dtype)
            torch.bmm(ds, k[c], out=dq[c])
            torch.bmm(ds.transpose(1, 2), q[c], out=dk[c])
            torch.bmm(p[c].transpose(1, 2), dz[c], out=dv[c])
        return dq, dk, dv, None, None


_MAX_QUERY_BLOCKS = 4


def _query_blocks(B: int, L: int, nbytes: int) -> list[slice] | None:
    """Query blocks of a causal ``[B, L, L]`` score tensor larger than ``_CHUNK_BYTES`` (None for
    one block): with ``n`` blocks the scores cover ``(n + 1) / 2n`` of the square."""
    n = min(_MAX_QUERY_BLOCKS, B * L * L * nbytes // _CHUNK_BYTES, L)
    if n < 2:
        return None
    size = -(-L // n)
    return [slice(a, min(a + size, L)) for a in range(0, L, size)]


class _SplitHeads(torch.autograd.Function):
    """``_SplitHeads.apply(x, N, n, H)``: ``x [E, N*L, n*H*d]`` (``n`` tensors, heads
    concatenated) as ``n`` tensors ``[E*N*H, L, d]``; one strided pass each way (no stack)."""

    @staticmethod
    def forward(ctx, x: Tensor, N: int, n: int, H: int):
        E, NL, C = x.shape
        L, d = NL // N, C // (n * H)
        out = x.new_empty(n, E, N, H, L, d)
        out.copy_(x.view(E, N, L, n, H, d).permute(3, 0, 1, 4, 2, 5))
        ctx.dims = (E, N, L, n, H, d)
        return tuple(out[i].view(E * N * H, L, d) for i in range(n))

    @staticmethod
    def backward(ctx, *grads: Tensor):
        E, N, L, n, H, d = ctx.dims
        g = grads[0].new_empty(E, N, L, n, H, d)
        for i, gi in enumerate(grads):
            dst = g[:, :, :, i]  # (E, N, L, H, d)
            if gi is None:
                dst.zero_()
            else:
                dst.copy_(gi.view(E, N, H, L, d).transpose(2, 3))
        return g.view(E, N * L, -1), None, None, None


def split_heads(t: Float[Tensor, "E NL C"], N: int, n: int, H: int) -> tuple[Tensor, ...]:
    """``[E, N*L, n*H*d]`` (``n`` tensors, heads concatenated) as ``n`` tensors ``[E*N*H, L, d]``."""
    return _SplitHeads.apply(t, N, n, H)


def merge_heads(z: Float[Tensor, "ENH L d"], E: int, H: int) -> Float[Tensor, "E NL Hd"]:
    """``[E*N*H, L, d]`` as ``[E, N*L, H*d]`` (heads concatenated, as ``W_O.flatten(1, 2)`` reads)."""
    ENH, L, d = z.shape
    N = ENH // (E * H)
    return z.view(E, N, H, L, d).transpose(2, 3).reshape(E, N * L, H * d)


def attend(q: Tensor, k: Tensor, v: Tensor, neg: Tensor, E: int, H: int) -> Float[Tensor, "E NL Hd"]:
    """Head outputs ``z`` (heads concatenated) from per-head ``q [E*N*H, Lq, d]`` (scaled by
    ``1 / sqrt(d_head)``), ``k, v [E*N*H, Lk, d]``."""
    return merge_heads(_Attention.apply(q, k, v, neg, H), E, H)




def slot_mask(positions: Int[Tensor, "E N K"], P: int, dtype: torch.dtype) -> Tensor:
    """Additive mask ``[E*N, K, P]``: -inf where key ``j > positions[e, n, k]``."""
    hide = torch.arange(P, device=positions.device) > positions.flatten(0, 1).unsqueeze(-1)
    return torch.zeros(hide.shape, dtype=dtype, device=positions.device).masked_fill_(hide, float("-inf"))


def causal_mask(P: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Additive causal mask ``[P, P]``: -inf above the diagonal."""
    return torch.full((P, P), float("-inf"), dtype=dtype, device=device).triu_(1)
