"""PAIR's one-layer MLP family (``model.family: mlp``; Pearce et al. 2023, ``pair.md`` §1.1–1.4).

Modular addition, tied embedding (the main configuration; the state-dict contract)::

    hook_pre  = W_E[a] @ W_in + W_E[b] @ W_in            # [N, d_hidden]
    hook_post = act(hook_pre)                            # ReLU or x^2
    logits    = hook_post @ W_out @ W_E^T                # [N, p]

with ``embed.W_E`` ``[p, d_embed]``, ``mlp.W_in`` ``[d_embed, d_hidden]`` (shared by a and b),
``mlp.W_out`` ``[d_hidden, d_embed]`` and no biases. Variants: ``untied`` adds ``unembed.W_U``
``[d_embed, p]``; ``collapsed_in`` makes ``mlp.W_in`` ``[p, d_hidden]`` (no input embedding);
``collapsed_out`` makes ``mlp.W_out`` ``[d_hidden, p]`` (no unembedding); ``circle`` fixes
``W_E`` to PAIR's ``gen_fixed_embed`` (not trained). For a bit-vector task (sparse parity) the
input is the bits with a constant 1 appended, ``mlp.W_in`` ``[n_bits + 1, d_hidden]``, and
``mlp.W_out`` ``[d_hidden, 1]`` gives one logit z; the class logits are ``(0, z)``, so the
cross-entropy over the two classes is exactly binary cross-entropy on z.

The ensemble path (``mlp_logits``) uses the one-hot structure: the collapsed ``W_input =
W_E W_in`` ``[p, d_hidden]`` and ``W_output = W_out W_E^T`` ``[d_hidden, p]`` are formed once per
step and a, b become row lookups, so a step costs ``O(p d_embed d_hidden + N d_hidden p)``
instead of ``O(N d_embed (d_hidden + p))``.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from ..config import Config
from .hooks import HookedModule, HookPoint

# haiku's VarianceScaling divides the std by the std of a unit normal truncated to [-2, 2]
_TRUNC_STD = 0.87962566103423978


def _act(name: str, x: Tensor) -> Tensor:
    return torch.relu(x) if name == "relu" else x * x


def circle_embedding(p: int, freq: int = 1, dtype: torch.dtype = torch.float32) -> Float[Tensor, "p 2"]:
    """PAIR's fixed embedding (``gen_fixed_embed([freq])``): columns ``cos(2 pi freq i / p)`` and
    ``sin(2 pi freq i / p)``, each scaled to unit L2 norm (radius ``sqrt(2/p)``, not 1)."""
    i = torch.arange(p, dtype=torch.float64)
    E = torch.stack([torch.cos(2 * math.pi * freq * i / p), torch.sin(2 * math.pi * freq * i / p)], 1)
    return (E / E.norm(dim=0, keepdim=True)).to(dtype)


def mlp_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """State-dict names and shapes of the MLP of ``cfg`` (the contract in the module docstring)."""
    m = cfg.model
    n_in, n_out, kind = cfg.task.mlp_io()
    shapes: dict[str, tuple[int, ...]] = {}
    if not (m.collapsed_in and m.collapsed_out) and kind == "pair":
        shapes["embed.W_E"] = (n_in, m.d_embed)
    shapes["mlp.W_in"] = (n_in if m.collapsed_in else m.d_embed, m.d_hidden)
    shapes["mlp.W_out"] = (m.d_hidden, n_out if m.collapsed_out else m.d_embed)
    if m.embed == "untied" and not m.collapsed_out:
        shapes["unembed.W_U"] = (m.d_embed, n_out)
    return shapes


class MLPModel(HookedModule):
    """One model of the MLP family (see the module docstring).

    ``forward(tokens, positions)`` takes the task's tokens (``[N, 3]`` ``a b =`` for modular
    arithmetic, ``[N, n_bits]`` bits for sparse parity) and returns ``[N, 1, n_classes]`` logits
    at the task's one loss slot (``positions`` is accepted for the trainer's interface and must
    be that slot). Hook points: ``mlp.hook_pre`` and ``mlp.hook_post``, ``[N, d_hidden]``.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        m = cfg.model
        _, self.n_out, self.kind = cfg.task.mlp_io()
        dtype = getattr(torch, m.dtype)
        for name, shape in mlp_shapes(cfg).items():
            mod, leaf = name.split(".")
            if not hasattr(self, mod):
                self.add_module(mod, nn.Module())
            fixed = name == "embed.W_E" and m.embed == "circle"
            getattr(self, mod).register_parameter(
                leaf, nn.Parameter(torch.zeros(shape, dtype=dtype), requires_grad=not fixed))
        self.mlp.hook_pre = HookPoint()
        self.mlp.hook_post = HookPoint()

    def input_table(self) -> Float[Tensor, "d_in d_hidden"]:
        """The collapsed ``W_input`` (PAIR's ``W_hidden_embed``): ``W_E W_in``, or ``W_in``."""
        return self.mlp.W_in if not hasattr(self, "embed") or self.cfg.model.collapsed_in \
            else self.embed.W_E @ self.mlp.W_in

    def output_table(self) -> Float[Tensor, "d_hidden n_out"]:
        """The collapsed ``W_output`` (PAIR's ``W_output_embed``): ``W_out W_E^T``, ``W_out W_U``
        or ``W_out``."""
        if self.cfg.model.collapsed_out:
            return self.mlp.W_out
        if hasattr(self, "unembed"):
            return self.mlp.W_out @ self.unembed.W_U
        return self.mlp.W_out @ self.embed.W_E.T

    def forward(self, tokens: Int[Tensor, "N n_ctx"], positions: Int[Tensor, "N K"] | None = None
                ) -> Float[Tensor, "N 1 n_classes"]:
        if self.kind == "bits":
            dt = self.mlp.W_in.dtype
            x = torch.cat([tokens.to(dt), tokens.new_ones(tokens.shape[0], 1, dtype=dt)], 1)
            pre = x @ self.mlp.W_in
        else:
            W = self.input_table()
            pre = W[tokens[:, 0]] + W[tokens[:, 1]]
        post = self.mlp.hook_post(_act(self.cfg.model.act_fn, self.mlp.hook_pre(pre)))
        out = post @ self.output_table()
        return _class_logits(out).unsqueeze(1)

    @torch.no_grad()
    def init_weights(self, seed: int) -> MLPModel:
        """Draw the weights from a CPU generator seeded with ``seed``, in state-dict order.

        ``embed.W_E``: haiku ``VarianceScaling(2)``, a normal truncated to ±2 sigma with
        ``std = sqrt(2 / d_vocab) / 0.8796`` (fan_in = rows); every other matrix: haiku
        ``Linear``'s truncated normal with ``std = 1 / sqrt(fan_in)`` (fan_in = rows), also cut at
        ±2 sigma. The circle embedding is fixed (``circle_embedding``). The draws are float32;
        with ``model.dtype: float64`` the same draws are widened, so both dtypes start equal.
        """
        g = torch.Generator().manual_seed(seed)
        for name, prm in self.named_parameters():
            if name == "embed.W_E" and self.cfg.model.embed == "circle":
                prm.copy_(circle_embedding(prm.shape[0], self.cfg.model.circle_freq, prm.dtype))
                continue
            fan_in = prm.shape[0]
            std = math.sqrt(2.0 / fan_in) / _TRUNC_STD if name == "embed.W_E" else 1.0 / math.sqrt(fan_in)
            w = torch.empty(prm.shape)
            nn.init.trunc_normal_(w, 0.0, 1.0, -2.0, 2.0, generator=g)
            prm.copy_(w * std)
        return self


def _class_logits(out: Tensor) -> Tensor:
    """One output column means a binary task: class logits ``(0, z)``."""
    return torch.cat([torch.zeros_like(out), out], -1) if out.shape[-1] == 1 else out


def has_mlp_path(cfg: Config) -> bool:
    return cfg.model.family == "mlp"


def ensemble_tables(cfg: Config, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """``(W_input [E, d_in, d_hidden], W_output [E, d_hidden, n_out])`` of every member."""
    m = cfg.model
    W_in = params["mlp.W_in"]
    if "embed.W_E" in params and not (m.collapsed_in or m.collapsed_out or "unembed.W_U" in params):
        # tied: one product W_E [W_in | W_out^T] -> [W_input | W_output^T], so that W_E's gradient
        # comes back from one matmul (no transposed copy, no sum of two paths)
        H = W_in.shape[-1]
        T = torch.bmm(params["embed.W_E"], torch.cat([W_in, params["mlp.W_out"].transpose(1, 2)], -1))
        return T[..., :H], T[..., H:].transpose(1, 2)
    W_input = W_in if m.collapsed_in or "embed.W_E" not in params else params["embed.W_E"] @ W_in
    W_out = params["mlp.W_out"]
    if m.collapsed_out:
        W_output = W_out
    elif "unembed.W_U" in params:
        W_output = W_out @ params["unembed.W_U"]
    else:
        W_output = W_out @ params["embed.W_E"].transpose(1, 2)
    return W_input, W_output


def mlp_inputs(cfg: Config, tokens: Int[Tensor, "E N n_ctx"], dtype: torch.dtype = torch.float32
               ) -> Float[Tensor, "E N d_in"]:
    """The input of every example as a row that multiplies ``W_input``: ``onehot(a) + onehot(b)``
    ``[E, N, p]`` for a pair task (so ``pre = x @ W_input``: one batched matmul, whose backward
    is a matmul too — 3x faster than two row gathers and their scatter-add backward at
    E = 64, N = 911), or the bits with the constant-1 bias feature ``[E, N, n_bits + 1]``.
    A fixed set's rows can be built once and passed to ``mlp_logits`` every step."""
    if cfg.task.mlp_io()[2] == "bits":
        bias = tokens.new_ones(*tokens.shape[:2], 1, dtype=dtype)
        return torch.cat([tokens.to(dtype), bias], 2)
    E, N = tokens.shape[:2]
    x = torch.zeros(E, N, cfg.task.mlp_io()[0], dtype=dtype, device=tokens.device)
    ones = torch.ones(E, N, 1, dtype=dtype, device=tokens.device)
    x.scatter_add_(2, tokens[..., 0:1], ones)
    return x.scatter_add_(2, tokens[..., 1:2], ones)


def mlp_logits(cfg: Config, params: dict[str, Tensor], tokens: Int[Tensor, "E N n_ctx"],
               inputs: Float[Tensor, "E N d_in"] | None = None) -> Float[Tensor, "E N 1 n_classes"]:
    """Logits of every member at its examples' one loss slot (the ensemble path).

    Args:
        params: name -> ``[E, *shape]`` (the state-dict names of ``mlp_shapes``).
        tokens: ``[E, N, 3]`` (``a b =``) or ``[E, N, n_bits]`` bits.
        inputs: ``mlp_inputs(cfg, tokens)``, if already built (a fixed set's).
    """
    W_input, W_output = ensemble_tables(cfg, params)
    x = mlp_inputs(cfg, tokens, W_input.dtype) if inputs is None else inputs
    pre = torch.bmm(x, W_input)  # (E, N, H)
    post = _act(cfg.model.act_fn, pre)
    return _class_logits(torch.bmm(post, W_output)).unsqueeze(2)
