"""groklab: train small networks on algorithmic tasks, watch them grok, and reverse-engineer
the algorithm they learned (Nanda et al. 2023; Pearce et al., PAIR).

Public API::

    from groklab import Config, load_run, build_model, build_task, make_data, train
"""

__version__ = "0.1.0"

from .config import Config, ConfigError, ModelConfig, TaskConfig, TrainConfig  # noqa: E402
from .models.transformer import HookedTransformer, build_model  # noqa: E402
from .presets import PRESETS, get_preset  # noqa: E402
from .runs import Run, RunError, load_run  # noqa: E402
from .tasks import TASKS, Batch, ModularData, Task, build_task, make_data  # noqa: E402
from .train.loop import Member, Trainer  # noqa: E402


def train(config: Config, out: str, progress: bool = False) -> Run:
    """Train one model with ``config`` into the empty directory ``out``; return the loaded run."""
    Trainer([Member(config, out)], progress=progress).run()
    return load_run(out)


__all__ = [
    "Batch", "Config", "ConfigError", "HookedTransformer", "Member", "ModelConfig", "ModularData",
    "PRESETS", "Run", "RunError", "TASKS", "Task", "TaskConfig", "TrainConfig", "Trainer", "__version__",
    "build_model", "build_task", "get_preset", "load_run", "make_data", "train",
]
