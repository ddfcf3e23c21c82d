"""``groklab bench --pair``: PAIR's MLP presets, a batched ensemble against one plain loop per run.

For ``pair2023`` (a + b mod 67, 911 training pairs, ``d_embed`` 500, 24 neurons) and
``pair-parity`` (n = 30, k = 3, 1,200 sequences, 64 neurons, L1): per-member ms per full-batch
step of N = 1, 8, 64, 256 members trained as one batched ``Trainer`` (forward, backward,
``EnsembleAdamW``), against the plain way of running N seeds: one ``nn.Module`` per run with its
own ``torch.optim`` optimiser, stepped one after the other.

The plain side is written here from PAIR's definitions (``pair.md`` §1.1, §1.3), independently
of both ``groklab.models.mlp`` and the test oracle ``tests/reference/naive_mlp.py`` (which is
not importable from an installed package): the embedding is a row lookup (``F.embedding``, what a
PyTorch user would write; PAIR's literal ``one_hot @ W_E`` is slower still), one hidden linear map
shared by a and b, ReLU, the out map and the tied unembedding ``W_E^T``; PAIR's loss, CE / p with
the log-softmax in float64 as the Trainer takes it; ``torch.optim.AdamW`` (L2), or
``grad += wd sign(w)`` then ``torch.optim.Adam`` (L1). Sparse parity: the bits and a bias
column through ``W_in [31, 64]``, ReLU, ``W_out [64, 1]``, ``F.binary_cross_entropy_with_logits``.
The plain modules start from the ensemble's members' initial weights and train on the same
full batch.

A plain step costs the same whichever N it stands for (the runs are independent), so for N > 8
only 8 of the N plain modules are timed and their time is divided by 8 (the table says so).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Config
from .presets import get_preset

PAIR_PRESETS = ("pair2023", "pair-parity")
PAIR_SIZES = (1, 8, 64, 256)
PLAIN_SUBSET = 8  # plain modules timed for N > 8


class PlainPairMLP(nn.Module):
    """PAIR's modular-addition MLP: ``act(W_E[a] W_in + W_E[b] W_in) W_out W_E^T`` (tied), with
    the ``untied`` (``@ W_U``) and collapsed (no ``W_E`` on one side) forms; no biases."""

    def __init__(self, cfg: Config, state: dict[str, Tensor]):
        super().__init__()
        m = cfg.model
        self.act, self.p = m.act_fn, cfg.task.p
        self.collapsed_in, self.collapsed_out = m.collapsed_in, m.collapsed_out
        fixed = m.embed == "circle"

        def prm(name: str, trainable: bool = True) -> nn.Parameter | None:
            v = state.get(name)
            return None if v is None else nn.Parameter(v.detach().clone(), requires_grad=trainable)

        self.W_E = prm("embed.W_E", not fixed)
        self.W_in, self.W_out, self.W_U = prm("mlp.W_in"), prm("mlp.W_out"), prm("unembed.W_U")

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if self.collapsed_in:
            h = F.embedding(a, self.W_in) + F.embedding(b, self.W_in)
        else:
            h = F.embedding(a, self.W_E) @ self.W_in + F.embedding(b, self.W_E) @ self.W_in  # [N, d_hidden]
        h = torch.relu(h) if self.act == "relu" else h * h
        out = h @ self.W_out
        if self.collapsed_out:
            return out
        return out @ (self.W_U if self.W_U is not None else self.W_E.T)  # [N, p]


class PlainParityMLP(nn.Module):
    """PAIR's sparse-parity MLP: ``relu([bits, 1] W_in) W_out``, one logit per sequence."""

    def __init__(self, state: dict[str, Tensor]):
        super().__init__()
        self.W_in = nn.Parameter(state["mlp.W_in"].detach().clone())
        self.W_out = nn.Parameter(state["mlp.W_out"].detach().clone())

    def forward(self, bits: Tensor) -> Tensor:
        x = torch.cat([bits.float(), torch.ones(bits.shape[0], 1)], 1)
        return (torch.relu(x @ self.W_in) @ self.W_out)[:, 0]


class PlainRuns:
    """N independent plain runs; calling it takes one full-batch step of each, one after the other.

    Args:
        cfg: the runs' config (they differ only in their initial weights here).
        states: each run's initial groklab state dict.
        tokens: ``[N, 3]`` pairs ``a b =`` or ``[N, n_bits]`` bits; labels: ``[N]`` classes.

    Attributes:
        models: the ``nn.Module`` of each run (``W_E``, ``W_in``, ``W_out``, ``W_U``).
    """

    def __init__(self, cfg: Config, states: list[dict[str, Tensor]], tokens: Tensor, labels: Tensor):
        t = cfg.train
        self.parity = cfg.task.name == "sparse_parity"
        self.l1, self.wd = t.regularization == "l1", t.weight_decay
        self.models: list[nn.Module] = []
        self._opts = []
        for state in states:
            model = PlainParityMLP(state) if self.parity else PlainPairMLP(cfg, state)
            params = [p for p in model.parameters() if p.requires_grad]
            kind = torch.optim.Adam if self.l1 else torch.optim.AdamW
            self._opts.append((params, kind(params, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps,
                                            weight_decay=0.0 if self.l1 else t.weight_decay)))
            self.models.append(model)
        self.tokens, self.labels = tokens, labels
        # PAIR's CE / p (class_mean); log-softmax in the Trainer's loss dtype
        self.scale = 1.0 / cfg.task.p if t.loss_reduction == "class_mean" and not self.parity else 1.0
        self.dtype = getattr(torch, t.loss_dtype)

    def __call__(self) -> None:
        x, y = self.tokens, self.labels
        for model, (params, opt) in zip(self.models, self._opts, strict=True):
            if self.parity:
                loss = F.binary_cross_entropy_with_logits(model(x).to(self.dtype), y.to(self.dtype))
            else:
                loss = F.cross_entropy(model(x[:, 0], x[:, 1]).to(self.dtype), y) * self.scale
            loss.backward()
            if self.l1:  # PAIR's l1 branch: grad += wd * sign(w), then Adam
                with torch.no_grad():
                    for w in params:
                        w.grad.add_(torch.sign(w), alpha=self.wd)
            opt.step()
            opt.zero_grad()


def _median_ms(fn: Callable[[], None], reps: int) -> tuple[float, float]:
    """(wall ms, process CPU ms) per call, medians of ``reps`` calls after one warm-up."""
    fn()
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def bench_pair(reps: int, tmp: Path, presets: tuple[str, ...] = PAIR_PRESETS,
               sizes: tuple[int, ...] = PAIR_SIZES) -> dict[str, dict[int, tuple[float, float]]]:
    """Print and return ``{preset: {N: (groklab ms, plain ms)}}`` wall-clock per member per step.

    Each figure is the best of interleaved rounds of median-of-3 timings; the process CPU time
    is printed beside it (on a machine shared with other jobs it is the steadier figure)."""
    from .train.loop import Member, Trainer

    rounds = max(2, reps // 2)
    print(f"\nPAIR's MLP: per-member ms per full-batch step, wall (cpu), best of {rounds} interleaved "
          "medians of 3; groklab = N members as one batched Trainer.train_step; plain = one nn.Module + "
          f"torch.optim per run, stepped in turn (N > {PLAIN_SUBSET}: {PLAIN_SUBSET} of the N runs timed, "
          f"per-member = their time / {PLAIN_SUBSET}); target: pair2023 at N=256 >= 10x")
    out: dict[str, dict[int, tuple[float, float]]] = {}
    for name in presets:
        cfg = get_preset(name).resolved()
        trainers, plains = {}, {}
        for n in sizes:
            members = [Member(replace(cfg, train=replace(cfg.train, seed=s)), tmp / f"{name}-{n}" / f"m{s}")
                       for s in range(n)]
            tr = Trainer(members, progress=False)
            k = min(n, PLAIN_SUBSET)
            states = [{key: v.detach().clone() for key, v in tr.member_state(e).items()} for e in range(k)]
            train = tr.train_set
            plains[n] = (PlainRuns(cfg, states, train.tokens[0], train.labels[0, :, 0]), k)
            trainers[n] = tr
        inf = float("inf")
        best = {n: {"g": [inf, inf], "p": [inf, inf]} for n in sizes}
        for _ in range(rounds):  # alternate sizes and sides so that load drift hits all
            for n in sizes:
                tr, (plain, k) = trainers[n], plains[n]
                for side, fn, div in (("g", lambda tr=tr: tr.train_step(20), n), ("p", plain, k)):
                    w, c = _median_ms(fn, 3)
                    b = best[n][side]
                    b[0], b[1] = min(b[0], w / div), min(b[1], c / div)
        t0 = trainers[sizes[0]]
        shape = "x".join(str(s) for s in t0.train_set.tokens.shape[1:])
        print(f"  {name} ({shape} training tokens, {sum(p[0].numel() for p in t0.params.values())} params "
              "per member)")
        print(f"    {'N':>5s} {'groklab':>18s} {'plain':>18s} {'ratio':>14s}  plain runs timed")
        out[name] = {}
        for n in sizes:
            (gw, gc), (pw, pc) = best[n]["g"], best[n]["p"]
            out[name][n] = (gw, pw)
            print(f"    {n:5d} {gw:7.3f} ({gc:6.3f}) ms {pw:7.3f} ({pc:6.3f}) ms "
                  f"{pw / gw:6.1f}x ({pc / gc:4.1f}x)  {plains[n][1]}", flush=True)
        del trainers, plains
    return out
