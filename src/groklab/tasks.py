"""Modular-arithmetic tasks: the full p^2 grid, its labels and the train/test split.

Inputs are the three tokens ``a b =`` with '=' as token ``p``; the label is ``op(a, b) mod p``.
Pairs are indexed lexicographically: pair ``(a, b)`` is row ``a * p + b`` of the grid.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .config import OPERATIONS, ConfigError, TaskConfig


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


def split_indices(p: int, frac_train: float, data_seed: int, split: str) -> tuple[Tensor, Tensor]:
    """Split the p^2 grid rows into train and test, ``n_train = int(frac_train * p^2)``.

    ``python_shuffle`` is the paper's rule (progress-measures-paper ``gen_train_test``): the
    lexicographic list is shuffled by ``random.seed(data_seed); random.shuffle``. With p=113,
    frac 0.3 and seed 0 this gives 3830 train and 8939 test pairs. ``torch_randperm`` is the
    TransformerLens demo's rule: ``torch.manual_seed(data_seed); torch.randperm(p*p)``.
    Neither touches the global RNG state.
    """
    n = p * p
    n_train = int(frac_train * n)
    if split == "python_shuffle":
        order = list(range(n))
        random.Random(data_seed).shuffle(order)
        perm = torch.tensor(order, dtype=torch.long)
    elif split == "torch_randperm":
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(data_seed))
    else:
        raise ConfigError(f"task.split: {split!r} is not python_shuffle or torch_randperm")
    return perm[:n_train], perm[n_train:]


def make_data(task: TaskConfig) -> ModularData:
    """Build the whole task for ``task``. Deterministic in ``task.data_seed``."""
    p = task.p
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    train_idx, test_idx = split_indices(p, task.frac_train, task.data_seed, task.split)
    return ModularData(p, tokens, labels_for(p, task.operation, task.data_seed), train_idx, test_idx)
