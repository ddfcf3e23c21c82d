"""n-digit addition (Nanda & Lieberum 2022, "Phase Changes"; ``../shared/reference/zoo.md`` §1).

Layout for ``n_digits = n`` (``n_ctx = 3n + 3``; 18 for n = 5)::

    x_1 .. x_n  +  y_1 .. y_n  =  s_0 s_1 .. s_n        (most significant digit first)

``s_0`` is the final carry (0 or 1), ``s_n`` the units digit. The logits at positions
``2n + 1 .. 3n + 1`` (the '=' token and the first n answer tokens) predict ``s_0 .. s_n``: n + 1
loss slots, parts ``digit0`` (the carry) .. ``digitn`` (the units). Digits of x and y are uniform
on 0..9, drawn independently. Vocabulary: 0-9 digits, 10 = '+', 11 = '='; outputs: the 10 digits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import Batch, SampledTaskConfig, Task

PLUS, EQUALS = 10, 11


@dataclass(frozen=True)
class DigitAdditionConfig(SampledTaskConfig):
    """``task.*`` keys of ``task.name: digit_addition``. Defaults: the notebook's finite cell."""

    name: str = "digit_addition"  # the task
    n_digits: int = 5  # digits per summand (the paper also mentions 15, with 16 phase changes)
    n_train: int | None = 750  # the cell's num_data (the paper says 700); None: infinite data
    n_test: int = 64  # the notebook's test batch
    test_fresh: bool = True  # the notebook draws a fresh test batch at each evaluation

    def validate(self) -> None:
        super().validate()
        if self.n_digits < 1:
            raise ConfigError(f"task.n_digits: {self.n_digits} must be >= 1")

    def dims(self) -> tuple[int, int, int]:
        return 3 * self.n_digits + 3, 12, 10


def add_digits(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Ripple-carry sum of digit rows, MSB first: ``[N, n], [N, n] -> [N, n + 1]`` (carry first)."""
    N, n = x.shape
    out = torch.zeros(N, n + 1, dtype=torch.long)
    carry = torch.zeros(N, dtype=torch.long)
    for i in range(n - 1, -1, -1):
        s = x[:, i] + y[:, i] + carry
        out[:, i + 1], carry = s % 10, s // 10
    out[:, 0] = carry
    return out


class DigitAddition(Task):
    name = "digit_addition"

    def __init__(self, cfg: DigitAdditionConfig):
        super().__init__(cfg)
        n = cfg.n_digits
        self.vocab = tuple(str(i) for i in range(10)) + ("+", "=")
        self.out_vocab = tuple(str(i) for i in range(10))
        self.n_ctx = 3 * n + 3
        self.part_names = tuple(f"digit{i}" for i in range(n + 1))

    def sample(self, n: int, g: torch.Generator) -> Batch:
        nd = self.cfg.n_digits
        x = torch.randint(0, 10, (n, nd), generator=g)
        y = torch.randint(0, 10, (n, nd), generator=g)
        s = add_digits(x, y)
        tokens = torch.cat([x, torch.full((n, 1), PLUS), y, torch.full((n, 1), EQUALS), s], 1)
        K = nd + 1
        positions = torch.arange(2 * nd + 1, 3 * nd + 2).expand(n, K).contiguous()
        parts = torch.arange(K).expand(n, K).contiguous()
        return Batch(tokens, positions, s, parts)
