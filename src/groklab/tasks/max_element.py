"""Max element of a sequence: skip trigrams (Nanda & Lieberum 2022; ``zoo.md`` §3).

A sequence is ``START, t_1 .. t_L, END`` (``n_ctx = L + 2``; 42 for L = 40). Every ``t_i`` is a
"small" noise token, except exactly one position, which holds a "large" special token
``special(label)``; it is the max element. The END position carries the only loss slot: predict
the label. Part ``label<i>`` is the loss of the examples whose label is i (one skip trigram
``special(i) .. END -> i`` each).

Ids follow the notebook: 0 = START, 1 = END, ``2 .. R + 1`` noise, ``R + 2 .. 2R + 1`` special
(``R = rand_size``, 10 by default, so d_vocab = 22 and d_vocab_out = 10). Display names follow
the paper's notation: noise ``0 .. R-1``, special ``R .. 2R-1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import Batch, SampledTaskConfig, Task

START, END = 0, 1


@dataclass(frozen=True)
class MaxElementConfig(SampledTaskConfig):
    """``task.*`` keys of ``task.name: max_element``. Defaults: the notebook's finite cell."""

    name: str = "max_element"  # the task
    rand_size: int = 10  # noise values and special values (labels) each
    seq_len: int = 40  # tokens between START and END
    n_train: int | None = 100  # the cell's num_data; None: infinite data
    n_test: int = 256  # the notebook's test batch
    test_fresh: bool = True  # the notebook draws a fresh test batch at each evaluation

    def validate(self) -> None:
        super().validate()
        if self.rand_size < 2:
            raise ConfigError(f"task.rand_size: {self.rand_size} must be >= 2")
        if self.seq_len < 1:
            raise ConfigError(f"task.seq_len: {self.seq_len} must be >= 1")

    def dims(self) -> tuple[int, int, int]:
        return self.seq_len + 2, 2 * self.rand_size + 2, self.rand_size


class MaxElement(Task):
    name = "max_element"

    def __init__(self, cfg: MaxElementConfig):
        super().__init__(cfg)
        R = cfg.rand_size
        self.vocab = ("START", "END") + tuple(str(i) for i in range(2 * R))
        self.out_vocab = tuple(str(R + i) for i in range(R))
        self.n_ctx = cfg.seq_len + 2
        self.part_names = tuple(f"label{i}" for i in range(R))

    def special_token(self, label: torch.Tensor) -> torch.Tensor:
        """Input id of the special token of ``label``."""
        return label + 2 + self.cfg.rand_size

    def sample(self, n: int, g: torch.Generator) -> Batch:
        R, L = self.cfg.rand_size, self.cfg.seq_len
        noise = torch.randint(2, 2 + R, (n, L), generator=g)
        where = torch.randint(0, L, (n,), generator=g)
        label = torch.randint(0, R, (n,), generator=g)
        noise[torch.arange(n), where] = self.special_token(label)
        tokens = torch.cat([torch.full((n, 1), START), noise, torch.full((n, 1), END)], 1)
        return Batch(tokens, torch.full((n, 1), L + 1), label.unsqueeze(1), label.unsqueeze(1).clone())
