"""A plain PyTorch version of PAIR's one-layer MLP and its training loop, the test oracle.

Written from ``../shared/reference/pair.md`` §1.1–1.4 (PAIR's ``MLP_Modular_Addition.ipynb``,
cells 15–20, and the sparse-parity section), never from groklab's model code: one ``nn.Module``
per run, autograd, ``torch.optim``. Tests are not a package: import it as
``from reference import naive_mlp`` (pytest ``pythonpath``).

Modular addition (``NaiveMLP``), in PAIR's words ``ReLU(a_onehot W_input + b_onehot W_input)
W_output``, with the matrices factored as in the notebook's ``forward``:

* ``embed``: ``x_a = one_hot(a, p) @ W_E`` (``W_E [p, d_embed]``); a and b share it;
* ``hidden``: one bias-free linear map ``W_in [d_embed, d_hidden]`` applied to ``x_a`` and to
  ``x_b`` separately, the two results summed, then ReLU (or ``x^2``, Gromov's activation);
* ``out``: ``W_out [d_hidden, d_embed]``, bias-free;
* tied unembedding: ``logits = out @ W_E^T``; untied: ``out @ W_U`` with ``W_U [d_embed, p]``.

Variants (PAIR's architecture sweep, §1.2; the five-neuron model, §1.4): ``collapsed_in`` drops
the embedding on the way in (``W_in [p, d_hidden]`` multiplies the one-hot directly);
``collapsed_out`` drops it on the way out (``W_out [d_hidden, p]`` gives the logits); ``circle``
fixes ``W_E`` to PAIR's ``gen_fixed_embed``: columns ``cos(2 pi f i / p)``, ``sin(2 pi f i / p)``,
each scaled to unit L2 norm, not trained.

Sparse parity (``NaiveParityMLP``, §1.3): the bits with a constant 1 ("Bias") appended, one
bias-free linear map ``W_in [n_bits + 1, d_hidden]``, ReLU, ``W_out [d_hidden, 1]``: one logit,
trained with ``F.binary_cross_entropy_with_logits``.

Loss: PAIR's ``-mean(one_hot(targets) * log_softmax(logits))`` averages over the batch AND the
classes (CE / p, ``class_mean``); ``mean`` is the usual batch-mean cross-entropy. Log-softmax in
float64. Optimiser: ``torch.optim.AdamW`` over ``model.parameters()`` (every weight decayed,
optax ``adamw``), or PAIR's ``l1`` branch: ``grad += wd * sign(w)``, then ``torch.optim.Adam``
without weight decay. Full batch, no schedule.

Parameter names are groklab's state-dict names (``embed.W_E``, ``mlp.W_in``, ``mlp.W_out``,
``unembed.W_U``), so ``model.load_state_dict(groklab_state)`` works.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def fixed_circle_embed(p: int, freq: int = 1, dtype: torch.dtype = torch.float32) -> Tensor:
    """PAIR's ``gen_fixed_embed([freq])``: ``[p, 2]``, cos and sin columns each of unit norm."""
    cols = []
    for trig in (math.cos, math.sin):
        c = torch.tensor([trig(2 * math.pi * freq * i / p) for i in range(p)], dtype=torch.float64)
        cols.append(c / c.norm())
    return torch.stack(cols, 1).to(dtype)


class _Holder(nn.Module):
    """A bare namespace, so that parameter names read ``embed.W_E``, ``mlp.W_in``..."""


class NaiveMLP(nn.Module):
    """PAIR's modular-addition MLP (see the module docstring); ``forward(a, b) -> [N, p]``."""

    def __init__(self, p: int, d_embed: int, d_hidden: int, act: str = "relu", embed: str = "tied",
                 collapsed_in: bool = False, collapsed_out: bool = False, circle_freq: int = 1):
        super().__init__()
        self.p, self.act = p, act
        self.embed_kind, self.collapsed_in, self.collapsed_out = embed, collapsed_in, collapsed_out
        self.embed, self.mlp = _Holder(), _Holder()
        if not (collapsed_in and collapsed_out):
            if embed == "circle":
                self.embed.register_buffer("W_E", fixed_circle_embed(p, circle_freq))
            else:
                self.embed.W_E = nn.Parameter(torch.randn(p, d_embed) / math.sqrt(p))
        d_in, d_out = (p if collapsed_in else d_embed), (p if collapsed_out else d_embed)
        self.mlp.W_in = nn.Parameter(torch.randn(d_in, d_hidden) / math.sqrt(d_in))
        self.mlp.W_out = nn.Parameter(torch.randn(d_hidden, d_out) / math.sqrt(d_hidden))
        if embed == "untied" and not collapsed_out:
            self.unembed = _Holder()
            self.unembed.W_U = nn.Parameter(torch.randn(d_embed, p) / math.sqrt(d_embed))

    def hidden(self, a: Tensor, b: Tensor) -> Tensor:
        """Post-activation hidden layer ``[N, d_hidden]``."""
        dtype = self.mlp.W_in.dtype
        a_onehot = F.one_hot(a, self.p).to(dtype)  # [N, p]
        b_onehot = F.one_hot(b, self.p).to(dtype)
        if self.collapsed_in:
            x_a, x_b = a_onehot, b_onehot
        else:
            x_a, x_b = a_onehot @ self.embed.W_E, b_onehot @ self.embed.W_E  # [N, d_embed]
        h = x_a @ self.mlp.W_in + x_b @ self.mlp.W_in  # hidden_a + hidden_b, [N, d_hidden]
        return torch.relu(h) if self.act == "relu" else h ** 2

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        out = self.hidden(a, b) @ self.mlp.W_out  # [N, d_embed] or [N, p]
        if self.collapsed_out:
            return out
        if self.embed_kind == "untied":
            return out @ self.unembed.W_U
        return out @ self.embed.W_E.T  # tied unembedding


class NaiveParityMLP(nn.Module):
    """PAIR's sparse-parity MLP: ``forward(bits [N, n_bits]) -> [N]`` logits of "odd"."""

    def __init__(self, n_bits: int, d_hidden: int):
        super().__init__()
        self.mlp = _Holder()
        self.mlp.W_in = nn.Parameter(torch.randn(n_bits + 1, d_hidden) / math.sqrt(n_bits + 1))
        self.mlp.W_out = nn.Parameter(torch.randn(d_hidden, 1) / math.sqrt(d_hidden))

    def forward(self, bits: Tensor) -> Tensor:
        x = bits.to(self.mlp.W_in.dtype)
        x = torch.cat([x, torch.ones_like(x[:, :1])], 1)  # the "Bias" column, [N, n_bits + 1]
        return (torch.relu(x @ self.mlp.W_in) @ self.mlp.W_out)[:, 0]


def pair_loss(logits: Tensor, targets: Tensor, reduction: str = "class_mean") -> Tensor:
    """PAIR's ``-mean(one_hot(targets) * log_softmax(logits))`` (``class_mean``, CE / n_classes)
    or the batch-mean cross-entropy (``mean``); float64."""
    logp = logits.double().log_softmax(-1)
    if reduction == "class_mean":
        return -(F.one_hot(targets, logits.shape[-1]).double() * logp).mean()
    return -logp.gather(1, targets[:, None]).mean()


def parity_loss(logit: Tensor, label: Tensor) -> Tensor:
    """Binary cross-entropy on the one logit, float64."""
    return F.binary_cross_entropy_with_logits(logit.double(), label.double())


def train(model: nn.Module, loss_fn, steps: int, lr: float, weight_decay: float,
          betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-8, regularization: str = "l2"
          ) -> list[float]:
    """Full-batch training; returns the loss before each step (``loss_fn(model)``).

    ``l2``: ``torch.optim.AdamW(weight_decay=wd)``; ``l1``: ``grad += wd * sign(w)``, then
    ``torch.optim.Adam`` (no decay)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if regularization == "l2":
        opt = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        if regularization == "l1":
            with torch.no_grad():
                for w in params:
                    w.grad.add_(weight_decay * torch.sign(w))
        opt.step()
    return losses
