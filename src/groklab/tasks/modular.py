"""Modular arithmetic (Nanda et al. 2023): the full p^2 grid, its labels and the train/test split.

Inputs are the three tokens ``a b =`` with '=' as token ``p``; the label is ``op(a, b) mod p``,
predicted at the '=' position (the task's one loss slot, part ``answer``). Pairs are indexed
lexicographically: pair ``(a, b)`` is row ``a * p + b`` of the grid. The split is a fixed share
of the grid (``frac_train``), so this task has no infinite-data mode.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from ..errors import ConfigError
from .base import Batch, Task, TaskData

OPERATIONS = ("add", "subtract", "multiply", "x2xyy2", "rand")


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


@dataclass(frozen=True)
class TaskConfig:
    """``task.*`` keys of modular arithmetic (``task.name: modular``, the default)."""

    name: str = "modular"  # the task
    p: int = 113  # modulus, an odd prime
    operation: Literal["add", "subtract", "multiply", "x2xyy2", "rand"] = "add"  # c = op(a, b) mod p
    frac_train: float = 0.3  # share of the p^2 pairs used for training, in (0, 1]
    data_seed: int = 0  # seeds the train/test split only (never the init)
    # nanda2023 / TL demo / PAIR's rule
    split: Literal["python_shuffle", "torch_randperm", "numpy_permutation"] = "python_shuffle"
    symmetric: bool = False  # PAIR's is_symmetric_input: only pairs a <= b, p(p+1)/2 of them, are split

    def validate(self) -> None:
        if not is_prime(self.p) or self.p == 2:
            raise ConfigError(f"task.p: {self.p} is not an odd prime; choose e.g. 53, 97, 113")
        if not 0.0 < self.frac_train <= 1.0:
            raise ConfigError(f"task.frac_train: {self.frac_train} must be in (0, 1]")
        if int(self.frac_train * self.n_pairs) < 1:
            raise ConfigError(f"task.frac_train: {self.frac_train} leaves no training pairs at p={self.p}")

    @property
    def n_pairs(self) -> int:
        """Pairs the split draws from: p^2, or p(p+1)/2 with ``symmetric`` (a <= b)."""
        return self.p * (self.p + 1) // 2 if self.symmetric else self.p * self.p

    def mlp_io(self) -> tuple[int, int, str]:
        """``(inputs, output logits, input kind)`` of the MLP family: one-hot a and b over p
        numbers in, p classes out (no '=' token or class)."""
        return self.p, self.p, "pair"

    @property
    def n_classes(self) -> int:
        """Classes a model must be able to output (``model.d_vocab_out >= p``)."""
        return self.p

    def dims(self) -> tuple[int, int, int]:
        """``(n_ctx, d_vocab, d_vocab_out)``: ``a b =``, p numbers and '=', p + 1 outputs
        (nanda2023 keeps the '=' class; set ``model.d_vocab_out`` to p to drop it)."""
        return 3, self.p + 1, self.p + 1


ModularConfig = TaskConfig


@dataclass(frozen=True)
class ModularData:
    """The whole task: every pair, its label, and which pairs are for training.

    Attributes:
        tokens: ``[p*p, 3]`` int64, rows ``(a, b, p)`` in lexicographic order.
        labels: ``[p*p]`` int64, ``op(a, b) mod p``.
        train_idx: ``[n_train]`` rows of the grid used for training, in split order.
        test_idx: ``[p*p - n_train]`` the other rows, in split order.
    """

    p: int
    tokens: Int[Tensor, "pairs 3"]
    labels: Int[Tensor, " pairs"]
    train_idx: Int[Tensor, " n_train"]
    test_idx: Int[Tensor, " n_test"]

    @property
    def is_train(self) -> Bool[Tensor, " pairs"]:
        """``[p*p]`` bool mask of training pairs over the lexicographic grid."""
        mask = torch.zeros(self.p * self.p, dtype=torch.bool)
        mask[self.train_idx] = True
        return mask


def labels_for(p: int, operation: str, data_seed: int = 0) -> Int[Tensor, " pairs"]:
    """Labels ``op(a, b) mod p`` over the lexicographic grid, shape ``[p*p]``.

    ``rand`` is a fixed random table drawn from ``data_seed`` (a control with no structure).

    Raises:
        ConfigError: unknown operation.
    """
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    if operation == "add":
        c = a + b
    elif operation == "subtract":
        c = a - b
    elif operation == "multiply":
        c = a * b
    elif operation == "x2xyy2":
        c = a * a + a * b + b * b
    elif operation == "rand":
        g = torch.Generator().manual_seed(data_seed)
        c = torch.randint(0, p, (p * p,), generator=g)
    else:
        raise ConfigError(f"task.operation: {operation!r} is not one of {', '.join(OPERATIONS)}")
    return torch.remainder(c, p)


def split_indices(p: int, frac_train: float, data_seed: int, split: str, symmetric: bool = False
                  ) -> tuple[Tensor, Tensor]:
    """Split the p^2 grid rows into train and test, ``n_train = int(frac_train * p^2)``.

    With ``symmetric`` only the rows with a <= b (p(p+1)/2 of them, in lexicographic order) are
    split, ``n_train = int(frac_train * p(p+1)/2)`` (PAIR's ``is_symmetric_input``: 911 of 2278
    at p = 67, frac 0.4); the other rows are in neither set.

    ``python_shuffle`` is the paper's rule (progress-measures-paper ``gen_train_test``): the
    lexicographic list is shuffled by ``random.seed(data_seed); random.shuffle``. With p=113,
    frac 0.3 and seed 0 this gives 3830 train and 8939 test pairs. ``torch_randperm`` is the
    TransformerLens demo's rule: ``torch.manual_seed(data_seed); torch.randperm(p*p)``.
    ``numpy_permutation`` is PAIR's: ``np.random.RandomState(data_seed).permutation(n)``.
    None touches the global RNG state.
    """
    rows = torch.arange(p * p)
    if symmetric:
        rows = rows[rows // p <= rows % p]
    n = len(rows)
    n_train = int(frac_train * n)
    if split == "python_shuffle":
        order = list(range(n))
        random.Random(data_seed).shuffle(order)
        perm = torch.tensor(order, dtype=torch.long)
    elif split == "torch_randperm":
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(data_seed))
    elif split == "numpy_permutation":
        perm = torch.from_numpy(np.random.RandomState(data_seed).permutation(n))
    else:
        raise ConfigError(f"task.split: {split!r} is not python_shuffle, torch_randperm or numpy_permutation")
    perm = rows[perm]
    return perm[:n_train], perm[n_train:]


def make_data(task: TaskConfig) -> ModularData:
    """Build the whole task for ``task``. Deterministic in ``task.data_seed``."""
    p = task.p
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    train_idx, test_idx = split_indices(p, task.frac_train, task.data_seed, task.split,
                                        getattr(task, "symmetric", False))
    return ModularData(p, tokens, labels_for(p, task.operation, task.data_seed), train_idx, test_idx)


class ModularTask(Task):
    """``a b =`` -> ``op(a, b) mod p`` at the '=' position; one loss part, ``answer``."""

    name = "modular"

    def __init__(self, cfg: TaskConfig):
        super().__init__(cfg)
        p = cfg.p
        self.vocab = tuple(str(i) for i in range(p)) + ("=",)
        self.out_vocab = self.vocab
        self.n_ctx = 3
        self.part_names = ("answer",)
        self._data: ModularData | None = None

    @property
    def grid(self) -> ModularData:
        if self._data is None:
            self._data = make_data(self.cfg)
        return self._data

    def as_batch(self, idx: Tensor) -> Batch:
        """The grid rows ``idx`` as a ``Batch`` (slot: the last position)."""
        d = self.grid
        n = len(idx)
        return Batch(d.tokens[idx], torch.full((n, 1), 2), d.labels[idx].unsqueeze(1),
                     torch.zeros(n, 1, dtype=torch.long))

    def sample(self, n: int, g: torch.Generator) -> Batch:
        """``n`` pairs drawn uniformly (with replacement) from the whole grid."""
        return self.as_batch(torch.randint(0, self.cfg.p ** 2, (n,), generator=g))

    def data(self, batch_size: int | None, cfg: Any = None) -> TaskData:
        d = self.grid
        test = self.as_batch(d.test_idx) if len(d.test_idx) else None
        return TaskData(self, batch_size, train=self.as_batch(d.train_idx), test=test)
