"""Task families. Each task is one module: a frozen config dataclass (its ``task.*`` keys) and a
``Task`` subclass; ``TASKS`` maps ``task.name`` to both.

Modular arithmetic's grid API (``make_data``, ``labels_for``, ``split_indices``, ``ModularData``)
is re-exported here unchanged.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import Batch, SampledTaskConfig, Task, TaskData, generator
from .digit_addition import DigitAddition, DigitAdditionConfig
from .max_element import MaxElement, MaxElementConfig
from .modular import (
    OPERATIONS,
    ModularConfig,
    ModularData,
    ModularTask,
    TaskConfig,
    labels_for,
    make_data,
    split_indices,
)
from .repeated_subsequence import RepeatedSubsequence, RepeatedSubsequenceConfig
from .sparse_parity import SparseParity, SparseParityConfig

# task.name -> (config dataclass, Task class)
TASKS: dict[str, tuple[type, type[Task]]] = {
    "modular": (ModularConfig, ModularTask),
    "digit_addition": (DigitAdditionConfig, DigitAddition),
    "repeated_subsequence": (RepeatedSubsequenceConfig, RepeatedSubsequence),
    "max_element": (MaxElementConfig, MaxElement),
    "sparse_parity": (SparseParityConfig, SparseParity),
}


def task_config_class(name: str) -> type:
    """The config dataclass of ``task.name``. Raises ConfigError listing the valid names."""
    try:
        return TASKS[name][0]
    except KeyError:
        raise ConfigError(f"task.name: {name!r} is not one of {', '.join(TASKS)}") from None


def build_task(cfg: Any) -> Task:
    """The ``Task`` for a task config (any of the ``TASKS`` config classes)."""
    return TASKS[cfg.name][1](cfg)


__all__ = [
    "OPERATIONS", "TASKS", "Batch", "DigitAddition", "DigitAdditionConfig", "MaxElement",
    "MaxElementConfig", "ModularConfig", "ModularData", "ModularTask", "RepeatedSubsequence",
    "RepeatedSubsequenceConfig", "SampledTaskConfig", "SparseParity",
    "SparseParityConfig", "Task", "TaskConfig", "TaskData", "build_task",
    "generator", "labels_for", "make_data", "split_indices", "task_config_class",
]
