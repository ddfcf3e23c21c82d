"""The fused attention kernel (``models.attn_kernel``) against attention written from its
definition: ``softmax(q k^T, keys j < lim[b, i]) v`` per example and head, in float64 (outputs
and the gradients of all packed inputs) and float32, for causal and arbitrary prefix limits."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from groklab.models import attn_kernel, multipos

pytestmark = pytest.mark.skipif(not attn_kernel.available(),
                                reason="the fused attention kernel could not be built here (no compiler?)")


def _naive(q, k, v, lim):
    """``[B, Lq, H*d]`` from ``q [B, Lq, H, d]``, ``k, v [B, Lk, H, d]``: a dense masked softmax."""
    s = torch.einsum("bihc,bjhc->bhij", q, k)
    hide = torch.arange(k.shape[1]) >= lim.long().unsqueeze(-1)  # [B, Lq, Lk]
    p = torch.softmax(s.masked_fill(hide.unsqueeze(1), float("-inf")), -1)
    return torch.einsum("bhij,bjhc->bihc", p, v).flatten(2)


def _inputs(B, Lq, Lk, H, d, packed, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    if packed:
        xq = torch.randn(B, Lq, 3 * H * d, generator=g, dtype=dtype, requires_grad=True)
        return xq, None
    xq = torch.randn(B, Lq, H * d, generator=g, dtype=dtype, requires_grad=True)
    xkv = torch.randn(B, Lk, 2 * H * d, generator=g, dtype=dtype, requires_grad=True)
    return xq, xkv


def _split(xq, xkv, H):
    B, Lq, C = xq.shape
    if xkv is None:
        q, k, v = xq.view(B, Lq, 3, H, -1).unbind(2)
    else:
        q = xq.view(B, Lq, H, -1)
        k, v = xkv.view(B, xkv.shape[1], 2, H, -1).unbind(2)
    return q, k, v


@pytest.mark.parametrize("B,Lq,Lk,H,d,packed,causal", [
    (5, 17, 17, 3, 5, True, True),     # causal, packed q | k | v
    (4, 85, 85, 4, 12, True, True),    # the induction preset's layer 0
    (3, 30, 85, 4, 12, False, False),  # its last layer: loss slots, keys up to each slot
    (6, 9, 21, 2, 16, False, False),   # the widest head the kernel takes
    (3, 33, 33, 1, 1, True, False),    # one-dimensional head, random prefixes
    (2, 1, 7, 2, 3, False, False),     # one query
])
def test_matches_definition_float64(B, Lq, Lk, H, d, packed, causal):
    xq, xkv = _inputs(B, Lq, Lk, H, d, packed, torch.float64)
    g = torch.Generator().manual_seed(1)
    if causal:
        lim = torch.arange(1, Lq + 1, dtype=torch.int32).expand(B, Lq).contiguous()
    else:  # any prefix per query, not monotone in the query
        lim = torch.randint(1, Lk + 1, (B, Lq), generator=g, dtype=torch.int32)
    z = attn_kernel.fused_attention(xq, xkv, lim, H)
    zr = _naive(*_split(xq, xkv, H), lim)
    assert_close(z, zr, rtol=1e-12, atol=1e-12)
    dz = torch.randn(z.shape, generator=g, dtype=z.dtype)
    ins = [xq] if xkv is None else [xq, xkv]
    got = torch.autograd.grad(z, ins, dz)
    want = torch.autograd.grad(zr, ins, dz)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("Lq,Lk,H,d,causal", [
    (30, 85, 4, 12, False),  # the induction preset's last layer
    (85, 85, 4, 12, True),   # its layer 0
    (23, 23, 2, 8, True),    # heads of exactly one 8-lane block; keys not a multiple of 8
    (13, 37, 3, 16, False),  # two full blocks
    (9, 9, 1, 5, True),      # part of a block
])
def test_float32_close_to_float64(Lq, Lk, H, d, causal):
    """float32 (its own exp and AVX2 transposes, vectorised) agrees with the float64 definition
    to float32 rounding."""
    xq, xkv = _inputs(8, Lq, Lk, H, d, False, torch.float64, seed=3)
    if causal:
        lim = torch.arange(1, Lq + 1, dtype=torch.int32).expand(8, Lq).contiguous()
    else:
        lim = torch.randint(1, Lk + 1, (8, Lq), generator=torch.Generator().manual_seed(2), dtype=torch.int32)
    xq32 = (xq.detach() * 3).float().requires_grad_()  # sharper patterns: scores of several units
    xkv32 = xkv.detach().float().requires_grad_()
    z32 = attn_kernel.fused_attention(xq32, xkv32, lim, H)
    zr = _naive(*_split(xq32.double(), xkv32.double(), H), lim)
    assert_close(z32.double(), zr, rtol=1e-4, atol=1e-5)  # scores of ~30: float32 rounding x 30
    dz = torch.randn(z32.shape, generator=torch.Generator().manual_seed(4))
    got = torch.autograd.grad(z32, [xq32, xkv32], dz)
    xq64, xkv64 = xq32.detach().double().requires_grad_(), xkv32.detach().double().requires_grad_()
    want = torch.autograd.grad(_naive(*_split(xq64, xkv64, H), lim), [xq64, xkv64], dz.double())
    for a, b in zip(got, want, strict=True):  # sums of up to 85 keys' terms of size ~1
        assert_close(a.double(), b, rtol=1e-4, atol=5e-5)


@pytest.mark.parametrize("dtype,d", [(torch.float64, 12), (torch.float32, 12), (torch.float32, 8),
                                     (torch.float32, 16), (torch.float32, 5)])
def test_tables_equal_the_gathered_rows(dtype, d):
    """``fused_attention_tables`` (q | k | v = TE[tok] + TP[position], added as the kernel loads
    them) against the definition on the gathered rows, for 2 members of 3 examples: the outputs
    and the gradients of both tables (the gather's scatter-add, done in the kernel); heads of 8,
    12 and 16 dims take whole-vector row adds, others the plain loop."""
    E, N, P, V, H = 2, 3, 19, 7, 2
    g = torch.Generator().manual_seed(5)
    TE = torch.randn(E * V, 3 * H * d, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    TP = torch.randn(E * P, 3 * H * d, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    tok = (torch.randint(0, V, (E, N, P), generator=g) + V * torch.arange(E).view(E, 1, 1)).reshape(E * N, P)
    lim = torch.arange(1, P + 1, dtype=torch.int32).expand(E * N, P).contiguous()
    z = attn_kernel.fused_attention_tables(TE, TP, tok, lim, H, N)
    T64, P64 = TE.detach().double().requires_grad_(), TP.detach().double().requires_grad_()
    x = T64[tok] + P64.view(E, P, -1).repeat_interleave(N, 0)  # the rows the kernel never stores
    zr = _naive(*_split(x, None, H), lim)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    assert_close(z.double(), zr, **tol)
    dz = torch.randn(z.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(z, [TE, TP], dz.to(dtype))
    want = torch.autograd.grad(zr, [T64, P64], dz)
    for a, b in zip(got, want, strict=True):
        assert_close(a.double(), b, **(tol if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)))


@pytest.mark.parametrize("dtype,d", [(torch.float64, 12), (torch.float32, 12), (torch.float32, 5)])
def test_folded_equals_the_summed_rows(dtype, d):
    """``fused_attention_folded`` (slot queries on k | v = D + TE[tok] + TP[position], added as the
    kernel loads them) against the definition on the summed rows, for 2 members of 3 examples with
    prefix limits of every length (0 included): the outputs and the gradients of the queries, the
    dense part and both tables (their scatter done in the kernel)."""
    E, N, Lq, P, V, H = 2, 3, 6, 17, 7, 2
    g = torch.Generator().manual_seed(6)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    xq, D = rand(E * N, Lq, H * d), rand(E * N, P, 2 * H * d)
    TE, TP = rand(E * V, 2 * H * d), rand(E * P, 2 * H * d)
    tok = (torch.randint(0, V, (E, N, P), generator=g) + V * torch.arange(E).view(E, 1, 1)).reshape(E * N, P)
    lim = torch.randint(0, P + 1, (E * N, Lq), generator=g).int()
    lim[0, -1] = 0  # a trailing query with no keys
    z = attn_kernel.fused_attention_folded(xq, D, TE, TP, tok, lim, H, N)
    leaves = [t.detach().double().requires_grad_() for t in (xq, D, TE, TP)]
    q64, D64, T64, P64 = leaves
    xkv = D64 + T64[tok] + P64.view(E, P, -1).repeat_interleave(N, 0)  # the rows the kernel never stores
    zr = _naive_dead(*_split(q64, xkv, H), lim)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    assert_close(z.double(), zr, **tol)
    dz = torch.randn(z.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(z, [xq, D, TE, TP], dz.to(dtype))
    want = torch.autograd.grad(zr, leaves, dz)
    for a, b in zip(got, want, strict=True):
        assert_close(a.double(), b, **(tol if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)))


def test_folded_bad_input_raises():
    xq, D = torch.zeros(2, 3, 24), torch.zeros(2, 5, 48)
    TE, TP = torch.zeros(7, 48), torch.zeros(5, 48)
    tok, lim = torch.zeros(2, 5, dtype=torch.int64), torch.ones(2, 3, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="TP must have"):
        attn_kernel.fused_attention_folded(xq, D, TE, TP, tok, lim, 2, 1)
    with pytest.raises(RuntimeError, match="2 H d columns"):
        attn_kernel.fused_attention_folded(xq, D, TE[:, :36], TP, tok, lim, 2, 2)
    with pytest.raises(RuntimeError, match="must index rows of TE"):
        attn_kernel.fused_attention_folded(xq, D, TE, TP, tok + 7, lim, 2, 2)


def _dead_lim(B, L, g):
    """Causal limits with each example's rows past a random live count set to 0 (as
    ``models.multipos`` gives the positions past an example's last loss slot), and one interior
    row of the first example set to 0 too."""
    lim = torch.arange(1, L + 1, dtype=torch.int32).expand(B, L).clone()
    live = torch.randint(1, L + 1, (B,), generator=g)
    live[0] = L
    lim[torch.arange(L) >= live.unsqueeze(1)] = 0
    lim[0, L // 2] = 0
    return lim


def _naive_dead(q, k, v, lim):
    """``_naive`` with the rows of ``lim`` 0 (no keys) giving ``z = 0``."""
    return _naive(q, k, v, lim.clamp(min=1)) * (lim > 0).unsqueeze(-1).to(q.dtype)


@pytest.mark.parametrize("dtype,d", [(torch.float64, 12), (torch.float32, 12), (torch.float32, 5)])
def test_queries_without_keys_give_zero(dtype, d):
    """A query of ``lim`` 0 gives ``z = 0`` and passes no gradient, both in the dense kernel and in
    the tables kernel; every other row (live counts that vary by example, so that buffers keep stale
    rows of the example before) matches the definition."""
    B, L, H = 9, 23, 2
    g = torch.Generator().manual_seed(7)
    lim = _dead_lim(B, L, g)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    xq = torch.randn(B, L, 3 * H * d, generator=g, dtype=torch.float64)
    x32 = xq.to(dtype).requires_grad_()
    x64 = xq.requires_grad_()
    z = attn_kernel.fused_attention(x32, None, lim, H)
    zr = _naive_dead(*_split(x64, None, H), lim)
    assert (z.view(B, L, -1)[lim == 0] == 0).all()
    assert_close(z.double(), zr, **tol)
    dz = torch.randn(z.shape, generator=g, dtype=torch.float64)
    (got,), (want,) = torch.autograd.grad(z, [x32], dz.to(dtype)), torch.autograd.grad(zr, [x64], dz)
    assert_close(got.double(), want, **tol)

    V = 5  # the same through the tables kernel (one member)
    TE = torch.randn(V, 3 * H * d, generator=g, dtype=torch.float64)
    TP = torch.randn(L, 3 * H * d, generator=g, dtype=torch.float64)
    tok = torch.randint(0, V, (B, L), generator=g)
    T, Pt = TE.to(dtype).requires_grad_(), TP.to(dtype).requires_grad_()
    T64, P64 = TE.requires_grad_(), TP.requires_grad_()
    z = attn_kernel.fused_attention_tables(T, Pt, tok, lim, H, B)
    zr = _naive_dead(*_split(T64[tok] + P64, None, H), lim)
    assert_close(z.double(), zr, **tol)
    got = torch.autograd.grad(z, [T, Pt], dz.to(dtype))
    want = torch.autograd.grad(zr, [T64, P64], dz)
    for a, b in zip(got, want, strict=True):
        assert_close(a.double(), b, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_saved_pattern_backward_equals_recomputed(dtype):
    """The backward from the forward's saved pattern (what autograd runs) against the backward that
    recomputes p from the scores and lse (the forward asked not to save): the same dq, dk, dv and
    table gradients, for non-monotone limits with dead rows (dense) and dead causal rows (tables);
    the pattern holds round_up(lim, 8) values per query and head."""
    m = attn_kernel._load()
    B, L, H, d = 7, 29, 2, 12
    g = torch.Generator().manual_seed(11)
    lim = torch.randint(0, L + 1, (B, L), generator=g, dtype=torch.int32)  # any prefix, some 0
    q, k, v = (torch.randn(B, L, H, d, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))
    z, lse, pat = m.forward(q, k, v, lim, True)
    z0, lse0, empty = m.forward(q, k, v, lim, False)
    assert pat.numel() == H * int(((lim.long() + 7) // 8 * 8).sum()) and empty.numel() == 0
    assert torch.equal(z, z0) and torch.equal(lse, lse0)
    dz = torch.randn(z.shape, generator=g, dtype=torch.float64).to(dtype)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    grads = [[torch.empty_like(q) for _ in range(3)] for _ in range(2)]
    m.backward(q, k, v, lim, z, lse, pat, dz, *grads[0])
    m.backward(q, k, v, lim, z, lse, empty, dz, *grads[1])
    for a, b in zip(*grads, strict=True):
        assert_close(a, b, **tol)
    with pytest.raises(RuntimeError, match="does not match lim"):
        m.backward(q, k, v, lim, z, lse, pat[:-1], dz, *grads[0])

    TE = torch.randn(5, 3 * H * d, generator=g, dtype=torch.float64).to(dtype)
    TP = torch.randn(L, 3 * H * d, generator=g, dtype=torch.float64).to(dtype)
    tok = torch.randint(0, 5, (B, L), generator=g)
    lim = _dead_lim(B, L, g)
    z, lse, pat = m.forward_tables(TE, TP, tok, lim, H, B, True)
    empty = m.forward_tables(TE, TP, tok, lim, H, B, False)[2]
    dz = torch.randn(z.shape, generator=g, dtype=torch.float64).to(dtype)
    got = m.backward_tables(TE, TP, tok, lim, z, lse, pat, dz, H, B)
    want = m.backward_tables(TE, TP, tok, lim, z, lse, empty, dz, H, B)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, **tol)


def test_tables_bad_input_raises():
    TE, TP = torch.zeros(7, 36), torch.zeros(5, 36)
    tok, lim = torch.zeros(2, 5, dtype=torch.int64), torch.ones(2, 5, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="TP must have"):
        attn_kernel.fused_attention_tables(TE, TP, tok, lim, 2, 1)  # 2 members' examples, 1 member's rows
    with pytest.raises(RuntimeError, match="int64"):
        attn_kernel.fused_attention_tables(TE, TP, tok.int(), lim, 2, 2)
    with pytest.raises(RuntimeError, match="must index rows of TE"):  # the kernel would read past TE
        attn_kernel.fused_attention_tables(TE, torch.zeros(10, 36), tok + 7, lim, 2, 2)


def test_exp_underflow_and_large_scores():
    """Scores hundreds apart: the far keys' weights underflow to 0, nothing is NaN."""
    xq, xkv = _inputs(2, 4, 6, 1, 2, False, torch.float32)
    with torch.no_grad():
        xq.mul_(40)
        xkv.mul_(40)
    lim = torch.full((2, 4), 6, dtype=torch.int32)
    z = attn_kernel.fused_attention(xq, xkv, lim, 1)
    zr = _naive(*_split(xq.double(), xkv.double(), 1), lim)
    assert torch.isfinite(z).all()
    assert_close(z.double(), zr, rtol=1e-5, atol=1e-4)


def test_bad_input_raises():
    xq, xkv = _inputs(2, 4, 6, 2, 3, False, torch.float64)
    lim = torch.full((2, 4), 6, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="lim"):
        attn_kernel.fused_attention(xq, xkv, lim[:, :2], 2)
    with pytest.raises(RuntimeError, match="int32"):
        attn_kernel.fused_attention(xq, xkv, lim.long(), 2)
    with pytest.raises(RuntimeError, match="dtypes"):
        attn_kernel.fused_attention(xq, xkv.float(), lim, 2)
    wide = torch.randn(2, 4, 3 * 17)
    with pytest.raises(RuntimeError, match="16"):
        attn_kernel.fused_attention(wide, None, torch.full((2, 4), 4, dtype=torch.int32), 1)


def test_build_name_follows_the_source_path_and_text(monkeypatch, tmp_path):
    """One build folder per checkout and kernel version: a copy of the source elsewhere, or an
    edited source, gets its own name (torch would otherwise rebuild in place at every switch)."""
    here = attn_kernel._build_name()
    assert here == attn_kernel._build_name() and here.startswith("groklab_attn_kernel_")
    copy = tmp_path / "_attn_kernel.cpp"
    copy.write_bytes(attn_kernel._SOURCE.read_bytes())
    monkeypatch.setattr(attn_kernel, "_SOURCE", copy)
    moved = attn_kernel._build_name()
    copy.write_bytes(copy.read_bytes() + b"// edited\n")
    assert len({here, moved, attn_kernel._build_name()}) == 3


def test_multipos_takes_the_kernel_only_where_it_applies(monkeypatch):
    x = torch.zeros(2, dtype=torch.float32)
    assert multipos._kernel_ok(x, 12)
    assert not multipos._kernel_ok(x, 32)  # wider heads keep the batched GEMMs
    assert not multipos._kernel_ok(x.half(), 12)
    monkeypatch.setattr(multipos, "USE_KERNEL", False)
    assert not multipos._kernel_ok(x, 12)
