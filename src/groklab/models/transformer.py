"""The grokking transformer with TransformerLens parameter and hook names.

Architecture (Nanda et al. 2023, §3 and progress-measures-paper ``transformers.py``): token and
learned position embeddings, ``n_layers`` blocks of causal multi-head attention and a one-hidden-
layer MLP, each added to the residual stream, then an unembed. LayerNorm is optional (off in the
paper). State-dict keys and shapes are TransformerLens's (``embed.W_E``, ``blocks.0.attn.W_Q``...).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from ..config import Config, ModelConfig
from .hooks import HookedModule, HookPoint


def activation(name: str, x: Tensor) -> Tensor:
    """The MLP non-linearity: ``relu``, ``gelu`` (tanh approximation off) or ``quadratic`` (x^2)."""
    if name == "relu":
        return F.relu(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "quadratic":
        return x * x
    raise ValueError(f"unknown act_fn {name!r}; choose relu, gelu or quadratic")


class LayerNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale) * self.w + self.b


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H, D, Dh = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(H, D, Dh))
        self.W_K = nn.Parameter(torch.empty(H, D, Dh))
        self.W_V = nn.Parameter(torch.empty(H, D, Dh))
        self.W_O = nn.Parameter(torch.empty(H, Dh, D))
        if cfg.attn_bias:
            self.b_Q = nn.Parameter(torch.zeros(H, Dh))
            self.b_K = nn.Parameter(torch.zeros(H, Dh))
            self.b_V = nn.Parameter(torch.zeros(H, Dh))
            self.b_O = nn.Parameter(torch.zeros(D))
        self.attn_bias = cfg.attn_bias
        self.attn_coeff = cfg.attn_coeff  # Zhong et al. 2023's attention rate alpha
        self.scale = 1.0 / math.sqrt(Dh)
        for name in ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"):
            setattr(self, name, HookPoint())

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        q = torch.einsum("bpd,hde->bphe", x, self.W_Q)  # (B, P, H, Dh)
        k = torch.einsum("bpd,hde->bphe", x, self.W_K)
        v = torch.einsum("bpd,hde->bphe", x, self.W_V)
        if self.attn_bias:
            q, k, v = q + self.b_Q, k + self.b_K, v + self.b_V
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * self.scale  # (B, H, Pq, Pk)
        P = x.shape[1]
        causal = torch.ones(P, P, dtype=torch.bool, device=x.device).tril()
        scores = self.hook_attn_scores(scores.masked_fill(~causal, float("-inf")))
        pattern = scores.softmax(dim=-1)
        if self.attn_coeff != 1.0:  # the pizza repo's alpha softmax + (1 - alpha), on visible keys
            pattern = self.attn_coeff * pattern + (1.0 - self.attn_coeff) * causal.to(pattern.dtype)
        pattern = self.hook_pattern(pattern)
        z = self.hook_z(torch.einsum("bhqk,bkhe->bqhe", pattern, v))  # (B, P, H, Dh)
        out = torch.einsum("bqhe,hed->bqd", z, self.W_O)
        return out + self.b_O if self.attn_bias else out


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act_fn = cfg.act_fn
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(x @ self.W_in + self.b_in)
        post = self.hook_post(activation(self.act_fn, pre))
        return post @ self.W_out + self.b_out


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.use_ln, self.attn_only = cfg.use_ln, cfg.attn_only
        self.doubled = cfg.doubled_residual
        if cfg.use_ln:
            self.ln1 = LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        if not cfg.attn_only:
            if cfg.use_ln:
                self.ln2 = LayerNorm(cfg.d_model)
            self.mlp = MLP(cfg)
        for name in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out",
                     "hook_resid_post"):
            setattr(self, name, HookPoint())

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        resid = x = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid) if self.use_ln else resid))
        resid = attn_out + resid
        if self.attn_only:  # doubled: 2 x + attn(x), the induction notebook's block + outer add
            return self.hook_resid_post(resid + x if self.doubled else resid)
        resid = self.hook_resid_mid(resid)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid) if self.use_ln else resid))
        return self.hook_resid_post(resid + mlp_out)


class HookedTransformer(HookedModule):
    """The grokking transformer. ``forward(tokens)`` returns logits at every position.

    Args:
        cfg: a resolved ``Config`` (``Config.resolved()``), so that ``d_head``, ``d_vocab`` and
            ``d_vocab_out`` are set. Parameters are created empty; call ``init_weights``.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        m = cfg.model
        if m.d_head is None or m.d_vocab is None or m.d_vocab_out is None:
            raise ValueError("HookedTransformer needs a resolved config: pass cfg.resolved()")
        self.cfg = cfg
        self.embed = nn.Module()
        self.embed.W_E = nn.Parameter(torch.empty(m.d_vocab, m.d_model))
        self.pos_embed = nn.Module()
        self.pos_embed.W_pos = nn.Parameter(torch.empty(m.n_ctx, m.d_model))
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(TransformerBlock(m) for _ in range(m.n_layers))
        if m.use_ln:
            self.ln_final = LayerNorm(m.d_model)
        self.unembed = nn.Module()
        self.unembed.W_U = nn.Parameter(torch.empty(m.d_model, m.d_vocab_out))
        if m.unembed_bias:
            self.unembed.b_U = nn.Parameter(torch.zeros(m.d_vocab_out))
        if m.freeze_biases:
            for name, prm in self.named_parameters():
                if name.rsplit(".", 1)[-1].startswith("b_"):
                    prm.requires_grad_(False)

    def forward(self, tokens: Int[Tensor, "batch pos"], positions: Int[Tensor, "batch K"] | None = None
                ) -> Float[Tensor, "batch pos d_vocab_out"]:
        """Logits at every position, or with ``positions`` only at those: ``[batch, K, d_vocab_out]``
        with row ``k`` the logits at ``positions[:, k]`` (the loss slots of a ``tasks.Batch``)."""
        P = tokens.shape[1]
        resid = self.hook_embed(self.embed.W_E[tokens]) + self.hook_pos_embed(self.pos_embed.W_pos[:P])
        for block in self.blocks:
            resid = block(resid)
        if positions is not None:
            resid = resid.gather(1, positions.unsqueeze(-1).expand(-1, -1, resid.shape[-1]))
        if self.cfg.model.use_ln:
            resid = self.ln_final(resid)
        logits = resid @ self.unembed.W_U
        return logits + self.unembed.b_U if self.cfg.model.unembed_bias else logits

    @torch.no_grad()
    def init_weights(self, seed: int) -> HookedTransformer:
        """Draw every weight from a CPU generator seeded with ``seed``, in state-dict order.

        ``nanda``: ``randn / sqrt(d_model)`` for every weight matrix except ``W_U``, which is
        ``randn / sqrt(d_vocab_out)`` (progress-measures-paper ``transformers.py``); with
        ``init_qkv = "d_head"``, ``W_Q``, ``W_K``, ``W_V`` are ``randn / sqrt(d_head)`` (the
        induction notebook's ``AttnOnlyTransformer``).
        ``gpt2``: ``N(0, init_range)``, ``init_range = 0.8 / sqrt(d_model)`` by default
        (TransformerLens ``init_mode="gpt2"``). Biases start at 0, LayerNorm weights at 1.
        With ``task.rng: notebook``, the induction notebook's draws instead
        (``tasks.notebook_draws.notebook_init``).
        """
        m = self.cfg.model
        if getattr(self.cfg.task, "rng", "torch") == "notebook":
            from ..tasks.notebook_draws import notebook_init

            weights, _ = notebook_init(m, seed)
            for name, prm in self.named_parameters():
                if name in weights:  # biases and LayerNorm weights keep their 0 and 1
                    prm.copy_(weights[name])
            return self
        g = torch.Generator().manual_seed(seed)
        sigma = m.init_range if m.init_range is not None else 0.8 / math.sqrt(m.d_model)
        for name, prm in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if not leaf.startswith("W_"):
                continue
            w = torch.randn(prm.shape, generator=g, dtype=torch.float32)
            if m.init == "gpt2":
                w = w * sigma
            elif leaf == "W_U":
                w = w / math.sqrt(m.d_vocab_out)
            elif leaf in ("W_Q", "W_K", "W_V") and m.init_qkv == "d_head":
                w = w / math.sqrt(m.d_head)
            else:
                w = w / math.sqrt(m.d_model)
            prm.copy_(w)
        return self


def build_model(cfg: Config, seed: int | None = None):
    """The model of ``cfg`` (resolved here), initialised from ``seed`` (default
    ``cfg.train.seed``): a ``HookedTransformer``, or a ``models.mlp.MLPModel`` for
    ``model.family: mlp``."""
    cfg = cfg.resolved()
    if cfg.model.family == "mlp":
        from .mlp import MLPModel

        return MLPModel(cfg).init_weights(cfg.train.seed if seed is None else seed)
    return HookedTransformer(cfg).init_weights(cfg.train.seed if seed is None else seed)
