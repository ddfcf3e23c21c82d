"""Hand-set weights: PAIR's star construction for modular addition (Appendix A of the post).

Pearce et al. 2023, "Do Machine Learning Models Memorize or Generalize?", "Modular Addition With
Five Neurons" and Appendix A (reference notes ``pair.md`` §1.4). The MLP model family's state dict
for (a + b) mod p with a tied embedding (no biases, float32):

- ``embed.W_E`` ``[p, d_embed]``, ``mlp.W_in`` ``[d_embed, d_hidden]``, ``mlp.W_out``
  ``[d_hidden, d_embed]``;
- ``logits[c] = (act(W_E[a] @ W_in + W_E[b] @ W_in) @ W_out) @ W_E[c]``, act ReLU or x^2.

The construction, per frequency k (omega = 2 pi k / p) and N neurons: the embedding puts the
numbers on the unit circle, ``E_i = (cos i omega, sin i omega)``; neuron j projects on the
direction ``theta_j = 2 pi j / N + phase`` and writes back along the doubled angle ``2 theta_j``.
With x^2 the logits are exactly (derivation in the post's Appendix A; constant worked out here)::

    l_c = N cos^2((a - b) omega / 2) cos((a + b - c) omega)

for N not dividing 4 (N not in {1, 2, 4}): the sums over j of cos(c omega - 2 theta_j) and of
cos((a + b + c) omega - 4 theta_j) vanish, and the rest is N / 2 * 2 cos^2(.) cos(.). For odd p,
cos^2((a - b) pi k / p) > 0, so the argmax over c is a + b mod p whenever k is coprime to p (for
a k sharing a factor with p, cos((a + b - c) omega) = 1 at several c and the logits tie). For even
p the pairs with a - b = p / 2 get all-zero logits. Several frequencies in one model add their
logits. With ReLU the construction is only approximate: on the grid it is exact for N = 5, 7,
9, 10 and not for N = 3, 4, 6, 8 at p = 67, 97, 113 (measured; ``pair.md`` §1.4's numerical check).

PAIR's notebook (``MLP_Modular_Addition_Fixed_Embed.ipynb``) L2-normalises each embedding column
(radius sqrt(2/p)); here the embedding is the unit circle the post draws. ReLU and x^2 are
positively homogeneous, so the radius scales all logits by one positive constant and changes no
argmax.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

ACTS = ("relu", "quadratic")
KEYS = ("embed.W_E", "mlp.W_in", "mlp.W_out")


def _act(name: str):
    if name == "relu":
        return torch.relu
    if name == "quadratic":
        return torch.square
    raise ValueError(f"unknown act {name!r}; pass act='relu' or act='quadratic' (x^2)")


def star_weights(p: int, n_neurons: int, act: str = "relu", freqs: Sequence[int] = (1,),
                 phase: float = 0.0) -> dict[str, Tensor]:
    """The star construction's state dict for the MLP model family.

    Args:
        p: the modulus (number of tokens and classes), >= 3. Exact only for odd p.
        n_neurons: N, neurons per frequency, >= 1 (x^2: exact for N not in {1, 2, 4}; ReLU:
            measured exact for N = 5, 7, 9, 10).
        act: ``"relu"`` or ``"quadratic"``; the weights do not depend on it (it is checked so
            that a wrong name fails here, not at evaluation).
        freqs: F distinct frequencies k in 1..(p-1)//2, one block of N neurons each.
        phase: a rotation (radians) added to every neuron angle ``theta_j = 2 pi j / N``.

    Returns:
        ``{"embed.W_E": [p, 2F], "mlp.W_in": [2F, N F], "mlp.W_out": [N F, 2F]}``, float32.
        Embedding columns ``2f, 2f+1`` are ``cos, sin(2 pi k_f i / p)``. Block f of W_in's
        columns (``f N .. f N + N - 1``) has column j = ``(cos theta_j, sin theta_j)`` in rows
        ``2f, 2f+1`` and zeros elsewhere; W_out's rows in that block are
        ``(cos 2 theta_j, sin 2 theta_j)`` in columns ``2f, 2f+1``.

    Raises:
        ValueError: for p < 3, n_neurons < 1, an empty, repeated or out-of-range frequency, a
            non-finite phase or an unknown act.

    Source: PAIR grokking post, Appendix A ("W_embed row i = (cos iw, sin iw) ... W_out-proj
    row i = (cos 2i theta, sin 2i theta)"); ``pair.md`` §1.4.
    """
    _act(act)
    if not (isinstance(p, int) and p >= 3):
        raise ValueError(f"p must be an int >= 3 (the modulus), got {p!r}; odd p for an exact "
                         "construction, e.g. p=67")
    if not (isinstance(n_neurons, int) and n_neurons >= 1):
        raise ValueError(f"n_neurons must be an int >= 1, got {n_neurons!r}; e.g. n_neurons=5 "
                         "(PAIR's five neurons)")
    ks = list(freqs)
    top = (p - 1) // 2
    if not ks or any(not isinstance(k, int) or not 1 <= k <= top for k in ks) or len(set(ks)) != len(ks):
        raise ValueError(f"freqs must be distinct ints in 1..{top} (= (p-1)//2 for p={p}), got "
                         f"{tuple(freqs)!r}; e.g. freqs=(1,)")
    if not math.isfinite(phase):
        raise ValueError(f"phase must be a finite angle in radians, got {phase!r}")
    F, N = len(ks), n_neurons
    i = torch.arange(p, dtype=torch.float64)
    theta = 2 * math.pi * torch.arange(N, dtype=torch.float64) / N + phase  # (N,)
    W_E = torch.zeros(p, 2 * F, dtype=torch.float64)
    W_in = torch.zeros(2 * F, N * F, dtype=torch.float64)
    W_out = torch.zeros(N * F, 2 * F, dtype=torch.float64)
    for f, k in enumerate(ks):
        rows, block = slice(2 * f, 2 * f + 2), slice(f * N, (f + 1) * N)
        angle = 2 * math.pi * k * i / p  # (p,)
        W_E[:, rows] = torch.stack([torch.cos(angle), torch.sin(angle)], 1)  # (p, 2)
        W_in[rows, block] = torch.stack([torch.cos(theta), torch.sin(theta)])  # (2, N)
        W_out[block, rows] = torch.stack([torch.cos(2 * theta), torch.sin(2 * theta)], 1)  # (N, 2)
    return {"embed.W_E": W_E.float(), "mlp.W_in": W_in.float(), "mlp.W_out": W_out.float()}


def grid_logits(state: Mapping[str, Tensor], p: int, act: str) -> Float[Tensor, "p p p"]:
    """The MLP model's logits on every input pair, in float64.

    Args:
        state: an MLP state dict with ``embed.W_E`` ``[p, d_embed]``, ``mlp.W_in``
            ``[d_embed, d_hidden]`` and ``mlp.W_out`` ``[d_hidden, d_embed]`` (extra keys ignored).
        p: the modulus; must equal ``W_E``'s row count.
        act: ``"relu"`` or ``"quadratic"``.

    Returns:
        ``[p, p, p]`` logits indexed (a, b, c):
        ``(act(W_E[a] @ W_in + W_E[b] @ W_in) @ W_out) @ W_E[c]``.

    Raises:
        ValueError: for an unknown act, a missing key, or shapes that do not fit together.
    """
    f = _act(act)
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise ValueError(f"state lacks {missing}; it needs {list(KEYS)} (e.g. from star_weights)")
    W_E, W_in, W_out = (state[k].detach().to(torch.float64) for k in KEYS)
    d_embed, d_hidden = W_in.shape if W_in.ndim == 2 else (None, None)
    if W_E.shape != (p, d_embed) or W_out.shape != (d_hidden, d_embed):
        raise ValueError(f"shapes do not fit p={p}: embed.W_E {tuple(W_E.shape)}, mlp.W_in "
                         f"{tuple(W_in.shape)}, mlp.W_out {tuple(W_out.shape)}; expected [p, d_embed], "
                         "[d_embed, d_hidden], [d_hidden, d_embed]")
    pre = W_E @ W_in  # (p, d_hidden)
    hidden = f(pre[:, None, :] + pre[None, :, :])  # (p, p, d_hidden)
    return hidden @ (W_out @ W_E.T)  # (p, p, p)


def grid_accuracy(state: Mapping[str, Tensor], p: int, act: str) -> float:
    """Fraction of the p^2 pairs whose correct class (a + b) mod p strictly wins.

    A pair counts only if its correct logit exceeds every other class's logit by more than 1e-9
    times the largest |logit| on the whole grid, so ties (and float64 round-off around them)
    count as wrong, as do pairs whose logits are all zero.

    Args:
        state, p, act: as in ``grid_logits``.

    Returns:
        The accuracy in [0, 1].

    Raises:
        ValueError: as ``grid_logits``.
    """
    logits = grid_logits(state, p, act)  # (p, p, p)
    i = torch.arange(p)
    target = (i[:, None] + i[None, :]) % p  # (p, p)
    correct = logits.gather(-1, target[..., None])[..., 0]  # (p, p)
    others = logits.scatter(-1, target[..., None], -math.inf).amax(-1)  # (p, p)
    tol = 1e-9 * float(logits.abs().max())
    return float(((correct - others) > tol).double().mean())


def star_config(p: int, n_neurons: int, act: str = "relu", freqs: Sequence[int] = (1,)):
    """The ``Config`` of a star construction: the MLP family with ``d_embed = 2F``,
    ``d_hidden = N F``, a tied embedding and PAIR's task split (a <= b pairs, 40% train), so
    its metrics read like a ``pair2023`` run's. Raises ConfigError for a p that is not an odd
    prime."""
    from .config import Config, MLPConfig, TaskConfig, TrainConfig

    cfg = Config(
        task=TaskConfig(p=p, frac_train=0.4, data_seed=0, split="numpy_permutation", symmetric=True),
        model=MLPConfig(d_embed=2 * len(freqs), d_hidden=n_neurons * len(freqs), act_fn=act, embed="tied"),
        train=TrainConfig(steps=1, weight_decay=0.0, warmup_steps=0, eval_every=1, checkpoint_every=1,
                          loss_reduction="class_mean"),
        preset=f"construct-star-{act}-N{n_neurons}-k{','.join(map(str, freqs))}",
    )
    return cfg.resolved()


def write_run(run_dir, cfg, state: Mapping[str, Tensor]) -> None:
    """Write a one-checkpoint run (step 0) of hand-set weights ``state`` into ``run_dir``: the
    same ``config.json``, ``metrics.jsonl`` (one row, evaluated) and checkpoint files as a
    trained run, so ``groklab analyze`` and ``groklab report`` read it unchanged.

    Raises:
        RunError: ``run_dir`` exists and is not empty.
        KeyError: ``state`` lacks a weight of ``cfg``'s model.
    """
    from pathlib import Path

    from .train.loop import Member, Trainer

    trainer = Trainer([Member(cfg, Path(run_dir))], progress=False)
    trainer.start_fresh(record=False)
    with torch.no_grad():
        for k, v in trainer.params.items():
            v[0].copy_(state[k])
    trainer.record(0.0)
    trainer.save()
