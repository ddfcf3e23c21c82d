"""A naive one-file transformer written from the paper's description, used as an oracle.

Nanda et al. 2023 (§3; progress-measures-paper ``transformers.py``, see
``shared/reference/nanda.md`` §1a): token embedding plus learned position embedding; per block,
causal multi-head attention (scores ``q.k / sqrt(d_head)``, future positions masked, softmax over
keys, value-weighted sum, output projection) added to the residual stream, then a one-hidden-
layer MLP (``act(x W_in + b_in) W_out + b_out``) added to the residual; finally the unembed.
Optional extras that the groklab configs allow: attention biases, an unembed bias, GELU or x^2,
and pre-LayerNorm. Every position goes through every layer, and the heads are a Python loop.

It takes a state dict with TransformerLens keys (``embed.W_E``, ``blocks.0.attn.W_Q``...) and
knows nothing of groklab, so it can be imported by path (tests are not a package).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _act(name: str, x: Tensor) -> Tensor:
    if name == "relu":
        return torch.clamp(x, min=0)
    if name == "gelu":  # exact erf form
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    if name == "quadratic":
        return x * x
    raise ValueError(name)


def _layer_norm(x: Tensor, w: Tensor, b: Tensor, eps: float = 1e-5) -> Tensor:
    x = x - x.mean(-1, keepdim=True)
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w + b


def naive_forward(sd: dict[str, Tensor], tokens: Tensor, n_layers: int = 1, act_fn: str = "relu",
                  use_ln: bool = False) -> Tensor:
    """Logits ``[batch, pos, d_vocab_out]`` for ``tokens [batch, pos]`` (int64).

    Head count and sizes are read from the weight shapes: ``W_Q [n_heads, d_model, d_head]``.
    A bias missing from ``sd`` counts as zero.
    """
    B, P = tokens.shape
    x = sd["embed.W_E"][tokens] + sd["pos_embed.W_pos"][:P]  # (B, P, D)
    for layer in range(n_layers):
        a = f"blocks.{layer}.attn."
        n_heads, d_model, d_head = sd[a + "W_Q"].shape
        h_in = _layer_norm(x, sd[f"blocks.{layer}.ln1.w"], sd[f"blocks.{layer}.ln1.b"]) if use_ln else x
        attn_out = torch.zeros_like(x)
        for h in range(n_heads):
            q = h_in @ sd[a + "W_Q"][h]  # (B, P, d_head)
            k = h_in @ sd[a + "W_K"][h]
            v = h_in @ sd[a + "W_V"][h]
            if a + "b_Q" in sd:
                q, k, v = q + sd[a + "b_Q"][h], k + sd[a + "b_K"][h], v + sd[a + "b_V"][h]
            scores = q @ k.transpose(1, 2) / math.sqrt(d_head)  # (B, P_query, P_key)
            future = torch.ones(P, P, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
            pattern = torch.softmax(scores, dim=-1)
            z = pattern @ v  # (B, P, d_head)
            attn_out = attn_out + z @ sd[a + "W_O"][h]  # W_O [n_heads, d_head, d_model]
        if a + "b_O" in sd:
            attn_out = attn_out + sd[a + "b_O"]
        x = x + attn_out
        mlp = f"blocks.{layer}.mlp."
        if mlp + "W_in" in sd:
            h_in = _layer_norm(x, sd[f"blocks.{layer}.ln2.w"], sd[f"blocks.{layer}.ln2.b"]) if use_ln else x
            hidden = _act(act_fn, h_in @ sd[mlp + "W_in"] + sd[mlp + "b_in"])
            x = x + hidden @ sd[mlp + "W_out"] + sd[mlp + "b_out"]
    if use_ln:
        x = _layer_norm(x, sd["ln_final.w"], sd["ln_final.b"])
    logits = x @ sd["unembed.W_U"]
    return logits + sd["unembed.b_U"] if "unembed.b_U" in sd else logits


def naive_loss(sd: dict[str, Tensor], tokens: Tensor, labels: Tensor, **kw) -> Tensor:
    """The paper's loss: mean cross-entropy at the last position, log-softmax in float64."""
    logits = naive_forward(sd, tokens, **kw)[:, -1].to(torch.float64)
    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    return -logp[torch.arange(len(labels)), labels].mean()
