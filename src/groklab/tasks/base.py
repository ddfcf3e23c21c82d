"""What every task declares, and the data stream the trainer reads from it.

A task is one module under ``groklab.tasks`` that defines a frozen config dataclass (the
``task.*`` keys) and a ``Task`` subclass. The task declares its vocabulary, ``n_ctx``, and how an
example is drawn: a ``Batch`` names, for every example, the ``K`` positions whose logits carry a
loss, their labels, and the named *part* of the loss each belongs to (``digit0``..., ``copy1``...).
The trainer, the run directory and the report shell know nothing else about a task.

Randomness is counter-based: the batch of step ``s`` is drawn from a generator seeded with
``(data_seed, stream, s)``, so a resumed run sees exactly the stream an uninterrupted run sees
without any generator state in the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from ..errors import ConfigError

# stream ids of ``generator``: one independent random stream per use
TRAIN_SET, TEST_SET, TRAIN_STEP, TEST_STEP, SHUFFLE = 1, 2, 3, 4, 5


def generator(data_seed: int, stream: int, index: int = 0) -> torch.Generator:
    """A CPU generator seeded from ``(data_seed, stream, index)`` through numpy's SeedSequence
    (well mixed: nearby seeds give unrelated streams). Touches no global RNG."""
    ss = np.random.SeedSequence([data_seed & 0xFFFFFFFF, stream, index])
    seed = int(ss.generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)


@dataclass(frozen=True)
class Batch:
    """Examples and the loss slots of each.

    Attributes:
        tokens: ``[N, n_ctx]`` int64 token ids.
        positions: ``[N, K]`` int64, the position whose logits predict slot ``k``.
        labels: ``[N, K]`` int64 target class of slot ``k`` (in ``0 .. d_vocab_out - 1``).
        parts: ``[N, K]`` int64 index into ``Task.part_names``: which named part of the loss the
            slot belongs to.
    """

    tokens: Int[Tensor, "N n_ctx"]
    positions: Int[Tensor, "N K"]
    labels: Int[Tensor, "N K"]
    parts: Int[Tensor, "N K"]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def index(self, idx: Tensor) -> Batch:
        return Batch(self.tokens[idx], self.positions[idx], self.labels[idx], self.parts[idx])

    def to(self, device) -> Batch:
        return Batch(*(t.to(device) for t in (self.tokens, self.positions, self.labels, self.parts)))

    @staticmethod
    def stack(batches: list[Batch]) -> Batch:
        """Stack members' batches along a new leading axis: every field becomes ``[E, N, ...]``."""
        return Batch(*(torch.stack([getattr(b, f.name) for b in batches]) for f in fields(Batch)))


@dataclass(frozen=True)
class SampledTaskConfig:
    """Keys shared by the tasks whose examples are drawn at random (all but ``modular``)."""

    name: str = ""  # the task (set by each subclass)
    data_seed: int = 0  # seeds the training set, the test set and fresh batches (never the init)
    n_train: int | None = None  # examples drawn once (finite data); None: a fresh batch every step
    n_test: int = 256  # held-out examples per evaluation
    test_fresh: bool = False  # True: a fresh test batch at each evaluation; False: one fixed test set

    def validate(self) -> None:
        if self.n_train is not None and self.n_train < 1:
            raise ConfigError(f"task.n_train: {self.n_train} must be >= 1, or null for infinite data")
        if self.n_test < 1:
            raise ConfigError(f"task.n_test: {self.n_test} must be >= 1")

    def dims(self) -> tuple[int, int, int]:  # pragma: no cover - every task overrides it
        """``(n_ctx, d_vocab, d_vocab_out)`` of the task."""
        raise NotImplementedError


class Task:
    """Base class of a task. Subclasses set the class attributes and implement ``sample``.

    Attributes:
        name: the ``task.name`` that selects it.
        vocab: display name of every input token id (``len == d_vocab``).
        out_vocab: display name of every output class (``len == d_vocab_out``).
        n_ctx: sequence length.
        part_names: the named parts of the loss, indexed by ``Batch.parts``.
    """

    name: ClassVar[str]
    vocab: tuple[str, ...]
    out_vocab: tuple[str, ...]
    n_ctx: int
    part_names: tuple[str, ...]

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def sample(self, n: int, g: torch.Generator) -> Batch:
        """Draw ``n`` examples from ``g``. Deterministic in the generator state."""
        raise NotImplementedError

    def data(self, batch_size: int | None, cfg: Any = None) -> TaskData:
        """The stream the trainer reads (see ``TaskData``); ``cfg``: the run's full config, for a
        task whose stream depends on more than its own keys."""
        return TaskData(self, batch_size)

    def describe(self, tokens: Tensor) -> str:
        """One example as text, tokens by their display names."""
        return " ".join(self.vocab[int(t)] for t in tokens)


class TaskData:
    """Training and test batches of a sampled task, a pure function of ``(config, step)``.

    * finite (``n_train`` set): ``n_train`` examples drawn once; full batch when ``batch_size``
      is None, else minibatches from a permutation drawn per epoch (the last batch of an epoch
      may be smaller, as a DataLoader with ``drop_last=False``);
    * infinite (``n_train`` null): a fresh batch of ``batch_size`` every step.
    * test: one fixed set of ``n_test`` examples, or (``test_fresh``) a fresh one per evaluation.
    """

    def __init__(self, task: Task, batch_size: int | None, train: Batch | None = None,
                 test: Batch | None = None):
        cfg = task.cfg
        self.task, self.batch_size = task, batch_size
        if train is not None:  # a task with a fixed split of its own (modular arithmetic)
            self.infinite, self.train, self.test, self.test_fresh = False, train, test, False
            self.full_batch = batch_size is None or batch_size >= len(train)
            return
        self.infinite = cfg.n_train is None
        if self.infinite and batch_size is None:
            raise ConfigError("train.batch_size: infinite data (task.n_train null) needs a batch size, "
                              "e.g. --train.batch_size 64")
        self.train = None if self.infinite else self.draw_set(cfg.n_train, TRAIN_SET)
        self.full_batch = not self.infinite and (batch_size is None or batch_size >= cfg.n_train)
        self.test_fresh = cfg.test_fresh
        self.test = None if cfg.test_fresh else self.draw_set(cfg.n_test, TEST_SET)

    # the draws (a subclass may replace them: tasks.notebook_draws)
    def draw_set(self, n: int, stream: int) -> Batch:
        """The fixed set of ``n`` examples of ``stream`` (``TRAIN_SET`` or ``TEST_SET``)."""
        return self.task.sample(n, generator(self.task.cfg.data_seed, stream))

    def fresh_batch(self, step: int) -> Batch:
        """Infinite data: the fresh batch of step ``step``."""
        return self.task.sample(self.batch_size, generator(self.task.cfg.data_seed, TRAIN_STEP, step))

    def epoch_permutation(self, epoch: int) -> Tensor:
        """Minibatches: the order of the training set in 0-based epoch ``epoch``."""
        return torch.randperm(len(self.train), generator=generator(self.task.cfg.data_seed, SHUFFLE, epoch))

    def train_batch(self, step: int) -> Batch:
        """The batch of 0-based optimizer step ``step``."""
        if self.infinite:
            return self.fresh_batch(step)
        if self.full_batch:
            return self.train
        bs = self.batch_size
        epoch, i = divmod(step, math.ceil(len(self.train) / bs))
        return self.train.index(self.epoch_permutation(epoch)[i * bs:(i + 1) * bs])

    def test_batch(self, step: int) -> Batch:
        """The test examples of the evaluation at ``step``."""
        if not self.test_fresh:
            return self.test
        cfg = self.task.cfg
        return self.task.sample(cfg.n_test, generator(cfg.data_seed, TEST_STEP, step))
