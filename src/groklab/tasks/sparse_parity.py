"""Sparse parity (Barak et al. 2022; PAIR's "Generalizing With 1s and 0s", ``pair.md`` §1.3).

An example is ``n_bits`` random bits; the label is the parity of the first ``k`` (1 when an odd
number of them are 1). PAIR's showcased run: n = 30, k = 3, a fixed training set of 1,200
sequences. Tokens are the bits themselves (ids 0 and 1), so a transformer can read them too;
the MLP family reads them as a vector with a constant-1 bias feature appended
(``mlp.W_in`` is ``[n_bits + 1, d_hidden]``) and emits one logit. The one loss slot sits at the
last position (part ``parity``); the labels are the classes ``even`` (0) and ``odd`` (1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import Batch, SampledTaskConfig, Task


@dataclass(frozen=True)
class SparseParityConfig(SampledTaskConfig):
    """``task.*`` keys of ``task.name: sparse_parity``. Defaults: PAIR's showcased run."""

    name: str = "sparse_parity"  # the task
    n_bits: int = 30  # bits per sequence
    k: int = 3  # the label is the parity of bits 0 .. k-1; the rest are distractors
    n_train: int | None = 1200  # PAIR's fixed batch of 1,200 sequences; None: infinite data
    n_test: int = 5000  # held-out sequences (PAIR's sparse-parity hyper_shared.json test_size)

    def validate(self) -> None:
        super().validate()
        if self.n_bits < 1:
            raise ConfigError(f"task.n_bits: {self.n_bits} must be >= 1")
        if not 1 <= self.k <= self.n_bits:
            raise ConfigError(f"task.k: {self.k} must be in 1 .. task.n_bits ({self.n_bits})")

    @property
    def n_classes(self) -> int:
        return 2

    def dims(self) -> tuple[int, int, int]:
        return self.n_bits, 2, 2

    def mlp_io(self) -> tuple[int, int, str]:
        """``(inputs, output logits, input kind)`` of the MLP family: the bits plus a bias
        feature in, one logit out (binary cross-entropy), a bit-vector input."""
        return self.n_bits + 1, 1, "bits"


class SparseParity(Task):
    name = "sparse_parity"

    def __init__(self, cfg: SparseParityConfig):
        super().__init__(cfg)
        self.vocab = ("0", "1")
        self.out_vocab = ("even", "odd")
        self.n_ctx = cfg.n_bits
        self.part_names = ("parity",)

    def sample(self, n: int, g: torch.Generator) -> Batch:
        bits = torch.randint(0, 2, (n, self.cfg.n_bits), generator=g)
        label = bits[:, :self.cfg.k].sum(1) % 2
        return Batch(bits, torch.full((n, 1), self.cfg.n_bits - 1), label.unsqueeze(1),
                     torch.zeros(n, 1, dtype=torch.long))

    def describe(self, tokens: torch.Tensor) -> str:
        bits = "".join(str(int(t)) for t in tokens)
        return f"{bits[:self.cfg.k]}|{bits[self.cfg.k:]}"
