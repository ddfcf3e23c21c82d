"""Train one batched group of sweep members: the unit of work every backend runs.

``run_group(job)`` is a plain function of a picklable ``GroupJob``, so a process pool or a Ray task
can call it. It starts the group, or resumes it from the newest checkpoint all its unfinished
members share, and lets members leave the batch when their outcome is settled
(``groklab.sweep.rules``): the batch stops at that step with a checkpoint, the settled members get
a ``stopped.json`` (``{"step": s, "reason": rule}``), and the others go on as a smaller ensemble
resumed from that checkpoint. A killed group re-run by the same call therefore retraces exactly the
batches an uninterrupted one trains.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STOPPED_FILE = "stopped.json"


@dataclass(frozen=True)
class GroupJob:
    """One group of a sweep.

    Attributes:
        sweep_dir: the sweep directory (absolute).
        group: the group's index in ``sweep.json``.
        dirs: member run directories relative to ``sweep_dir``.
        configs: the members' configs as ``Config.to_dict()``.
        stop: the stop rule (``rules.STOP_RULES``).
        threads: torch intra-op threads for this group.
    """

    sweep_dir: str
    group: int
    dirs: tuple[str, ...]
    configs: tuple[dict[str, Any], ...]
    stop: str
    threads: int


def member_done(run_dir: Path, steps: int) -> bool:
    """Whether a member has finished: stopped early, or checkpointed at its last step."""
    from ..runs import last_complete_step

    if (run_dir / STOPPED_FILE).is_file():
        return True
    last = last_complete_step([run_dir]) if (run_dir / "checkpoints").is_dir() else None
    return last is not None and last >= steps


def _early_stop_key(train, row: dict[str, Any]) -> str:
    """Which of the Trainer's early stops ended a run at ``row``: ``stop_test_acc`` when its
    accuracy threshold is set and met there, else ``stop_test_loss``."""
    acc = row.get("test_acc")
    hit = train.stop_test_acc is not None and acc is not None and acc >= train.stop_test_acc
    return "stop_test_acc" if hit else "stop_test_loss"


def run_group(job: GroupJob) -> dict[str, Any]:
    """Train (or finish) the group; returns ``{"group", "members", "trained", "elapsed_s"}``.

    Raises whatever training raises (ConfigError, RunError, OSError); a backend retries a group
    whose worker died by calling this again, which resumes from the last checkpoint.
    """
    import torch

    from ..config import Config
    from ..runs import RunError, atomic_write, last_complete_step
    from ..train.loop import Member, Trainer
    from .rules import stop_reason

    torch.set_num_threads(job.threads)
    root = Path(job.sweep_dir)
    members = [Member(Config.from_dict(c), root / d) for d, c in zip(job.dirs, job.configs, strict=True)]
    t0, trained = time.perf_counter(), 0
    while True:
        pending = [m for m in members if not member_done(m.run_dir, m.config.train.steps)]
        if not pending:
            break
        started = [(m.run_dir / "config.json").is_file() for m in pending]
        resume = all(started) and last_complete_step([m.run_dir for m in pending]) is not None
        if not resume:  # never started, or killed before its first checkpoint: start afresh
            for m in pending:
                shutil.rmtree(m.run_dir, ignore_errors=True)
        rule = job.stop

        def settled(metrics, rule=rule) -> bool:
            return any(stop_reason(rows, rule) for rows in metrics)

        trainer = Trainer(pending, progress=False, stop_when=settled)
        trainer.run(resume=resume)
        trained = max(trained, len(pending))
        if not trainer.stopped:
            break
        marked = 0
        for e, m in enumerate(pending):
            reason = stop_reason(trainer.metrics[e], rule)
            if reason is None and not settled(trainer.metrics):  # the Trainer's own early stop
                reason = _early_stop_key(m.config.train, trainer.metrics[e][-1])
            if reason is not None:
                atomic_write(m.run_dir / STOPPED_FILE, json.dumps({"step": trainer.step, "reason": reason}))
                marked += 1
        if marked == 0:  # pragma: no cover - a stop always marks someone
            raise RunError(f"group {job.group}: the batch stopped at step {trainer.step} "
                           "but no member settled")
    return {"group": job.group, "members": len(members), "trained": trained,
            "elapsed_s": round(time.perf_counter() - t0, 3)}
