"""Neuron activations over the (a, b) grid, for the neuron heatmaps.

``neuron_activations`` runs the model (``run_with_cache``, hook ``blocks.0.mlp.hook_post`` at the
'=' position). ``neuron_activations_fast`` gives the same numbers for a few neurons at a fraction
of the cost, for the slider's many checkpoints, using the structure of the paper's one-layer,
LayerNorm-free model: the query at '=' is one vector, keys and values at positions 0 and 1 depend
on one token each, so the MLP input of neuron n is a pattern-weighted sum of per-token tables.
It falls back to the model for any other architecture.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..config import Config
from ..models.transformer import activation

HOOK = "blocks.0.mlp.hook_post"


@torch.no_grad()
def neuron_activations(model, tokens: Tensor, p: int, neurons: list[int]) -> Float[Tensor, "n p p"]:
    """``[len(neurons), p, p]`` activations of ``blocks.0.mlp.hook_post`` at the '=' position for the
    lexicographic grid ``tokens`` (rows a, columns b), via ``model.run_with_cache``."""
    _, cache = model.run_with_cache(tokens, names=[HOOK])
    acts = cache[HOOK][:, -1, neurons]  # (p*p, n)
    return acts.reshape(p, p, len(neurons)).permute(2, 0, 1).float()


def fast_ok(cfg: Config) -> bool:
    m = cfg.model
    return m.n_layers == 1 and not m.use_ln and not m.attn_only and m.n_ctx == 3


@torch.no_grad()
def neuron_activations_fast(state: dict[str, Tensor], cfg: Config,
                            neurons: list[int]) -> Float[Tensor, "n p p"]:
    """Same as ``neuron_activations`` for a one-layer model without LayerNorm, from a state dict.

    pre[a, b, n] = sum_h (pa[a,b,h] T0[a,h,n] + pb[a,b,h] T1[b,h,n] + pe[a,b,h] T2[h,n])
                   + (x_= + b_O) W_in[:, n] + b_in[n],
    with T_i = (x_i W_V + b_V) W_O W_in[:, n] the per-token value tables and (pa, pb, pe) the
    attention pattern of the '=' query over (a, b, '=').
    """
    m, p = cfg.model, cfg.task.p
    g = lambda k: state[k].float()
    zero = lambda *s: torch.zeros(*s)
    W_E, W_pos = g("embed.W_E"), g("pos_embed.W_pos")
    x0, x1, x2 = W_E[:p] + W_pos[0], W_E[:p] + W_pos[1], W_E[p] + W_pos[2]  # (p, D), (p, D), (D,)
    W_Q, W_K, W_V, W_O = (g(f"blocks.0.attn.W_{n}") for n in "QKVO")
    H, Dh = W_Q.shape[0], W_Q.shape[2]
    b = {n: g(f"blocks.0.attn.b_{n}") if m.attn_bias else zero(H, Dh) for n in "QKV"}
    b_O = g("blocks.0.attn.b_O") if m.attn_bias else zero(W_O.shape[-1])
    W_in = g("blocks.0.mlp.W_in")[:, neurons]  # (D, n)
    b_in = g("blocks.0.mlp.b_in")[neurons]
    q = torch.einsum("d,hde->he", x2, W_Q) + b["Q"]  # (H, Dh)

    def score_and_table(x):
        k = torch.einsum("...d,hde->...he", x, W_K) + b["K"]
        v = torch.einsum("...d,hde->...he", x, W_V) + b["V"]
        table = torch.einsum("...he,hed,dn->...hn", v, W_O, W_in)  # (..., H, n)
        return (k * q).sum(-1) / Dh ** 0.5, table

    s0, t0 = score_and_table(x0)  # (p, H), (p, H, n)
    s1, t1 = score_and_table(x1)
    s2, t2 = score_and_table(x2)  # (H,), (H, n)
    scores = torch.stack(torch.broadcast_tensors(s0[:, None], s1[None, :], s2.expand(p, p, H)), -1)
    pat = scores.softmax(-1)  # (a, b, H, 3)
    pre = (torch.einsum("abh,ahn->nab", pat[..., 0], t0) + torch.einsum("abh,bhn->nab", pat[..., 1], t1)
           + torch.einsum("abh,hn->nab", pat[..., 2], t2) + ((x2 + b_O) @ W_in + b_in)[:, None, None])
    return activation(m.act_fn, pre)
