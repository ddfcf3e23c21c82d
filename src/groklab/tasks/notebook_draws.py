"""The induction notebook's own random draws (``task.rng: notebook``), to replay its saved runs.

Nanda & Lieberum's ``Non_Modular_Addition_Grokking_Tasks.ipynb`` (``zoo.md`` §2) draws its data
from numpy's global generator and its init and batch order from torch's global generator. With
the same draws, groklab's trainer follows the saved run ``induction_head_finite.pth`` step for
step (the train loss agrees to ~1e-7 over the first epochs; ``tests/unit/test_notebook_draws.py``
checks it against the saved losses). groklab's own counter-based draws (``task.rng: torch``) give
an equally valid but different training set and init, and the memorisation plateau of this task
varies a lot between draws (README, *Phase-change tasks*).

The three streams, each a pure function of the config and the step:

* data: ``np.random.seed(data_seed)``, then one ``make_batch`` of ``n_train`` sequences (finite),
  or the ``s``-th ``make_batch`` of ``batch_size`` at step ``s`` (infinite); the test set is one
  ``make_batch`` of ``n_test`` after ``np.random.seed(data_seed + 1)``. Within a batch: noise
  ``randint(1, vocab_size, (n, seq_len))`` with position 0 set to BEGIN, then one
  ``randint(lo_i, hi_i, (n,))`` per copy for the start positions.
* init (``notebook_init``): ``torch.manual_seed(train.seed)``, then ``randn`` in the notebook's
  module order and layouts: ``W_E [d_model, d_vocab]``, ``W_pos [n_ctx, d_model]``, per layer
  ``W_K, W_Q, W_V [heads, d_head, d_model]`` (/ sqrt(d_head)) and ``W_O [d_model, heads *
  d_head]``, then ``W_U [d_model, d_vocab_out]`` (/ sqrt(d_vocab_out)); the rest / sqrt(d_model).
* batch order: each epoch, ``iter(DataLoader(shuffle=True))`` draws two int64s
  ``torch.empty((), dtype=int64).random_()`` from the global generator (which continues after
  the init): the workers' base seed, then the sampler's seed; it serves ``torch.randperm(n,
  generator=Generator().manual_seed(seed))``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from .base import TEST_SET, Batch, TaskData


def notebook_batch(cfg: Any, n: int, rs: np.random.RandomState) -> Batch:
    """``n`` repeated-subsequence examples drawn from ``rs`` as the notebook's ``make_batch``
    does (``zoo.md`` §2, *Data format*); the loss slots as in ``RepeatedSubsequence.sample``."""
    L, R, V, S = cfg.subseq_len, cfg.num_repeats, cfg.vocab_size, cfg.seq_len
    tokens = rs.randint(1, V, (n, S))
    tokens[:, 0] = 0
    interval = (S - 1) // R
    starts = np.stack([rs.randint(1 + i * interval, 1 + (i + 1) * interval - (L - 1), (n,))
                       for i in range(R)], axis=1)  # [n, R]
    rows = np.arange(n)[:, None]
    offs = np.arange(L)
    for i in range(1, R):
        tokens[rows, starts[:, i:i + 1] + offs] = tokens[rows, starts[:, :1] + offs]
    tok = torch.from_numpy(tokens).long()
    pos = torch.from_numpy((starts[:, 1:, None] + offs[:-1]).reshape(n, -1)).long()
    labels = tok.gather(1, pos + 1)
    parts = torch.arange(R - 1).repeat_interleave(L - 1).expand(n, -1).contiguous()
    return Batch(tok, pos, labels, parts)


def notebook_init(m: Any, seed: int) -> tuple[dict[str, Tensor], torch.Generator]:
    """The induction notebook's init of the weight matrices of an attention-only model ``m`` (a
    ``ModelConfig``), in TransformerLens layout (``W_E [d_vocab, d_model]``, ``W_Q [H, d_model,
    d_head]``, ``W_O [H, d_head, d_model]``...), and the torch generator in the state the
    notebook's global one has after it (the batch order continues from there). The notebook's
    model has no biases or LayerNorm; a model with them keeps them at 0 and 1 (no draws).

    Raises:
        ConfigError: the model has MLPs (the notebook's induction model has none to draw).
    """
    if not m.attn_only:
        raise ConfigError("task.rng: notebook draws the init of the induction notebook's model, which "
                          "is attention-only: set model.attn_only true, or use task.rng torch")
    g = torch.Generator().manual_seed(seed)
    H, Dh, D = m.n_heads, m.d_head, m.d_model

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g)

    out = {"embed.W_E": (randn(D, m.d_vocab) / math.sqrt(D)).T.contiguous(),
           "pos_embed.W_pos": randn(m.n_ctx, D) / math.sqrt(D)}
    for layer in range(m.n_layers):
        a = f"blocks.{layer}.attn."
        for w in ("W_K", "W_Q", "W_V"):
            out[a + w] = (randn(H, Dh, D) / math.sqrt(Dh)).transpose(1, 2).contiguous()
        out[a + "W_O"] = (randn(D, H * Dh) / math.sqrt(D)).T.reshape(H, Dh, D).contiguous()
    out["unembed.W_U"] = randn(D, m.d_vocab_out) / math.sqrt(m.d_vocab_out)
    return out, g


class NotebookData(TaskData):
    """``TaskData`` with the notebook's draws (module docstring) in place of groklab's. ``cfg``
    is the run's full config: the batch order continues after the init (``train.seed``, the
    model's shapes)."""

    def __init__(self, task: Any, batch_size: int | None, cfg: Any):
        if cfg is None:
            raise ValueError("NotebookData needs the run's full config (the batch order follows the init)")
        if task.cfg.test_fresh:
            raise ConfigError("task.test_fresh: the notebook keeps one fixed test set; with task.rng "
                              "notebook set task.test_fresh false")
        _, self._order_g = notebook_init(cfg.model, cfg.train.seed)
        self._epoch_seeds: list[int] = []
        self._stream: tuple[int, np.random.RandomState] | None = None  # (next step, state)
        super().__init__(task, batch_size)

    def draw_set(self, n: int, stream: int) -> Batch:
        seed = self.task.cfg.data_seed + (stream == TEST_SET)  # the test set: data_seed + 1
        return notebook_batch(self.task.cfg, n, np.random.RandomState(seed))

    def fresh_batch(self, step: int) -> Batch:
        """The step-th batch of one numpy stream, replayed from the start after a resume."""
        t = self.task.cfg
        if self._stream is None or self._stream[0] > step:
            self._stream = (0, np.random.RandomState(t.data_seed))
        nxt, rs = self._stream
        for _ in range(step - nxt):
            notebook_batch(t, self.batch_size, rs)
        self._stream = (step + 1, rs)
        return notebook_batch(t, self.batch_size, rs)

    def epoch_permutation(self, epoch: int) -> Tensor:
        """The DataLoader's permutation of the training set in 0-based epoch ``epoch``."""
        while len(self._epoch_seeds) <= epoch:
            draw = [int(torch.empty((), dtype=torch.int64).random_(generator=self._order_g))
                    for _ in range(2)]
            self._epoch_seeds.append(draw[1])  # the first is the iterator's worker base seed
        g = torch.Generator().manual_seed(self._epoch_seeds[epoch])
        return torch.randperm(len(self.train), generator=g)
