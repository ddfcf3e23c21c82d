"""Saving and resuming a Trainer's members: weights, AdamW moments, Grokfast filter state and
metrics, under the run-directory contract (``groklab.runs``)."""

from __future__ import annotations

import torch

from ..runs import (
    RunError,
    checkpoint_path,
    last_complete_step,
    read_metrics,
    read_safetensors,
    save_checkpoint,
    save_optimizer,
    write_metrics,
)


def save_state(trainer) -> None:
    """Write each member's metrics, optimizer state (with the grad filter's) and checkpoint."""
    moments = trainer.opt.state_tensors()
    for e, m in enumerate(trainer.members):
        write_metrics(m.run_dir / "metrics.jsonl", trainer.metrics[e])
        state = {k: v[e] for k, v in moments.items()}
        if trainer.grad_filter is not None:  # Grokfast's state, so that a resume continues exactly
            state.update(trainer.grad_filter.member_state(e))
        save_optimizer(m.run_dir, trainer.step, state, trainer.opt.t)
        save_checkpoint(m.run_dir, trainer.step, trainer.member_state(e), m.config)


def load_state(trainer) -> None:
    """Reload weights, AdamW moments, filter state and metrics from the newest step every member has.

    Raises:
        RunError: no config.json, no complete checkpoint, or a checkpoint without the filter state.
    """
    for m in trainer.members:
        if not (m.run_dir / "config.json").exists():
            raise RunError(f"{m.run_dir}: no config.json; nothing to resume")
    step = last_complete_step([m.run_dir for m in trainer.members])
    if step is None:
        raise RunError(f"{trainer.members[0].run_dir}: no checkpoint with optimizer state to resume from")
    for e, m in enumerate(trainer.members):
        state, _ = read_safetensors(checkpoint_path(m.run_dir, step))
        moments, meta = read_safetensors(m.run_dir / "checkpoints" / f"optim_{step:07d}.safetensors")
        with torch.no_grad():
            for k, v in state.items():
                trainer.params[k][e].copy_(v)
            for k in trainer.opt.exp_avg:
                trainer.opt.exp_avg[k][e].copy_(moments[f"exp_avg.{k}"])
                trainer.opt.exp_avg_sq[k][e].copy_(moments[f"exp_avg_sq.{k}"])
            if trainer.grad_filter is not None:
                try:
                    trainer.grad_filter.load_member_state(e, moments)
                except KeyError:
                    raise RunError(f"{m.run_dir}: optimizer checkpoint of step {step} has no "
                                   f"train.grad_filter {trainer.cfg.train.grad_filter!r} state; it was "
                                   "written by another version or config") from None
        trainer.opt.t = int(meta["t"])
        trainer.metrics[e] = [r for r in read_metrics(m.run_dir / "metrics.jsonl") if r["step"] <= step]
    trainer.step = step
    trainer.elapsed0 = trainer.metrics[0][-1].get("elapsed_s", 0.0) if trainer.metrics[0] else 0.0
