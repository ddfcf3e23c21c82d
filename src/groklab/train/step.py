"""Last-position logits for an ensemble of models, and the loss.

Parameters come as a dict ``name -> [E, *shape]`` (TransformerLens names, leading member axis).
Only the final position (the '=' token) carries a loss, so the fast path computes nothing else.

Fast path (one layer, no LayerNorm). The first layer's input at position ``j`` is
``X_j[t] = W_E[t] + W_pos[j]``, which takes one value per token, so queries, keys and ``V W_O``
are per-token tables. The residual stream at the last position is then a *weighted sum of table
rows*::

    resid_mid = X_2[t_2] + b_O + sum_{j, h} pattern[h, j] * VO_j[t_j, h]     (1)

with 3 * n_heads + 1 terms. Everything the last position feeds linearly - the MLP input
``resid_mid W_in + b_in`` and the direct path ``resid_mid W_U`` - is therefore the same weighted
sum of rows of the small table ``T = rows @ [W_in | W_U]`` (one row per used (position, token,
head), ~900 rows for p=113 instead of one per example). ``F.embedding_bag`` forms that weighted
sum per example without materialising the gathered rows, and its backward is a scatter-add. The
attention scores of the last query against each key are read from a ``[tokens, tokens, heads]``
score table. Only two per-example GEMMs remain: ``post @ W_L`` with ``W_L = W_out W_U`` (forward)
and its two backward products. All of this is exact algebra (a reassociation of sums), tested
against ``HookedTransformer.forward(tokens)[:, -1]`` and a naive reference to float64 precision.
Models with more layers or LayerNorm use a vmapped generic forward.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from torch.func import functional_call, vmap

from ..config import Config
from ..models.transformer import HookedTransformer, activation


def has_fast_path(cfg: Config) -> bool:
    """True for the one-layer, LayerNorm-free models that ``fast_last_logits`` handles."""
    return cfg.model.n_layers == 1 and not cfg.model.use_ln


@dataclass(frozen=True)
class TokenPlan:
    """Gather indices for one fixed token batch, built once by ``plan_tokens``.

    Attributes:
        vocab: per position ``j``, the sorted token ids that occur there, ``[U_j]``.
        local: ``[n_ctx, E*N]`` index of each example's token in ``vocab[j]``.
        bag: ``[E*N, n_ctx*n_heads + 1]`` row of the table ``T`` (all members stacked) for each
            term of (1): ``(j, h)`` in row-major order, then the ``X_2`` row.
        rows: rows of ``T`` per member, ``n_heads * sum_j U_j + U_2``.
    """

    vocab: tuple[Tensor, ...]
    local: Tensor
    bag: Tensor
    rows: int
    n_heads: int
    E: int
    N: int
    crow: Tensor  # CSR row pointers of the [E*N, E*rows] bag matrix (K entries per example)
    t_crow: Tensor  # CSR of its transpose: row pointers, ...
    t_col: Tensor  # ... the example of each entry, ...
    t_order: Tensor  # ... and where each entry sits in the row-major ``bag[:, :k_sparse]``
    k_sparse: int  # bag columns whose gradient scatter goes through the CSR matmul
    dense_rows: Tensor | None  # [E, K - k_sparse, N] row (within the last-position block) of
    # each remaining entry; their scatter is a small dense GEMM (few tokens at the last position)


def plan_tokens(tokens: Int[Tensor, "E batch pos"], n_heads: int) -> TokenPlan:
    """Build the ``TokenPlan`` for ``tokens`` (one host sync; reuse it across steps)."""
    E, N, n_ctx = tokens.shape
    flat = tokens.reshape(E * N, n_ctx)
    vocab = tuple(torch.unique(flat[:, j]) for j in range(n_ctx))
    local = torch.stack([torch.searchsorted(vocab[j], flat[:, j].contiguous()) for j in range(n_ctx)])
    sizes = [len(v) for v in vocab]
    rows = n_heads * sum(sizes) + sizes[-1]
    member = torch.arange(E, device=tokens.device).repeat_interleave(N) * rows  # (E*N,)
    heads = torch.arange(n_heads, device=tokens.device)
    cols, off = [], 0
    for j in range(n_ctx):
        cols.append(member[:, None] + off + local[j][:, None] * n_heads + heads)  # (E*N, H)
        off += n_heads * sizes[j]
    cols.append((member + off + local[-1])[:, None])
    bag = torch.cat(cols, 1)  # (E*N, K); increasing along each row, as CSR needs
    K = bag.shape[1]
    # Entries of the last position (one token, '=', in every task) hit every example: scatter
    # them with a dense [E, n_last, N] x [E, N, C] GEMM; the rest goes through a CSR matmul.
    n_last = (n_heads + 1) * sizes[-1]
    k_sparse, dense_rows = K, None
    if sizes[-1] <= 4:
        k_sparse = K - n_heads - 1
        dense_rows = (bag[:, k_sparse:] - member[:, None] - (rows - n_last)).view(E, N, -1).transpose(1, 2)
    flat_bag = bag[:, :k_sparse].flatten()
    order = torch.argsort(flat_bag, stable=True)
    t_crow = F.pad(torch.bincount(flat_bag, minlength=E * rows).cumsum(0), (1, 0))
    crow = torch.arange(0, E * N * K + 1, K, device=tokens.device)
    return TokenPlan(vocab, local, bag, rows, n_heads, E, N, crow, t_crow, order // k_sparse, order,
                     k_sparse, None if dense_rows is None else dense_rows.contiguous())


class _TableBag(torch.autograd.Function):
    """``out[n] = sum_k w[n, k] * T[bag[n, k]]``, split into ``out[:, :split]`` and the rest.

    Forward is ``F.embedding_bag``; backward uses the sparse bag matrix ``A`` (``out = A @ T``):
    ``dT = A^T @ dout`` (CSR matmul) and ``dw = (dout @ T^T)`` sampled on ``A``'s pattern
    (``torch.sparse.sampled_addmm``), both far cheaper than the generic embedding_bag backward.
    """

    @staticmethod
    def forward(ctx, T: Tensor, w: Tensor, plan: TokenPlan, split: int):
        out = F.embedding_bag(plan.bag, T, per_sample_weights=w, mode="sum")
        ctx.save_for_backward(T, w)
        ctx.plan, ctx.split = plan, split
        return out[:, :split].contiguous(), out[:, split:].contiguous()

    @staticmethod
    def backward(ctx, d_a: Tensor, d_b: Tensor):
        T, w = ctx.saved_tensors
        plan = ctx.plan
        dout = torch.cat([d_a, d_b], 1)  # (E*N, C)
        n_rows, n_ex = T.shape[0], dout.shape[0]
        dT = dw = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            if ctx.needs_input_grad[0]:
                ks = plan.k_sparse
                At = torch.sparse_csr_tensor(plan.t_crow, plan.t_col,
                                             w[:, :ks].flatten()[plan.t_order], (n_rows, n_ex))
                dT = At @ dout
                if plan.dense_rows is not None:
                    E, N = plan.E, plan.N
                    n_last = (plan.n_heads + 1) * len(plan.vocab[-1])
                    w_d = w[:, ks:].reshape(E, N, -1).transpose(1, 2)  # (E, K - ks, N)
                    W_d = w.new_zeros(E, n_last, N).scatter_(1, plan.dense_rows, w_d)
                    dT.view(E, plan.rows, -1)[:, plan.rows - n_last:] += torch.bmm(
                        W_d, dout.view(E, N, -1))
            if ctx.needs_input_grad[1]:
                A = torch.sparse_csr_tensor(plan.crow, plan.bag.flatten(), w.new_zeros(w.numel()),
                                            (n_ex, n_rows))
                dw = torch.sparse.sampled_addmm(A, dout, T.T, beta=0.0).values().view_as(w)
        return dT, dw, None, None


def fast_last_logits(cfg: Config, params: dict[str, Tensor], tokens: Int[Tensor, "E batch pos"],
                     plan: TokenPlan | None = None) -> Float[Tensor, "E batch d_vocab_out"]:
    """Logits at the last position for a one-layer model without LayerNorm.

    Args:
        cfg: resolved config.
        params: ``name -> [E, *shape]`` with TransformerLens names (missing biases are zero).
        tokens: ``[E, N, n_ctx]`` token ids per member.
        plan: ``plan_tokens(tokens, n_heads)``, to skip rebuilding it (the Trainer caches it).

    Returns:
        ``[E, N, d_vocab_out]`` logits in the parameters' dtype, equal up to rounding to
        ``HookedTransformer.forward(tokens)[:, -1]`` (identity (1) in the module docstring).
    """
    m = cfg.model
    if plan is None:
        plan = plan_tokens(tokens, m.n_heads)
    E, N, n_ctx = tokens.shape
    H = m.n_heads
    a = "blocks.0.attn."
    W_E, W_pos = params["embed.W_E"], params["pos_embed.W_pos"]
    W_Q, W_K, W_V, W_O = (params[a + n] for n in ("W_Q", "W_K", "W_V", "W_O"))
    W_U = params["unembed.W_U"]
    bias = m.attn_bias

    # Per-token tables of the used tokens at each position.
    X = [W_E[:, v] + W_pos[:, j, None] for j, v in enumerate(plan.vocab)]  # (E, U_j, D)
    q = torch.einsum("eud,ehdk->euhk", X[-1], W_Q)  # (E, U_2, H, Dh)
    if bias:
        q = q + params[a + "b_Q"].unsqueeze(1)
    q = q * m.d_head ** -0.5
    scores, vo = [], []
    for j in range(n_ctx):
        k = torch.einsum("eud,ehdk->euhk", X[j], W_K)  # (E, U_j, H, Dh)
        v = torch.einsum("eud,ehdk->euhk", X[j], W_V)
        if bias:
            k, v = k + params[a + "b_K"].unsqueeze(1), v + params[a + "b_V"].unsqueeze(1)
        s_tab = torch.einsum("ewhk,euhk->ewuh", q, k)  # (E, U_2, U_j, H): last query vs key j
        idx = (torch.arange(E, device=tokens.device).repeat_interleave(N) * s_tab.shape[1]
               + plan.local[-1]) * s_tab.shape[2] + plan.local[j]
        scores.append(s_tab.reshape(-1, H)[idx])  # (E*N, H)
        vo.append(torch.einsum("euhk,ehkd->euhd", v, W_O).flatten(1, 2))  # (E, U_j*H, D)
    pattern = torch.stack(scores, 1).softmax(1)  # (E*N, n_ctx, H); no mask at the last query
    x_last = X[-1] + params[a + "b_O"].unsqueeze(1) if bias else X[-1]

    rows = torch.cat([*vo, x_last], 1)  # (E, rows, D)
    if m.attn_only:
        W_cat, row_bias = W_U, None
    else:
        p = "blocks.0.mlp."
        W_cat = torch.cat([params[p + "W_in"], W_U], 2)  # (E, D, d_mlp + d_vocab_out)
        direct_bias = torch.bmm(params[p + "b_out"].unsqueeze(1), W_U)  # (E, 1, d_vocab_out)
        row_bias = torch.cat([params[p + "b_in"].unsqueeze(1), direct_bias], 2)
    if m.unembed_bias:
        b_U = params["unembed.b_U"].unsqueeze(1)
        if row_bias is None:
            row_bias = b_U
        else:
            row_bias = row_bias + F.pad(b_U, (row_bias.shape[2] - b_U.shape[2], 0))
    weights = torch.cat([pattern.flatten(1), pattern.new_ones(E * N, 1)], 1)  # (E*N, 3H+1)
    n_vo = plan.rows - x_last.shape[1]
    T = torch.bmm(rows, W_cat)  # (E, rows, C)
    if row_bias is not None:  # the X_2 row has weight 1 in every bag: biases ride on it
        T = torch.cat([T[:, :n_vo], T[:, n_vo:] + row_bias], 1)
    split = 0 if m.attn_only else m.d_mlp
    pre, direct = _TableBag.apply(T.reshape(E * plan.rows, -1), weights, plan, split)
    if m.attn_only:
        return direct.view(E, N, -1)
    post = activation(m.act_fn, pre.view(E, N, -1))  # (E, N, d_mlp)
    W_L = torch.bmm(params[p + "W_out"], W_U)  # (E, d_mlp, d_vocab_out)
    return torch.baddbmm(direct.view(E, N, -1), post, W_L)


def generic_last_logits(model: HookedTransformer, params: dict[str, Tensor],
                        tokens: Int[Tensor, "E batch pos"]) -> Float[Tensor, "E batch d_vocab_out"]:
    """Last-position logits of ``model`` run once per member with ``torch.func.vmap``."""

    def one(p: dict[str, Tensor], tok: Tensor) -> Tensor:
        return functional_call(model, p, (tok,))[:, -1]

    return vmap(one)(params, tokens)


def cross_entropy(logits: Float[Tensor, "E batch d_vocab_out"], labels: Int[Tensor, "E batch"],
                  dtype: torch.dtype) -> Float[Tensor, " E"]:
    """Mean cross-entropy per member, with log-softmax taken in ``dtype``.

    float64 is the paper's ``cross_entropy_high_precision``; in float32 the log-softmax can only
    return multiples of ~1.2e-7, which produces the "slingshot" loss spikes (Nanda et al. 2023).
    """
    logp = logits.to(dtype).log_softmax(-1)
    return -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1).mean(-1)
