"""Last-position logits for an ensemble of models, and the loss.

Parameters come as a dict ``name -> [E, *shape]`` (TransformerLens names, leading member axis).
Only the final position (the '=' token) carries a loss, so the fast path computes nothing else.

Fast path (one layer, no LayerNorm): the first layer's inputs are ``W_E[tok] + W_pos[j]``, which
take only ``d_vocab`` values per position. So Q, K and V·W_O are computed as per-token tables
(``[E, d_vocab, n_heads, ...]``) and gathered per example; the attention scores of the last query
against the ``n_ctx`` keys are dot products of gathered table rows, and the attention output is a
pattern-weighted sum of gathered ``W_V W_O`` rows. The MLP and unembed then run on the last
position only. This is algebraically the same network as ``HookedTransformer.forward(...)[:, -1]``
(tested to float32 precision); models with more layers or LayerNorm use a vmapped generic forward.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.func import functional_call, vmap

from ..config import Config
from ..models.transformer import HookedTransformer, activation


def has_fast_path(cfg: Config) -> bool:
    """True for the one-layer, LayerNorm-free models that ``fast_last_logits`` handles."""
    return cfg.model.n_layers == 1 and not cfg.model.use_ln


def _gather_rows(table: Tensor, tok: Tensor) -> Tensor:
    """``table[e, tok[e, n]]`` for ``table [E, V, ...]`` and ``tok [E, N]`` -> ``[E, N, ...]``."""
    E, V = table.shape[:2]
    flat = table.reshape(E * V, *table.shape[2:])
    offs = (torch.arange(E, device=tok.device) * V).unsqueeze(1)
    return flat[(tok + offs).reshape(-1)].reshape(E, tok.shape[1], *table.shape[2:])


def fast_last_logits(cfg: Config, params: dict[str, Tensor],
                     tokens: Int[Tensor, "E batch pos"]) -> Float[Tensor, "E batch d_vocab_out"]:
    """Logits at the last position for a one-layer model without LayerNorm.

    Args:
        cfg: resolved config.
        params: ``name -> [E, *shape]`` with TransformerLens names (missing biases are zero).
        tokens: ``[E, N, n_ctx]`` token ids per member.

    Returns:
        ``[E, N, d_vocab_out]`` float32 logits, equal to the generic forward's last position.
    """
    m = cfg.model
    W_E, W_pos = params["embed.W_E"], params["pos_embed.W_pos"]
    a = "blocks.0.attn."
    W_Q, W_K, W_V, W_O = (params[a + n] for n in ("W_Q", "W_K", "W_V", "W_O"))
    n_ctx = tokens.shape[2]
    last = n_ctx - 1
    scale = m.d_head ** -0.5

    # Per-token tables of the first layer's inputs at each position: X[j] = W_E + W_pos[j].
    X = W_E.unsqueeze(1) + W_pos.unsqueeze(2)  # (E, n_ctx, V, D)
    q_tab = torch.einsum("evd,ehdk->evhk", X[:, last], W_Q)  # (E, V, H, Dh)
    k_tab = torch.einsum("ejvd,ehdk->ejvhk", X, W_K)  # (E, n_ctx, V, H, Dh)
    v_tab = torch.einsum("ejvd,ehdk->ejvhk", X, W_V)
    if m.attn_bias:
        q_tab = q_tab + params[a + "b_Q"].unsqueeze(1)
        k_tab = k_tab + params[a + "b_K"][:, None, None]
        v_tab = v_tab + params[a + "b_V"][:, None, None]
    vo_tab = torch.einsum("ejvhk,ehkd->ejvhd", v_tab, W_O)  # (E, n_ctx, V, H, D)

    q = _gather_rows(q_tab, tokens[:, :, last])  # (E, N, H, Dh)
    scores = []
    for j in range(n_ctx):
        k_j = _gather_rows(k_tab[:, j], tokens[:, :, j])  # (E, N, H, Dh)
        scores.append((q * k_j).sum(-1))
    pattern = (torch.stack(scores, -1) * scale).softmax(-1)  # (E, N, H, n_ctx)
    resid = _gather_rows(X[:, last], tokens[:, :, last])  # (E, N, D)
    for j in range(n_ctx):
        vo_j = _gather_rows(vo_tab[:, j], tokens[:, :, j])  # (E, N, H, D)
        resid = resid + torch.einsum("enh,enhd->end", pattern[..., j], vo_j)
    if m.attn_bias:
        resid = resid + params[a + "b_O"].unsqueeze(1)

    if not m.attn_only:
        p = "blocks.0.mlp."
        pre = torch.baddbmm(params[p + "b_in"].unsqueeze(1), resid, params[p + "W_in"])
        post = activation(m.act_fn, pre)  # (E, N, d_mlp)
        resid = torch.baddbmm(resid + params[p + "b_out"].unsqueeze(1), post, params[p + "W_out"])
    logits = torch.bmm(resid, params["unembed.W_U"])
    if m.unembed_bias:
        logits = logits + params["unembed.b_U"].unsqueeze(1)
    return logits


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
