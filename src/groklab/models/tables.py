"""Token plans and the per-token tables of the fast one-layer path (see ``step`` for the algebra).

Row layout of the table ``T`` of one member (``U_j`` used tokens at position ``j``,
``U = sum_j U_j``)::

    [ VO rows: n_heads * u_all + h, u_all = the (position, token) pair, position-major ]
    [ X rows of the last position: n_heads * U + u ]       -> rows = n_heads * U + U_last

so the bag entries of one example, in ``(j, h)`` order followed by the X row, have increasing row
indices (as CSR needs), and the last position's entries form the last block of rows. The heads
of one token are adjacent rows: the transposed CSR product of the backward then reads the same
examples' gradient rows for consecutive table rows (5x faster than a head-major layout).

All tables come from a handful of batched products, whatever the head count:

* ``qkv = X_all @ [W_Q | W_K | W_V]`` for the ``U`` used (position, token) pairs at once;
* scores of the last query against every used key: one einsum, then one gather per example;
* ``VO_j[u, h] W_cat = v_j[u, h] @ (W_O[h] @ W_cat)``: the product goes through ``d_head``
  (32) instead of ``d_model`` (128), a quarter of the FLOPs of ``(v W_O) @ W_cat``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor

from ..config import Config


@dataclass(frozen=True)
class TokenPlan:
    """Gather indices for one fixed token batch, built once by ``plan_tokens``.

    Attributes:
        vocab: per position ``j``, the sorted token ids that occur there, ``[U_j]``.
        local: ``[n_ctx, E*N]`` index of each example's token in ``vocab[j]``.
        tok_all, pos_all: ``[U]`` token and position of every used (position, token) pair,
            position-major (the rows of ``X_all``).
        score_idx: ``[E*N, n_ctx]`` index into the flattened ``[E, U_last, U]`` score table.
        bag: ``[E*N, n_ctx*n_heads + 1]`` row of the table ``T`` (all members stacked) for each
            term of (1): ``(j, h)`` in row-major order, then the X row of the last position.
        rows: rows of ``T`` per member, ``n_heads * U + U_last``.
    """

    vocab: tuple[Tensor, ...]
    local: Tensor
    tok_all: Tensor
    pos_all: Tensor
    score_idx: Tensor
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

    @property
    def n_last(self) -> int:
        """Rows of the last-position block: ``(n_heads + 1) * U_last``."""
        return (self.n_heads + 1) * len(self.vocab[-1])


def plan_tokens(tokens: Int[Tensor, "E batch pos"], n_heads: int) -> TokenPlan:
    """Build the ``TokenPlan`` for ``tokens`` (one host sync; reuse it across steps)."""
    E, N, n_ctx = tokens.shape
    dev = tokens.device
    flat = tokens.reshape(E * N, n_ctx)
    vocab = tuple(torch.unique(flat[:, j]) for j in range(n_ctx))
    local = torch.stack([torch.searchsorted(vocab[j], flat[:, j].contiguous()) for j in range(n_ctx)])
    sizes = [len(v) for v in vocab]
    U, U_last = sum(sizes), sizes[-1]
    starts = [sum(sizes[:j]) for j in range(n_ctx)]
    rows = n_heads * U + U_last
    tok_all = torch.cat(vocab)
    pos_all = torch.cat([torch.full((s,), j, device=dev) for j, s in enumerate(sizes)])
    ex_member = torch.arange(E, device=dev).repeat_interleave(N)  # (E*N,)
    score_idx = torch.stack([(ex_member * U_last + local[-1]) * U + starts[j] + local[j]
                             for j in range(n_ctx)], 1)
    member = ex_member * rows
    heads = torch.arange(n_heads, device=dev)
    cols = []
    for j in range(n_ctx):
        cols.append(member[:, None] + n_heads * (starts[j] + local[j][:, None]) + heads)
    cols.append((member + n_heads * U + local[-1])[:, None])
    bag = torch.cat(cols, 1)  # (E*N, K); increasing along each row, as CSR needs
    K = bag.shape[1]
    # Entries of the last position (one token, '=', in every task) hit every example: scatter
    # them with a dense [E, n_last, N] x [E, N, C] GEMM; the rest goes through a CSR matmul.
    n_last = (n_heads + 1) * U_last
    k_sparse, dense_rows = K, None
    if U_last <= 4:
        k_sparse = K - n_heads - 1
        dense_rows = (bag[:, k_sparse:] - member[:, None] - (rows - n_last)).view(E, N, -1).transpose(1, 2)
    flat_bag = bag[:, :k_sparse].flatten()
    order = torch.argsort(flat_bag, stable=True)
    t_crow = F.pad(torch.bincount(flat_bag, minlength=E * rows).cumsum(0), (1, 0))
    crow = torch.arange(0, E * N * K + 1, K, device=dev)
    return TokenPlan(vocab, local, tok_all, pos_all, score_idx, bag, rows, n_heads, E, N, crow,
                     t_crow, order // k_sparse, order, k_sparse,
                     None if dense_rows is None else dense_rows.contiguous())


def build_tables(cfg: Config, params: dict[str, Tensor], plan: TokenPlan
                 ) -> tuple[Tensor, Tensor, Tensor | None]:
    """The table, the bag weights and ``W_L`` of ``fast_last_logits`` (differentiable).

    Returns:
        ``T [E*rows, C]`` with ``C = d_mlp + d_vocab_out`` (``d_vocab_out`` when attention-only):
        each row times ``[W_in | W_U]``, biases riding on the X rows; ``weights [E*N, K]``, the
        attention pattern in bag order and 1 for the X row; ``W_L = W_out W_U [E, d_mlp, V]``
        (None when attention-only).
    """
    m = cfg.model
    E, H, Dh = plan.E, m.n_heads, m.d_head
    U_last = len(plan.vocab[-1])
    a = "blocks.0.attn."
    W_E, W_pos, W_U = params["embed.W_E"], params["pos_embed.W_pos"], params["unembed.W_U"]
    D = W_E.shape[-1]
    bias = m.attn_bias

    X_all = W_E[:, plan.tok_all] + W_pos[:, plan.pos_all]  # (E, U, D)
    W_qkv = torch.stack([params[a + n] for n in ("W_Q", "W_K", "W_V")], 2)  # (E, H, 3, D, Dh)
    qkv = torch.bmm(X_all, W_qkv.permute(0, 3, 2, 1, 4).reshape(E, D, 3 * H * Dh))
    qkv = qkv.view(E, -1, 3, H, Dh)  # (E, U, 3, H, Dh)
    if bias:
        qkv = qkv + torch.stack([params[a + n] for n in ("b_Q", "b_K", "b_V")], 1).unsqueeze(1)
    q = qkv[:, -U_last:, 0] * Dh ** -0.5  # (E, U_last, H, Dh): the last position's tokens
    s_tab = torch.einsum("ewhk,euhk->ewuh", q, qkv[:, :, 1])  # (E, U_last, U, H)
    pattern = s_tab.reshape(-1, H)[plan.score_idx].softmax(1)  # (E*N, n_ctx, H); no mask needed
    if m.attn_coeff != 1.0:  # Zhong et al.'s alpha softmax + (1 - alpha): the last query sees every key
        pattern = m.attn_coeff * pattern + (1.0 - m.attn_coeff)
    weights = torch.cat([pattern.flatten(1), pattern.new_ones(pattern.shape[0], 1)], 1)

    if m.attn_only:
        W_cat, row_bias, W_L = W_U, None, None
    else:
        p = "blocks.0.mlp."
        W_cat = torch.cat([params[p + "W_in"], W_U], 2)  # (E, D, C)
        direct_bias = torch.bmm(params[p + "b_out"].unsqueeze(1), W_U)  # (E, 1, V)
        row_bias = torch.cat([params[p + "b_in"].unsqueeze(1), direct_bias], 2)
        W_L = torch.bmm(params[p + "W_out"], W_U)  # (E, d_mlp, V)
    if m.unembed_bias:
        b_U = params["unembed.b_U"].unsqueeze(1)
        row_bias = b_U if row_bias is None else row_bias + F.pad(b_U, (row_bias.shape[2] - b_U.shape[2], 0))
    C = W_cat.shape[2]
    B = torch.bmm(params[a + "W_O"].reshape(E, H * Dh, D), W_cat).view(E, H, Dh, C)
    T_vo = torch.matmul(qkv[:, :, 2].transpose(1, 2), B).transpose(1, 2)  # (E, U, H, C)
    x_last = X_all[:, -U_last:]
    if bias:
        x_last = x_last + params[a + "b_O"].unsqueeze(1)
    T_x = torch.bmm(x_last, W_cat)  # (E, U_last, C)
    if row_bias is not None:  # the X row has weight 1 in every bag: biases ride on it
        T_x = T_x + row_bias
    T = torch.cat([T_vo.reshape(E, -1, C), T_x], 1)  # (E, rows, C)
    return T.view(E * plan.rows, C), weights, W_L
