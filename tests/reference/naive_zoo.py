"""Plain PyTorch versions of the three phase-change models, written the way the notebook does.

Written from ``../shared/reference/zoo.md`` (Nanda & Lieberum 2022, ``Non_Modular_Addition_
Grokking_Tasks.ipynb``), never from groklab, so that it can serve as an oracle and as the plain
side of ``groklab bench``. Tests are not a package: import it as ``from reference import
naive_zoo`` (pytest ``pythonpath``) or by file path.

* ``Transformer`` (zoo.md §0), used by 5-digit addition (§1, attention + ReLU MLP) and max element
  (§3, attention only): no LayerNorm, learned positions, ``x += attn(x)`` then ``x += mlp(x)``.
  Layouts: ``W_E [d_model, d_vocab]``, ``W_pos [n_ctx, d_model]``, ``W_Q/W_K/W_V [heads, d_head,
  d_model]``, ``W_O [heads, d_model, d_head]`` (head outputs summed), ``W_in [d_mlp, d_model]``,
  ``W_out [d_model, d_mlp]``, ``W_U [d_model, d_vocab_out]``.
* ``AttnOnlyTransformer`` (§2, repeated subsequences): 2 layers, attention only, ``W_O [d_model,
  heads * d_head]`` over the concatenated heads, and the notebook's residual as written: each
  block returns ``x + attn(x)`` and the outer loop adds that to ``x`` again, so
  ``x_{l+1} = 2 x_l + attn_l(x_l)``. Its causal mask is an ``nn.Parameter`` without gradient.

Every position goes through every layer; attention is per-head einsums, scores ``q.k`` with the
future set to ``tril(scores) - 1e10``, then ``/ sqrt(d_head)`` and softmax. Training is
``torch.optim.AdamW`` over ``model.parameters()`` (all weights decayed) with a ``LambdaLR``
warm-up ``min(step / warmup, 1)`` stepped after the optimizer, so step 0 has lr 0.

Losses (the notebook's):
* 5-digit addition: logits at positions ``-(n+2) .. -2`` (11..16) predict the last ``n + 1``
  tokens (12..17), log-softmax in float64, mean over batch x (n + 1);
* max element: the last position's logits predict the label, float64, batch mean;
* repeated subsequences: the masked loss over next-token log-probs (float32 in the notebook).
  ``induction_loss`` is the TRUE mean NLL over the masked slots (30 per sequence);
  ``induction_loss_scaled`` is the notebook's ``cross_entropy_masked``, which averages over
  ``B x (n_ctx - 1)`` and rescales by ``numel(mask) / sum(mask)`` with ``numel = B x n_ctx``:
  exactly ``n_ctx / (n_ctx - 1)`` (85/84) times the true mean.

``from_groklab_state`` builds a model from a state dict in TransformerLens layout (``W_Q [H,
d_model, d_head]``, ``W_O [H, d_head, d_model]``, ``W_in [d_model, d_mlp]``, ``W_U [d_model,
d_vocab_out]``...) and ``to_groklab_state`` maps weights (or their gradients) back.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --- the shared Transformer of zoo.md §0 --------------------------------------------------------


class Embed(nn.Module):
    def __init__(self, d_vocab: int, d_model: int):
        super().__init__()
        self.W_E = nn.Parameter(torch.randn(d_model, d_vocab) / math.sqrt(d_model))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("dbp->bpd", self.W_E[:, x])


class Unembed(nn.Module):
    def __init__(self, d_vocab_out: int, d_model: int):
        super().__init__()
        self.W_U = nn.Parameter(torch.randn(d_model, d_vocab_out) / math.sqrt(d_vocab_out))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.W_U


class PosEmbed(nn.Module):
    def __init__(self, n_ctx: int, d_model: int):
        super().__init__()
        self.W_pos = nn.Parameter(torch.randn(n_ctx, d_model) / math.sqrt(d_model))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.W_pos[:x.shape[-2]]


def _causal_softmax(scores: Tensor, mask: Tensor, d_head: int) -> Tensor:
    """``scores [b, i, q, p]``: the notebook's ``tril(s) - 1e10 (1 - mask)``, ``/ sqrt(d_head)``,
    softmax over keys ``p``."""
    P = scores.shape[-1]
    m = mask[:P, :P]
    return F.softmax((torch.tril(scores) - 1e10 * (1 - m)) / math.sqrt(d_head), dim=-1)


def _heads(attn: nn.Module, x: Tensor) -> Tensor:
    """Both notebook attentions up to the head outputs ``z [batch, head, query, d_head]``: per-head
    q, k, v from ``W_Q/W_K/W_V [heads, d_head, d_model]``, causal softmax over (q . k) / sqrt(d_head)."""
    k = torch.einsum("ihd,bpd->biph", attn.W_K, x)
    q = torch.einsum("ihd,bpd->biph", attn.W_Q, x)
    v = torch.einsum("ihd,bpd->biph", attn.W_V, x)
    scores = torch.einsum("biph,biqh->biqp", k, q)
    pattern = _causal_softmax(scores, attn.mask, attn.d_head)
    return torch.einsum("biph,biqp->biqh", v, pattern)


class Attention(nn.Module):
    """§0 attention: per-head ``W_Q/W_K/W_V [heads, d_head, d_model]``, ``W_O [heads, d_model,
    d_head]``, no biases, head outputs summed."""

    def __init__(self, d_model: int, num_heads: int, d_head: int, n_ctx: int):
        super().__init__()
        s = 1 / math.sqrt(d_model)
        self.W_K = nn.Parameter(torch.randn(num_heads, d_head, d_model) * s)
        self.W_Q = nn.Parameter(torch.randn(num_heads, d_head, d_model) * s)
        self.W_V = nn.Parameter(torch.randn(num_heads, d_head, d_model) * s)
        self.W_O = nn.Parameter(torch.randn(num_heads, d_model, d_head) * s)
        self.register_buffer("mask", torch.tril(torch.ones(n_ctx, n_ctx)))
        self.d_head = d_head

    def forward(self, x: Tensor) -> Tensor:
        z = _heads(self, x)
        return torch.einsum("idh,biqh->bqd", self.W_O, z)


class MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, act_type: str = "ReLU"):
        super().__init__()
        self.W_in = nn.Parameter(torch.randn(d_mlp, d_model) / math.sqrt(d_model))
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.randn(d_model, d_mlp) / math.sqrt(d_model))
        self.b_out = nn.Parameter(torch.zeros(d_model))
        if act_type not in ("ReLU", "GeLU"):
            raise ValueError(act_type)
        self.act_type = act_type

    def forward(self, x: Tensor) -> Tensor:
        x = torch.einsum("md,bpd->bpm", self.W_in, x) + self.b_in
        x = F.relu(x) if self.act_type == "ReLU" else F.gelu(x)
        return torch.einsum("dm,bpm->bpd", self.W_out, x) + self.b_out


class TransformerBlock(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, d_head: int, num_heads: int, n_ctx: int,
                 act_type: str, attn_only: bool):
        super().__init__()
        self.attn = Attention(d_model, num_heads, d_head, n_ctx)
        self.attn_only = attn_only
        if not attn_only:
            self.mlp = MLP(d_model, d_mlp, act_type)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x)
        if not self.attn_only:
            x = x + self.mlp(x)
        return x


class Transformer(nn.Module):
    """zoo.md §0: embed + positions, ``num_layers`` blocks, unembed; logits at every position."""

    def __init__(self, num_layers: int, d_vocab: int, d_model: int, d_mlp: int, d_head: int,
                 num_heads: int, n_ctx: int, d_vocab_out: int, act_type: str = "ReLU",
                 attn_only: bool = False):
        super().__init__()
        self.embed = Embed(d_vocab, d_model)
        self.pos_embed = PosEmbed(n_ctx, d_model)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, d_mlp, d_head, num_heads, n_ctx, act_type, attn_only)
            for _ in range(num_layers))
        self.unembed = Unembed(d_vocab_out, d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pos_embed(self.embed(x))
        for block in self.blocks:
            x = block(x)
        return self.unembed(x)


# --- the induction notebook's AttnOnlyTransformer (zoo.md §2) ----------------------------------


class ConcatAttention(nn.Module):
    """§2 attention: ``W_Q/W_K/W_V [heads, d_head, d_model]`` (init / sqrt(d_head)), ``W_O
    [d_model, heads * d_head]`` over the concatenated heads; the mask is a frozen parameter."""

    def __init__(self, d_model: int, num_heads: int, d_head: int, n_ctx: int):
        super().__init__()
        s = 1 / math.sqrt(d_head)
        self.W_K = nn.Parameter(torch.randn(num_heads, d_head, d_model) * s)
        self.W_Q = nn.Parameter(torch.randn(num_heads, d_head, d_model) * s)
        self.W_V = nn.Parameter(torch.randn(num_heads, d_head, d_model) * s)
        self.W_O = nn.Parameter(torch.randn(d_model, num_heads * d_head) / math.sqrt(d_model))
        self.mask = nn.Parameter(torch.tril(torch.ones(n_ctx, n_ctx)), requires_grad=False)
        self.d_head = d_head

    def forward(self, x: Tensor) -> Tensor:
        z = _heads(self, x)
        b, i, q_, h = z.shape
        z_flat = z.permute(0, 2, 1, 3).reshape(b, q_, i * h)  # 'b i q h -> b q (i h)'
        return torch.einsum("df,bqf->bqd", self.W_O, z_flat)


class AttnOnlyBlock(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_head: int, n_ctx: int):
        super().__init__()
        self.attn = ConcatAttention(d_model, num_heads, d_head, n_ctx)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.attn(x)  # the block already adds its residual ...


class AttnOnlyTransformer(nn.Module):
    def __init__(self, num_layers: int, d_vocab: int, d_model: int, d_head: int, num_heads: int,
                 n_ctx: int, d_vocab_out: int):
        super().__init__()
        self.embed = Embed(d_vocab, d_model)
        self.pos_embed = PosEmbed(n_ctx, d_model)
        self.blocks = nn.ModuleList(AttnOnlyBlock(d_model, num_heads, d_head, n_ctx)
                                    for _ in range(num_layers))
        self.unembed = Unembed(d_vocab_out, d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pos_embed(self.embed(x))
        for block in self.blocks:
            x = x + block(x)  # ... and the outer loop adds it again: x_{l+1} = 2 x_l + attn_l(x_l)
        return self.unembed(x)


# --- losses ------------------------------------------------------------------------------------


def digits_loss_per_token(logits: Tensor, tokens: Tensor, n_digits: int = 5) -> Tensor:
    """The per-digit loss vector ``[n_digits + 1]`` (carry first): the NLL averaged over the batch
    only. Logits at positions ``-(n+2) .. -2`` predict the last ``n + 1`` tokens; float64."""
    trunc = logits[:, -(n_digits + 2):-1].to(torch.float64)
    answers = tokens[:, -(n_digits + 1):]
    log_probs = trunc.log_softmax(-1)
    pred = torch.gather(log_probs, -1, answers[:, :, None])[..., 0]
    return -pred.mean(0)


def digits_loss(logits: Tensor, tokens: Tensor, n_digits: int = 5) -> Tensor:
    """The 5-digit loss: mean NLL over batch x answer tokens (float64)."""
    return digits_loss_per_token(logits, tokens, n_digits).mean()


def max_element_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """The max-element loss: the last position predicts the label; float64, batch mean."""
    log_probs = logits[:, -1].to(torch.float64).log_softmax(-1)
    return -torch.gather(log_probs, -1, labels[:, None])[:, 0].mean()


def mask_from_positions(positions: Tensor, n_ctx: int) -> Tensor:
    """The notebook's float loss mask ``[B, n_ctx]``: 1 at every position whose logits predict the
    next token (a ``[B, K]`` list of such positions)."""
    mask = torch.zeros(positions.shape[0], n_ctx)
    return mask.scatter_(1, positions, 1.0)


def _masked_log_probs(logits: Tensor, tokens: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Next-token log-probs at positions ``0 .. n_ctx - 2``, times ``mask[:, :-1]``: ``[B, n_ctx - 1]``."""
    log_probs = logits[:, :-1].to(dtype).log_softmax(-1)
    pred = torch.gather(log_probs, -1, tokens[:, 1:, None])[..., 0]
    return pred * mask[:, :-1].to(dtype)


def induction_loss(logits: Tensor, tokens: Tensor, mask: Tensor, dtype: torch.dtype = torch.float32
                   ) -> Tensor:
    """TRUE mean NLL over the masked next-token slots (30 per sequence in the notebook's data).
    The notebook takes these log-probs in float32 (no float64 cast)."""
    return -_masked_log_probs(logits, tokens, mask, dtype).sum() / mask[:, :-1].sum().to(dtype)


def induction_loss_scaled(logits: Tensor, tokens: Tensor, mask: Tensor,
                          dtype: torch.dtype = torch.float32) -> Tensor:
    """The notebook's ``cross_entropy_masked``: ``-mean`` over ``B x (n_ctx - 1)`` of the masked
    log-probs, times ``numel(mask) / sum(mask)`` (numel over ``B x n_ctx``). Equals
    ``n_ctx / (n_ctx - 1)`` times ``induction_loss`` when the last position is unmasked."""
    lp = _masked_log_probs(logits, tokens, mask, dtype)
    return -lp.mean() * (mask.numel() / mask.sum().to(dtype))


def per_token_nll(logits: Tensor, positions: Tensor, labels: Tensor, dtype: torch.dtype) -> Tensor:
    """``[B, K]`` NLL of ``labels`` at the logits of ``positions`` (for by-part checks)."""
    rows = torch.arange(logits.shape[0])[:, None]
    log_probs = logits[rows, positions].to(dtype).log_softmax(-1)
    return -torch.gather(log_probs, -1, labels[..., None])[..., 0]


# --- optimiser and one training step ------------------------------------------------------------


def notebook_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                       warmup_steps: int) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """``AdamW(model.parameters(), ...)`` and ``LambdaLR(min(step / warmup, 1))``."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(step / warmup_steps, 1))
    return opt, sched


def train_step(opt: torch.optim.Optimizer, sched, loss_fn: Callable[[], Tensor]) -> Tensor:
    """The notebook's loop body: ``loss.backward(); opt.step(); sched.step(); opt.zero_grad()``.
    Returns the (detached) loss before the update."""
    loss = loss_fn()
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    return loss.detach()


# --- TransformerLens-layout state dicts in and out ----------------------------------------------


def _n_layers(sd: dict[str, Tensor]) -> int:
    return 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))


_SUPPORTED = {"embed.W_E", "pos_embed.W_pos", "unembed.W_U"}
_SUPPORTED_BLOCK = {"attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O", "mlp.W_in", "mlp.b_in",
                    "mlp.W_out", "mlp.b_out"}


def _check_keys(sd: dict[str, Tensor]) -> None:
    for k in sd:
        leaf = k.split(".", 2)[2] if k.startswith("blocks.") else k
        if k not in _SUPPORTED and leaf not in _SUPPORTED_BLOCK:
            raise KeyError(f"{k}: not part of the notebook's models (no LayerNorm, attention or unembed "
                           "biases)")


def from_groklab_state(sd: dict[str, Tensor], doubled_residual: bool = False, act_type: str = "ReLU"
                       ) -> nn.Module:
    """A notebook model holding the weights of TransformerLens-layout ``sd``.

    ``doubled_residual``: build the §2 ``AttnOnlyTransformer`` (concatenated ``W_O``, residual
    ``2 x + attn(x)``; attention-only); otherwise the §0 ``Transformer`` (attention-only when
    ``sd`` has no MLP weights). Sizes are read from the shapes; dtype and device follow ``sd``.
    """
    _check_keys(sd)
    L = _n_layers(sd)
    d_vocab, d_model = sd["embed.W_E"].shape
    n_ctx = sd["pos_embed.W_pos"].shape[0]
    H, _, d_head = sd["blocks.0.attn.W_Q"].shape
    d_vocab_out = sd["unembed.W_U"].shape[1]
    attn_only = "blocks.0.mlp.W_in" not in sd
    d_mlp = 4 * d_model if attn_only else sd["blocks.0.mlp.W_in"].shape[1]
    ref = sd["embed.W_E"]
    if doubled_residual:
        if not attn_only:
            raise ValueError("the doubled residual is the attention-only induction model's")
        model = AttnOnlyTransformer(L, d_vocab, d_model, d_head, H, n_ctx, d_vocab_out)
    else:
        model = Transformer(L, d_vocab, d_model, d_mlp, d_head, H, n_ctx, d_vocab_out, act_type, attn_only)
    model = model.to(dtype=ref.dtype, device=ref.device)
    with torch.no_grad():
        for name, value in _to_notebook(sd, doubled_residual).items():
            model.get_parameter(name).copy_(value)
    return model


def _to_notebook(sd: dict[str, Tensor], concat_w_o: bool) -> dict[str, Tensor]:
    out = {"embed.W_E": sd["embed.W_E"].T, "pos_embed.W_pos": sd["pos_embed.W_pos"],
           "unembed.W_U": sd["unembed.W_U"]}
    for layer in range(_n_layers(sd)):
        a, m = f"blocks.{layer}.attn.", f"blocks.{layer}.mlp."
        for w in ("W_Q", "W_K", "W_V"):
            out[a + w] = sd[a + w].transpose(1, 2)  # [H, d_model, d_head] -> [H, d_head, d_model]
        W_O = sd[a + "W_O"]  # [H, d_head, d_model]
        H, Dh, D = W_O.shape
        out[a + "W_O"] = W_O.reshape(H * Dh, D).T if concat_w_o else W_O.transpose(1, 2)
        if m + "W_in" in sd:
            out[m + "W_in"] = sd[m + "W_in"].T  # [d_model, d_mlp] -> [d_mlp, d_model]
            out[m + "W_out"] = sd[m + "W_out"].T  # [d_mlp, d_model] -> [d_model, d_mlp]
            out[m + "b_in"], out[m + "b_out"] = sd[m + "b_in"], sd[m + "b_out"]
    return out


def to_groklab_state(model: nn.Module, grads: bool = False) -> dict[str, Tensor]:
    """The model's weights (or, with ``grads``, their gradients) in TransformerLens layout."""
    p = {k: (v.grad if grads else v).detach() for k, v in model.named_parameters() if v.requires_grad}
    out = {"embed.W_E": p["embed.W_E"].T, "pos_embed.W_pos": p["pos_embed.W_pos"],
           "unembed.W_U": p["unembed.W_U"]}
    for layer in range(len(model.blocks)):
        a, m = f"blocks.{layer}.attn.", f"blocks.{layer}.mlp."
        for w in ("W_Q", "W_K", "W_V"):
            out[a + w] = p[a + w].transpose(1, 2)
        H, Dh, _ = p[a + "W_Q"].shape
        W_O = p[a + "W_O"]
        out[a + "W_O"] = W_O.T.reshape(H, Dh, -1) if W_O.dim() == 2 else W_O.transpose(1, 2)
        if m + "W_in" in p:
            out[m + "W_in"], out[m + "W_out"] = p[m + "W_in"].T, p[m + "W_out"].T
            out[m + "b_in"], out[m + "b_out"] = p[m + "b_in"], p[m + "b_out"]
    return out
