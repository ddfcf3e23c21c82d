"""The one-layer table trick: last-position logits and loss of an ensemble, fast.

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

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from ..config import Config
from .fused import BagMLPLoss, TableBag
from .tables import TokenPlan, build_tables, plan_tokens
from .transformer import activation

__all__ = ["TokenPlan", "fast_last_logits", "fast_loss", "has_fast_path", "plan_tokens"]


def has_fast_path(cfg: Config) -> bool:
    """True for the one-layer, LayerNorm-free models that ``fast_last_logits`` handles."""
    return cfg.model.n_layers == 1 and not cfg.model.use_ln


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
    E, N, _ = tokens.shape
    T, weights, W_L = build_tables(cfg, params, plan)
    split = 0 if W_L is None else m.d_mlp
    if torch.is_grad_enabled() and (T.requires_grad or weights.requires_grad):
        pre, direct = TableBag.apply(T, weights, plan, split)
    else:  # no graph (evaluation): column views of one buffer, no copies
        out = F.embedding_bag(plan.bag, T, per_sample_weights=weights, mode="sum")
        pre, direct = out[:, :split], out[:, split:]
    if W_L is None:
        return direct.reshape(E, N, -1)
    post = activation(m.act_fn, pre.reshape(E, N, -1))  # (E, N, d_mlp)
    return torch.baddbmm(direct.reshape(E, N, -1), post, W_L)


def fast_loss(cfg: Config, params: dict[str, Tensor], tokens: Int[Tensor, "E batch pos"],
              labels: Int[Tensor, "E batch"], dtype: torch.dtype, plan: TokenPlan | None = None
              ) -> tuple[Float[Tensor, " E"], Float[Tensor, "E batch d_vocab_out"]]:
    """``cross_entropy(fast_last_logits(...), labels, dtype)`` and the (gradient-free) logits.

    The same numbers as that composition; the part after the tables (bag sum, MLP, unembed,
    log-softmax) is one autograd node with a hand-written backward (``fused.BagMLPLoss``).
    """
    if plan is None:
        plan = plan_tokens(tokens, cfg.model.n_heads)
    T, weights, W_L = build_tables(cfg, params, plan)
    return BagMLPLoss.apply(T, weights, W_L, labels, plan, dtype, cfg.model.act_fn)
