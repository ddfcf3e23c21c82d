"""Logits at the '=' position over the whole p^2 grid, computed from a state dict.

The progress measures need the logits of every checkpoint over all p^2 pairs. For the paper's
architecture (one block, no LayerNorm, with an MLP) ``grid_logits`` uses an exact factorisation
that is several times cheaper than ``HookedTransformer.forward``: the query at '=' is a constant,
keys and values at positions 0 and 1 depend on one token each, so the attention output and the
MLP pre-activation are sums of per-token tables weighted by the [p, p, heads] attention pattern,
and ``logits = post @ (W_out W_U) + (resid_mid + b_out) @ W_U``. Other architectures fall back
to the model itself. Both give the model's logits up to float32 rounding (tested).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..config import Config
from ..models.transformer import HookedTransformer, activation


def fast_path_ok(cfg: Config) -> bool:
    """Whether ``grid_logits`` can use the factorised forward for this architecture."""
    m = cfg.model
    return m.n_layers == 1 and not m.use_ln and not m.attn_only and m.n_ctx == 3


def _tok_tables(sd: dict[str, Tensor], p: int):
    W_E, W_pos = sd["embed.W_E"].float(), sd["pos_embed.W_pos"].float()
    return W_E[:p] + W_pos[0], W_E[:p] + W_pos[1], W_E[p] + W_pos[2]  # (p, D), (p, D), (D,)


def _fast(sd: dict[str, Tensor], cfg: Config) -> Float[Tensor, "pairs p"]:
    m, p = cfg.model, cfg.task.p
    g = lambda k: sd[k].float()
    x0, x1, x2 = _tok_tables(sd, p)
    W_Q, W_K, W_V, W_O = (g(f"blocks.0.attn.W_{n}") for n in "QKVO")
    bias = m.attn_bias
    q = torch.einsum("d,hde->he", x2, W_Q) + (g("blocks.0.attn.b_Q") if bias else 0)  # (H, Dh)

    def kv(x):
        k = torch.einsum("...d,hde->...he", x, W_K) + (g("blocks.0.attn.b_K") if bias else 0)
        v = torch.einsum("...d,hde->...he", x, W_V) + (g("blocks.0.attn.b_V") if bias else 0)
        s = (k * q).sum(-1) * (m.d_head ** -0.5)  # (..., H)
        return s, torch.einsum("...he,hed->...hd", v, W_O)  # scores, (..., H, D)

    s0, vo0 = kv(x0)  # (p, H), (p, H, D)
    s1, vo1 = kv(x1)
    s2, vo2 = kv(x2)  # (H,), (H, D)
    H = s2.shape[0]
    scores = torch.stack(torch.broadcast_tensors(s0[:, None], s1[None, :], s2.expand(p, p, H)), -1)
    pat = scores.softmax(-1)  # (a, b, H, 3)
    pa, pb = pat[..., 0].contiguous(), pat[..., 1]  # (p, p, H)

    pbT = pb.transpose(0, 1).contiguous()  # (b, a, H)

    def mix(t0, t1, t2, c):
        """sum_h pa[a,b,h] t0[a,h] + pb[a,b,h] t1[b,h] + pe[a,b,h] t2[h] + c -> (p, p, n).

        Uses pe = 1 - pa - pb, so the '=' term becomes a constant.
        """
        out = torch.bmm(pa, t0 - t2)  # batch a: (b, H) @ (H, n)
        out += torch.bmm(pbT, t1 - t2).transpose(0, 1)  # batch b
        out += t2.sum(0) + c
        return out

    W_in, W_out, W_U = g("blocks.0.mlp.W_in"), g("blocks.0.mlp.W_out"), g("unembed.W_U")
    b_O = g("blocks.0.attn.b_O") if bias else torch.zeros_like(x2)
    const = x2 + b_O  # resid_mid minus the attention mixture, (D,)
    pre = mix(vo0 @ W_in, vo1 @ W_in, vo2 @ W_in, const @ W_in + g("blocks.0.mlp.b_in"))
    if m.act_fn == "relu":
        post = torch.relu_(pre)
    else:
        post = activation(m.act_fn, pre)
    post = post.reshape(p * p, -1)  # (p^2, d_mlp) = hook_post at '='
    W_Up = W_U[:, :p]
    skip = mix(vo0 @ W_Up, vo1 @ W_Up, vo2 @ W_Up, (const + g("blocks.0.mlp.b_out")) @ W_Up)
    logits = torch.addmm(skip.reshape(p * p, p), post, W_out @ W_Up)
    if m.unembed_bias:
        logits += g("unembed.b_U")[:p]
    return logits


class GridEvaluator:
    """Evaluates checkpoints of one run over its p^2 grid, reusing buffers and one model.

    Args:
        cfg: the run's resolved config.
        tokens: ``[p*p, 3]`` grid from ``make_data``; used only by the fallback path.
        chunk: rows per forward pass on the fallback path.
    """

    def __init__(self, cfg: Config, tokens: Tensor, chunk: int = 4096):
        self.cfg, self.tokens, self.chunk = cfg, tokens, chunk
        self.fast = fast_path_ok(cfg)
        self._model: HookedTransformer | None = None

    @torch.no_grad()
    def logits(self, state: dict[str, Tensor]) -> Float[Tensor, "pairs p"]:
        """Logits at the '=' position for every pair, '=' class dropped: ``[p*p, p]`` float32.

        Raises:
            KeyError / RuntimeError: the state dict does not match the config.
        """
        p = self.cfg.task.p
        if self.fast:
            return _fast(state, self.cfg)
        if self._model is None:
            self._model = HookedTransformer(self.cfg).eval()
        self._model.load_state_dict(state)
        outs = [self._model(self.tokens[i:i + self.chunk])[:, -1, :p]
                for i in range(0, len(self.tokens), self.chunk)]
        return torch.cat(outs).float()
