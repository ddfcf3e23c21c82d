"""Logits at the loss slots for an ensemble of models, and the loss.

Parameters come as a dict ``name -> [E, *shape]`` (TransformerLens names, leading member axis).
The generic path runs ``HookedTransformer.forward`` once per member with ``torch.func.vmap``;
fast paths for special structure live with the model family (``groklab.models.onelayer``: the
one-layer table trick for a single last-position slot) and are chosen by a predicate.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.func import functional_call, vmap

from ..models.onelayer import TokenPlan, fast_last_logits, fast_loss, has_fast_path, plan_tokens
from ..models.transformer import HookedTransformer
from .losses import slot_loss

__all__ = ["TokenPlan", "cross_entropy", "fast_last_logits", "fast_loss", "generic_last_logits",
           "generic_logits", "has_fast_path", "plan_tokens", "slot_nll"]


def generic_last_logits(model: HookedTransformer, params: dict[str, Tensor],
                        tokens: Int[Tensor, "E batch pos"]) -> Float[Tensor, "E batch d_vocab_out"]:
    """Last-position logits of ``model`` run once per member with ``torch.func.vmap``."""

    def one(p: dict[str, Tensor], tok: Tensor) -> Tensor:
        return functional_call(model, p, (tok,))[:, -1]

    return vmap(one)(params, tokens)


def generic_logits(model: HookedTransformer, params: dict[str, Tensor], tokens: Int[Tensor, "E batch pos"],
                   positions: Int[Tensor, "E batch K"]) -> Float[Tensor, "E batch K d_vocab_out"]:
    """Logits at the loss slots ``positions`` of ``model`` run once per member (``vmap``)."""

    def one(p: dict[str, Tensor], tok: Tensor, pos: Tensor) -> Tensor:
        return functional_call(model, p, (tok, pos))

    return vmap(one)(params, tokens, positions)


def slot_nll(logits: Float[Tensor, "... V"], labels: Int[Tensor, "..."], dtype: torch.dtype
             ) -> Float[Tensor, "..."]:
    """Negative log-likelihood of every slot, log-softmax in ``dtype`` (``train.losses.slot_loss``
    with softmax cross-entropy)."""
    return slot_loss(logits, labels, dtype, "cross_entropy")


def cross_entropy(logits: Float[Tensor, "E batch d_vocab_out"], labels: Int[Tensor, "E batch"],
                  dtype: torch.dtype) -> Float[Tensor, " E"]:
    """Mean cross-entropy per member, with log-softmax taken in ``dtype``.

    float64 is the paper's ``cross_entropy_high_precision``; in float32 the log-softmax can only
    return multiples of ~1.2e-7, which produces the "slingshot" loss spikes (Nanda et al. 2023).
    """
    return slot_loss(logits, labels, dtype, "cross_entropy").mean(-1)
