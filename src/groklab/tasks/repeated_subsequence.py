"""Repeated subsequences: the task that needs induction heads (Nanda & Lieberum 2022;
``zoo.md`` §2; Olsson et al. 2022).

A sequence of ``seq_len`` tokens (85) starts with BEGIN (token 0); the rest are uniform on
``1 .. vocab_size - 1``. It is cut into ``num_repeats`` intervals of ``(seq_len - 1) //
num_repeats`` tokens (28); copy ``i`` of a ``subseq_len``-token subsequence (16) starts at
``s_i``, uniform on ``1 + 28 i .. 13 + 28 i``, so copies stay in their own interval. The tokens of
copy 0 are written over copies 1, 2, ... Loss slots: positions ``s_i .. s_i + subseq_len - 2``
of every copy ``i >= 1`` predict the next token (the 2nd .. 16th tokens of the copy): 15 slots
per copy, part ``copy<i>``. The first token of each copy and all noise carry no loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..errors import ConfigError
from .base import Batch, SampledTaskConfig, Task, TaskData

BEGIN = 0


@dataclass(frozen=True)
class RepeatedSubsequenceConfig(SampledTaskConfig):
    """``task.*`` keys of ``task.name: repeated_subsequence``. Defaults: the notebook's cells."""

    name: str = "repeated_subsequence"  # the task
    seq_len: int = 85  # tokens per sequence, BEGIN included (= n_ctx)
    subseq_len: int = 16  # tokens of the repeated subsequence
    num_repeats: int = 3  # copies, the first included
    vocab_size: int = 128  # token ids 0 (BEGIN) .. vocab_size - 1
    n_train: int | None = 512  # 128 x 4 sequences drawn once; None: infinite data
    n_test: int = 640  # 5 x 128 held-out sequences
    test_fresh: bool = False  # the notebook keeps one fixed test set
    # torch: groklab's counter-based draws; notebook: the notebook's numpy data, torch init and
    # DataLoader order, which replay its saved runs (tasks.notebook_draws)
    rng: Literal["torch", "notebook"] = "torch"

    def validate(self) -> None:
        super().validate()
        if self.subseq_len < 2 or self.num_repeats < 2 or self.vocab_size < 3:
            raise ConfigError("task.subseq_len and task.num_repeats must be >= 2 and task.vocab_size >= 3")
        interval = (self.seq_len - 1) // self.num_repeats
        if interval < self.subseq_len:
            raise ConfigError(
                f"task.seq_len: {self.seq_len} leaves intervals of {interval} tokens for "
                f"{self.num_repeats} copies of {self.subseq_len}; use task.seq_len >= "
                f"{self.num_repeats * self.subseq_len + 1}")

    def dims(self) -> tuple[int, int, int]:
        return self.seq_len, self.vocab_size, self.vocab_size


class RepeatedSubsequence(Task):
    name = "repeated_subsequence"

    def __init__(self, cfg: RepeatedSubsequenceConfig):
        super().__init__(cfg)
        self.vocab = ("BEGIN",) + tuple(str(i) for i in range(1, cfg.vocab_size))
        self.out_vocab = self.vocab
        self.n_ctx = cfg.seq_len
        self.part_names = tuple(f"copy{i}" for i in range(1, cfg.num_repeats))

    def data(self, batch_size: int | None, cfg: Any = None) -> TaskData:
        if self.cfg.rng == "notebook":
            from .notebook_draws import NotebookData

            return NotebookData(self, batch_size, cfg)
        return TaskData(self, batch_size)

    def starts(self, n: int, g: torch.Generator) -> torch.Tensor:
        """``[n, num_repeats]`` start position of each copy."""
        c = self.cfg
        interval = (c.seq_len - 1) // c.num_repeats
        lo = 1 + interval * torch.arange(c.num_repeats)
        span = interval - c.subseq_len + 1  # choices per copy (13 for the defaults)
        return lo + torch.randint(0, span, (n, c.num_repeats), generator=g)

    def sample(self, n: int, g: torch.Generator) -> Batch:
        c = self.cfg
        tokens = torch.randint(1, c.vocab_size, (n, c.seq_len), generator=g)
        tokens[:, 0] = BEGIN
        s = self.starts(n, g)
        offs = torch.arange(c.subseq_len)
        rows = torch.arange(n).unsqueeze(1)
        first = tokens.gather(1, s[:, :1] + offs)  # (n, subseq_len)
        for i in range(1, c.num_repeats):
            tokens[rows, s[:, i:i + 1] + offs] = first
        pos = (s[:, 1:, None] + offs[:-1]).reshape(n, -1)  # (n, (R-1)(L-1))
        labels = tokens.gather(1, pos + 1)
        parts = torch.arange(c.num_repeats - 1).repeat_interleave(c.subseq_len - 1).expand(n, -1).contiguous()
        return Batch(tokens, pos, labels, parts)
