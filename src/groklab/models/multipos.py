"""Fast logits and loss at the loss slots of any LayerNorm-free model, for an ensemble.

Parameters come as a dict ``name -> [E, *shape]`` (TransformerLens names, leading member axis);
a ``tasks.Batch`` gives ``tokens [E, N, P]`` and the loss slots ``positions [E, N, K]``. The
result equals ``HookedTransformer.forward(tokens, positions)`` per member (exact algebra: only
reassociated sums and skipped work), with these savings:

* **Only the slots leave the last layer.** Every layer but the last runs at all ``P`` positions
  (the last layer's keys and values need them). In the last layer, queries, the MLP and the
  unembed run only at the ``K`` slots; the causal mask of slot ``k`` is ``key <= positions[k]``.
* **Rows past the last slot are dead.** Before the last layer, a position after an example's last
  slot feeds no slot (the last layer's slots see keys up to themselves only), so the fused kernel
  gives its query no keys (``lim`` 0: ``z = 0``, no gradient, no work); the slots' logits are
  unchanged (induction: 7 of 85 rows on average, the costliest of the causal triangle; step 1.04-1.05x).
* **Layer 0 is a table.** Its input ``x_0[j] = W_E[t_j] + W_pos[j]``, so for any weight ``W``
  ``x_0[j] W = (W_E W)[t_j] + (W_pos W)[j]``: queries, keys and values of layer 0 are two small
  products and a gather (no per-example product).
* **The one-layer readout folds.** With one layer (no LayerNorm) everything the slot feeds
  linearly is a product with ``W_cat = [W_in | W_U]``::

      resid_mid W_cat = x_0 W_cat + z (W_O W_cat) + b_O W_cat              (1)
      logits = resid_mid W_U + act(resid_mid W_in + b_in) (W_out W_U) + b_out W_U + b_U

  where ``x_0 W_cat`` is again a table and ``z = [H * d_head]`` the concatenated head outputs,
  so the ``d_model``-wide residual, ``W_O`` and ``W_out`` never meet an example.
* **A 2-layer attention-only model's layer 1 folds** (with the kernel): its keys and values are::

      x_1 W_KV + b_KV = x_0 (c W_KV) + z_0 (W_O W_KV) + (b_O W_KV + b_KV)          (2)

  a table part (token and position tables, as layer 0's) and one product of layer 0's head
  outputs ``z_0``; the kernel adds the three as it loads each row and scatters the tables'
  gradient itself (``attn_kernel.fused_attention_folded``), so ``x_1`` is formed at the slots
  only (induction step 1.03x; ``benchmarks/bench_switch.py induction multipos.FOLD_KV``).
* Attention takes the fused kernel of ``attn_kernel`` where it applies (CPU, heads of at most
  16 dims, the kernel built; ``_kernel_ok``): one pass per example and head straight from the
  packed ``[.., 3 H d]`` projections, no head split or merge, no ``[L, L]`` pattern stored, the
  keys of each query a prefix (``lim``: the causal mask, or ``key <= positions[k]`` at the slots).
  Otherwise heads are split out for the batched-GEMM attention of ``gemm_attention`` (one
  autograd node for all members, examples and heads). Either way the score scale is folded into
  ``W_Q``. The fused kernel beats the batched GEMMs by ~1.4x per induction layer 0 (fwd +
  bwd). With the kernel, layer 0's causal attention (more than one layer) reads its q | k | v
  straight from the token and position tables (``attn_kernel.fused_attention_tables``), so the
  gathered rows never exist; elsewhere layer 0's position rows are added in the gather's pass
  (``_Gather``; its backward is a scatter by ``index_add_``). The log-softmax NLL (in the loss
  dtype; a float64 loss by the cancellation-free form of ``softmax_ce``, in the logits' dtype)
  is one autograd node too.

``doubled_residual`` (attention-only) is ``x_{l+1} = 2 x_l + attn_l(x_l)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from ..config import Config
from . import attn_kernel
from .gemm_attention import attend as _attend
from .gemm_attention import causal_mask, slot_mask, split_heads
from .softmax_ce import softmax_ce
from .transformer import activation

__all__ = ["has_multipos_path", "multipos_logits", "multipos_loss"]


def has_multipos_path(cfg: Config) -> bool:
    """True for the models ``multipos_logits`` handles: any without LayerNorm, with softmax
    attention (``model.attn_coeff`` 1; other rates take the generic vmapped forward)."""
    return not cfg.model.use_ln and cfg.model.attn_coeff == 1.0


def _member_rows(idx: Int[Tensor, "E M"], R: int) -> Int[Tensor, "E M"]:
    """Row indices ``idx[e]`` into member ``e``'s table of ``R`` rows, as rows of all members'
    tables stacked ``[E * R, ...]`` (``idx[e] + e R``)."""
    E = idx.shape[0]
    return idx if E == 1 else idx + torch.arange(0, E * R, R, device=idx.device).unsqueeze(1)


class _Gather(torch.autograd.Function):
    """``_Gather.apply(table [E, R, C], idx [E, M], TP)``: ``table[e, idx[e, m]]``, plus, when
    ``TP [E, P, C]`` is given, ``TP[e, m mod P]`` (``M = N P``: the position rows of every example).
    One gather and one in-place add; the backward is a scatter-add by ``index_add_`` (2.6x faster
    than ``embedding``'s dense backward for [10880, 144] rows on the 2-core CPU) and a sum over the
    examples, with no copies of the rows' gradient."""

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor, TP: Tensor | None):
        E, R, C = table.shape
        flat = _member_rows(idx, R)
        out = F.embedding(flat, table.reshape(E * R, C))
        if TP is not None:
            out.view(E, -1, TP.shape[1], C).add_(TP.unsqueeze(1))
        ctx.save_for_backward(flat)
        ctx.dims = (E, R, C, None if TP is None else TP.shape[1])
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        (flat,) = ctx.saved_tensors
        E, R, C, P = ctx.dims
        g = g.contiguous()
        dT = dTP = None
        if ctx.needs_input_grad[0]:
            dT = g.new_zeros(E * R, C).index_add_(0, flat.reshape(-1), g.view(-1, C)).view(E, R, C)
        if P is not None and ctx.needs_input_grad[2]:
            dTP = g.view(E, -1, P, C).sum(1)
        return dT, None, dTP


def _rows(table: Float[Tensor, "E R C"], idx: Int[Tensor, "E M"]) -> Float[Tensor, "E M C"]:
    """``table[e, idx[e, m]]`` for every member (one gather; its backward is a scatter-add)."""
    return _Gather.apply(table, idx, None)


def _heads(W: Tensor) -> Tensor:
    """``W_Q``-style ``[E, H, D, d_head]`` as ``[E, D, H * d_head]`` (heads concatenated)."""
    E, H, D, Dh = W.shape
    return W.permute(0, 2, 1, 3).reshape(E, D, H * Dh)


def _proj(params: dict[str, Tensor], layer: int, names: str) -> tuple[Tensor, Tensor | None]:
    """``[W_<a> | W_<b> ...]`` of ``blocks.{layer}.attn`` as ``[E, D, len(names) * H * d_head]`` and
    the matching biases ``[E, 1, ...]`` (None without attention biases); ``W_Q`` and ``b_Q``
    come times ``1 / sqrt(d_head)`` (the score scale, on the small weights)."""
    a = f"blocks.{layer}.attn."
    s = params[a + "W_Q"].shape[-1] ** -0.5
    W = torch.cat([_heads(params[a + "W_" + n]) * (s if n == "Q" else 1.0) for n in names], 2)
    if a + "b_Q" not in params:
        return W, None
    b = [params[a + "b_" + n].flatten(1) * (s if n == "Q" else 1.0) for n in names]
    return W, torch.cat(b, 1).unsqueeze(1)


def _bias(params: dict[str, Tensor], name: str) -> Tensor | None:
    """A ``[E, D]`` bias as ``[E, 1, D]`` (None when the model has none)."""
    return params[name].unsqueeze(1) if name in params else None


def _add(x: Tensor, b: Tensor | None) -> Tensor:
    return x if b is None else x + b


FOLD_KV = True  # False: a 2-layer attention-only model forms x_1 at every position for layer 1's k | v
USE_KERNEL = True  # False: always the batched-GEMM attention (tests compare the two)


def _kernel_ok(x: Tensor, d_head: int) -> bool:
    """Whether attention takes the fused kernel (``attn_kernel``): CPU float32/float64 heads of at
    most 16 dims, the kernel built, and ``USE_KERNEL``."""
    return (USE_KERNEL and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and d_head <= 16 and attn_kernel.available())


def _fused(xq: Tensor, xkv: Tensor | None, lim: Tensor, E: int, N: int, H: int) -> Float[Tensor, "E NL Hd"]:
    """Head outputs (heads concatenated) by the fused kernel from packed projections ``xq [E, N*Lq,
    C]`` (q | k | v when ``xkv`` is None, else q) and ``xkv [E, N*Lk, 2 H d]``; ``lim [E*N, Lq]``."""
    z = attn_kernel.fused_attention(xq.view(E * N, -1, xq.shape[-1]),
                                    None if xkv is None else xkv.view(E * N, -1, xkv.shape[-1]), lim, H)
    return z.view(E, -1, z.shape[-1])


def _attention(params: dict[str, Tensor], positions: Int[Tensor, "E N K"], P: int):
    """``(attend, first, folded)``. ``attend(xq, xkv) -> z [E, N*Lq, H*d]`` from packed projections (``xq
    [E, N*P, 3 H d]`` q | k | v under the causal mask when ``xkv`` is None; else queries at the
    ``K`` slots, ``xq [E, N*K, H d]``, and ``xkv [E, N*P, 2 H d]``, slot ``k`` seeing keys ``<=
    positions[k]``): by the fused kernel where ``_kernel_ok``, else by heads split out for the
    batched-GEMM ``_attend``. ``first(emb, W, b)``: layer 0's causal attention, its projections
    ``x_0 W + b`` taken by the kernel straight from ``emb``'s token and position tables where it
    can (``attn_kernel.fused_attention_tables``: the [E, N*P, 3 H d] gather is never stored), else
    ``attend(emb.all(W, b), None)``. ``folded(xq, D, tables)`` (None without the kernel): the last
    layer's slot queries on keys and values ``D + TE[tok] + TP[j]`` (``tables = (TE, TP, tok)`` as
    ``_Embed.tables`` gives them; ``attn_kernel.fused_attention_folded``)."""
    E, N, K = positions.shape
    W_Q = params["blocks.0.attn.W_Q"]
    H = W_Q.shape[1]
    if _kernel_ok(W_Q, W_Q.shape[-1]):  # keys each query sees: a prefix
        slot_lim = (positions + 1).to(torch.int32).reshape(E * N, K)
        # a layer before the last: positions past an example's last slot feed no slot (the last
        # layer's keys stop at its slots), so they get lim 0 (no work, z = 0); the rest causal
        j = torch.arange(1, P + 1, dtype=torch.int32, device=positions.device)
        live = positions.reshape(E * N, K).amax(1, keepdim=True) + 1
        causal_lim = torch.where(j <= live, j, 0)  # int32, as j

        def fused(xq: Tensor, xkv: Tensor | None) -> Tensor:
            return _fused(xq, xkv, causal_lim if xkv is None else slot_lim, E, N, H)

        def fused_first(emb: _Embed, W: Tensor, b: Tensor | None) -> Tensor:
            tables = emb.tables(W, b)
            if tables is None:
                return fused(emb.all(W, b), None)
            z = attn_kernel.fused_attention_tables(*tables, causal_lim.contiguous(), H, N)
            return z.view(E, -1, z.shape[-1])

        def fused_folded(xq: Tensor, D: Tensor, tables: tuple[Tensor, Tensor, Tensor]) -> Tensor:
            z = attn_kernel.fused_attention_folded(xq.view(E * N, K, -1), D.view(E * N, P, -1), *tables,
                                                   slot_lim, H, N)
            return z.view(E, -1, z.shape[-1])
        return fused, fused_first, fused_folded
    neg = slot_mask(positions, P, W_Q.dtype)

    def attend(xq: Tensor, xkv: Tensor | None) -> Tensor:
        if xkv is None:
            return _attend(*split_heads(xq, N, 3, H), causal_mask(P, xq.dtype, xq.device), E, H)
        return _attend(*split_heads(xq, N, 1, H), *split_heads(xkv, N, 2, H), neg, E, H)
    return attend, lambda emb, W, b: attend(emb.all(W, b), None), None


class _Embed:
    """Layer 0's input ``x_0[j] = W_E[t_j] + W_pos[j]`` seen through a weight ``W [E, D, C]``:
    ``x_0 W`` is a gather from ``(W_E W)[t] + (W_pos W)[j]``, or, when the used (position, token)
    pairs are fewer than the rows gathered, from one ``[n_ctx * d_vocab, C]`` table."""

    def __init__(self, params: dict[str, Tensor], tokens: Tensor, positions: Tensor):
        self.W_E, self.W_pos = params["embed.W_E"], params["pos_embed.W_pos"]
        E, N, P = tokens.shape
        self.E, self.N, self.P = E, N, P
        j = torch.arange(P, device=tokens.device).expand(E, N, P)
        self.all_idx = (tokens.reshape(E, N * P), j.reshape(E, N * P))
        self.slot_idx = (tokens.gather(2, positions).reshape(E, -1), positions.reshape(E, -1))

    def _rows(self, W: Tensor | None, b: Tensor | None, idx: tuple[Tensor, Tensor]) -> Tensor:
        """``x_0 W + b`` at the (token, position) pairs ``idx``."""
        tok, pos = idx
        V, P = self.W_E.shape[1], self.P
        if 2 * P * V <= tok.shape[1]:  # one (position, token) table, much smaller than the gather
            X = (self.W_pos[:, :P, None] + self.W_E[:, None]).flatten(1, 2)  # (E, P*V, D)
            return _rows(_add(X if W is None else torch.bmm(X, W), b), pos * V + tok)
        TE, TP = (self.W_E, self.W_pos[:, :P]) if W is None else (
            torch.bmm(self.W_E, W), torch.bmm(self.W_pos[:, :P], W))
        TP = _add(TP, b)
        if idx is self.all_idx:  # every position in order: broadcast the position rows
            return _Gather.apply(TE, tok, TP)
        return _rows(TE, tok) + _rows(TP, pos)

    def tables(self, W: Tensor, b: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(TE [E*V, C], TP [E*P, C], tok [E*N, P])`` with ``x_0 W + b`` at position ``j`` of
        example ``n`` of member ``e`` equal to ``TE[tok[e*N + n, j]] + TP[e*P + j]`` (``tok``
        carries the member offsets ``e*V``); None where ``_rows`` takes the one (position, token)
        table instead, or where the token table has more rows than the gather (its gradient, a
        table per chunk of examples, would then cost more than the scatter it replaces)."""
        tok, _ = self.all_idx
        E, N, P, V = self.E, self.N, self.P, self.W_E.shape[1]
        if 2 * P * V <= tok.shape[1] or V > N * P:
            return None
        TE, TP = torch.bmm(self.W_E, W), _add(torch.bmm(self.W_pos[:, :P], W), b)
        return TE.reshape(E * V, -1), TP.reshape(E * P, -1), _member_rows(tok, V).reshape(E * N, P).long()

    def all(self, W: Tensor | None = None, b: Tensor | None = None) -> Float[Tensor, "E NP C"]:
        """``x_0 W + b`` at every position (``x_0`` itself when ``W`` is None); ``b [E, 1, C]``."""
        return self._rows(W, b, self.all_idx)

    def slots(self, W: Tensor | None = None, b: Tensor | None = None) -> Float[Tensor, "E NK C"]:
        """``x_0 W + b`` at the loss slots (``x_0`` itself when ``W`` is None)."""
        return self._rows(W, b, self.slot_idx)


def multipos_logits(cfg: Config, params: dict[str, Tensor], tokens: Int[Tensor, "E N P"],
                    positions: Int[Tensor, "E N K"]) -> Float[Tensor, "E N K V"]:
    """Logits at the loss slots, ``[E, N, K, d_vocab_out]`` in the parameters' dtype.

    Equal up to rounding to ``HookedTransformer.forward(tokens[e], positions[e])`` of each
    member ``e`` (``generic_logits``) for any model with ``has_multipos_path(cfg)``: any number
    of layers, attention-only or not, relu/gelu/quadratic, optional attention and unembed
    biases (a missing bias counts as zero), ``doubled_residual``.
    """
    m = cfg.model
    E, N, P = tokens.shape
    K, L = positions.shape[-1], m.n_layers
    c = 2.0 if m.doubled_residual and m.attn_only else 1.0  # residual factor of each block
    emb = _Embed(params, tokens, positions)
    last = f"blocks.{L - 1}."
    attend, attend_first, attend_folded = _attention(params, positions, P)
    W_U, W_O = params["unembed.W_U"], params[last + "attn.W_O"].flatten(1, 2)  # (E, H*Dh, D)
    b_O = _bias(params, last + "attn.b_O")
    W_in = None if m.attn_only else params[last + "mlp.W_in"]
    b_U = _bias(params, "unembed.b_U")
    if not m.attn_only:  # b_out reaches the logits as b_out W_U
        b_out = torch.bmm(params[last + "mlp.b_out"].unsqueeze(1), W_U)
        b_U = b_out if b_U is None else b_U + b_out
    if L == 1:  # identity (1): x_0 at the slots and the readout are tables, biases ride on them
        z = attend(emb.slots(*_proj(params, 0, "Q")), emb.all(*_proj(params, 0, "KV")))  # (E, N*K, H*Dh)

        def read(W: Tensor, b: Tensor | None) -> Tensor:  # (c x_0 + z W_O + b_O) W + b at the slots
            b = b if b_O is None else _add(torch.bmm(b_O, W), b)
            return torch.baddbmm(emb.slots(c * W, b), z, torch.bmm(W_O, W))

        direct = read(W_U, b_U)
        pre = None if W_in is None else read(W_in, _bias(params, last + "mlp.b_in"))
    else:
        slot = positions.reshape(E, N * K) + P * torch.arange(N, device=tokens.device).repeat_interleave(K)
        (W_q, b_q), (W_kv, b_kv) = _proj(params, L - 1, "Q"), _proj(params, L - 1, "KV")
        kv_tables = None
        if FOLD_KV and attend_folded is not None and L == 2 and m.attn_only:
            W_O0, b_O0 = params["blocks.0.attn.W_O"].flatten(1, 2), _bias(params, "blocks.0.attn.b_O")
            kv_tables = emb.tables(c * W_kv, b_kv if b_O0 is None else _add(torch.bmm(b_O0, W_kv), b_kv))
        if kv_tables is not None:  # identity (2): x_1 is formed at the slots only
            z0 = attend_first(emb, *_proj(params, 0, "QKV"))  # (E, N*P, H*Dh)
            x_s = _add(torch.baddbmm(emb.slots(), _rows(z0, slot), W_O0, beta=c), b_O0)  # (E, N*K, D)
            D = torch.bmm(z0, torch.bmm(W_O0, W_kv))  # (E, N*P, 2*H*Dh): the dense part of k | v
            z = attend_folded(_add(torch.bmm(x_s, W_q), b_q), D, kv_tables)
        else:
            x = emb.all()  # (E, N*P, D)
            for layer in range(L - 1):
                W, b = _proj(params, layer, "QKV")
                z = attend_first(emb, W, b) if layer == 0 else attend(_add(torch.bmm(x, W), b), None)
                x = _block_out(m, params, layer, x, z, c)
            x_s = _rows(x, slot)  # (E, N*K, D)
            z = attend(_add(torch.bmm(x_s, W_q), b_q), _add(torch.bmm(x, W_kv), b_kv))
        mid = _add(torch.baddbmm(x_s, z, W_O, beta=c), b_O)
        direct = _add(torch.bmm(mid, W_U), b_U)
        pre = None if W_in is None else _add(torch.bmm(mid, W_in), _bias(params, last + "mlp.b_in"))
    if pre is not None:
        W_L = torch.bmm(params[last + "mlp.W_out"], W_U)  # (E, d_mlp, V)
        direct = torch.baddbmm(direct, activation(m.act_fn, pre), W_L)
    return direct.view(E, N, K, -1)


def _block_out(m, params: dict[str, Tensor], layer: int, x: Tensor, z: Tensor, c: float) -> Tensor:
    """The residual after block ``layer`` at every position, from its input ``x`` and head
    outputs ``z``: ``c x + z W_O + b_O``, then ``+ act(. W_in + b_in) W_out + b_out`` with an MLP."""
    a = f"blocks.{layer}."
    x = _add(torch.baddbmm(x, z, params[a + "attn.W_O"].flatten(1, 2), beta=c), _bias(params, a + "attn.b_O"))
    if m.attn_only:
        return x
    p = a + "mlp."
    post = activation(m.act_fn, torch.baddbmm(params[p + "b_in"].unsqueeze(1), x, params[p + "W_in"]))
    return torch.baddbmm(x + params[p + "b_out"].unsqueeze(1), post, params[p + "W_out"])


class _SlotNLL(torch.autograd.Function):
    """``_SlotNLL.apply(logits [E, N, K, V], labels [E, N, K], dtype) -> loss [E]``: the mean
    over slots of ``-log_softmax(logits.to(dtype))[label]``; backward ``(softmax - onehot) / (N K)``,
    computed in the forward (``softmax_ce.softmax_ce``: a float64 ``dtype`` takes the
    cancellation-free form in the logits' dtype, the float64 log-softmax's precision without its
    casts and float64 passes)."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, dtype: torch.dtype):
        E, N, K, V = logits.shape
        lg, lab = logits.reshape(E, N * K, V), labels.reshape(E, N * K, 1)
        loss, g = softmax_ce(lg, lab, N * K, dtype)
        ctx.save_for_backward(g)
        ctx.shape = logits.shape
        return loss.to(dtype).mean(1)

    @staticmethod
    def backward(ctx, d_loss: Tensor):
        (g,) = ctx.saved_tensors
        return (g * d_loss.to(g.dtype).view(-1, 1, 1)).view(ctx.shape), None, None


def multipos_loss(cfg: Config, params: dict[str, Tensor], tokens: Int[Tensor, "E N P"],
                  positions: Int[Tensor, "E N K"], labels: Int[Tensor, "E N K"], dtype: torch.dtype
                  ) -> tuple[Float[Tensor, " E"], Float[Tensor, "E N K V"]]:
    """Per-member mean NLL over all ``N * K`` slots (log-softmax in ``dtype``), and the logits
    (detached): the numbers of ``slot_nll(multipos_logits(...), labels, dtype).mean((1, 2))``."""
    logits = multipos_logits(cfg, params, tokens, positions)
    return _SlotNLL.apply(logits, labels, dtype), logits.detach()
