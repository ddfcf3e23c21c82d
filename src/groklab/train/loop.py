"""Full-batch training of one model or an ensemble of models as one batched computation.

An ensemble is a list of members whose configs differ only in ``BATCHABLE`` keys (seeds, lr,
weight decay, data seed). Every parameter carries a leading member axis; each member's loss,
gradients and AdamW state are its own, so each member follows its solo trajectory. Each member
writes its own run directory (see ``groklab.runs``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._heap import retained_heap
from ..config import Config, ConfigError
from ..models.transformer import build_model
from ..runs import (
    RunError,
    atomic_write,
    checkpoint_path,
    checkpoint_steps,
    config_json,
    read_metrics,
    read_safetensors,
    save_checkpoint,
    save_optimizer,
    write_metrics,
)
from ..tasks import make_data
from .optim import EnsembleAdamW, warmup_factor
from .step import (
    cross_entropy,
    fast_last_logits,
    fast_loss,
    generic_last_logits,
    has_fast_path,
    plan_tokens,
)

BATCHABLE = ("train.seed", "train.lr", "train.weight_decay", "task.data_seed")


@dataclass(frozen=True)
class Member:
    """One model of a (possibly one-member) ensemble and the directory it writes."""

    config: Config
    run_dir: Path


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` (cuda when available). Raises ConfigError if cuda is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but torch.cuda.is_available() is False; "
                          "use --train.device cpu or auto")
    return torch.device(name)


def _structure(cfg: Config) -> dict[str, Any]:
    d = {f"{s}.{k}": v for s, sub in cfg.to_dict().items() if isinstance(sub, dict)
         for k, v in sub.items()}
    return {k: v for k, v in d.items() if k not in BATCHABLE}


def check_batchable(configs: list[Config]) -> None:
    """Raise ConfigError unless the configs differ only in ``BATCHABLE`` keys."""
    ref = _structure(configs[0])
    for c in configs[1:]:
        diff = [k for k, v in _structure(c).items() if ref[k] != v]
        if diff:
            raise ConfigError(f"ensemble members differ in {', '.join(diff)}; only "
                              f"{', '.join(BATCHABLE)} can vary in one batched run")


class Trainer:
    """Train ``members`` together. Use ``run()``; see ``groklab train --help`` for the CLI."""

    def __init__(self, members: list[Member], progress: bool = True):
        self.members = [Member(m.config.resolved(), Path(m.run_dir)) for m in members]
        cfgs = [m.config for m in self.members]
        check_batchable(cfgs)
        self.cfg = cfgs[0]
        self.device = resolve_device(self.cfg.train.device)
        self.progress = progress
        dev = self.device
        datas = [make_data(c.task) for c in cfgs]
        self.grid = datas[0].tokens.to(dev)  # (P2, n_ctx)
        self.labels = torch.stack([d.labels for d in datas]).to(dev)  # (E, P2)
        train_idx = torch.stack([d.train_idx for d in datas]).to(dev)  # (E, N)
        self.is_train = torch.stack([d.is_train for d in datas]).to(dev)  # (E, P2)
        self.train_tokens = self.grid[train_idx]  # (E, N, n_ctx)
        self.train_labels = self.labels.gather(1, train_idx)
        test_idx = torch.stack([d.test_idx for d in datas]).to(dev)  # (E, P2 - N)
        self.test_tokens = self.grid[test_idx] if test_idx.shape[1] else None
        self.test_labels = self.labels.gather(1, test_idx)
        self.all_tokens = self.grid.expand(len(cfgs), *self.grid.shape)
        self.loss_dtype = getattr(torch, self.cfg.train.loss_dtype)

        models = [build_model(c) for c in cfgs]
        self.model = models[0].to(dev)
        self.trainable = [k for k, p in models[0].named_parameters() if p.requires_grad]
        self.params = {k: torch.stack([dict(mm.named_parameters())[k].detach() for mm in models]).to(dev)
                       for k, _ in models[0].named_parameters()}
        for k in self.trainable:
            self.params[k].requires_grad_(True)
        t = self.cfg.train
        self.opt = EnsembleAdamW(
            {k: self.params[k] for k in self.trainable},
            lr=torch.tensor([c.train.lr for c in cfgs], device=dev),
            weight_decay=torch.tensor([c.train.weight_decay for c in cfgs], device=dev),
            betas=(t.beta1, t.beta2), eps=t.eps,
        )
        self.fast = has_fast_path(self.cfg)
        if self.fast:  # gather plans for the fixed token batches, built once (host syncs here only)
            self._plans = {id(t): plan_tokens(t, self.cfg.model.n_heads)
                           for t in (self.train_tokens, self.all_tokens, self.test_tokens) if t is not None}
        self.metrics: list[list[dict[str, Any]]] = [[] for _ in cfgs]
        self.step = 0
        self.elapsed0 = 0.0
        self.stopped = False
        self._observer = None  # set by run(): metrics and checkpoints between backward and update

    # -- model ------------------------------------------------------------------------------
    def last_logits(self, tokens: Tensor) -> Tensor:
        if self.fast:
            return fast_last_logits(self.cfg, self.params, tokens, self._plans.get(id(tokens)))
        return generic_last_logits(self.model, self.params, tokens)

    def train_step(self, step: int) -> Tensor:
        """One full-batch AdamW step (0-based ``step``); returns the per-member loss, unsynced."""
        obs = self._observer
        loss, acc = self._backward(want_acc=obs is not None and step % self.cfg.train.eval_every == 0)
        if obs is not None and obs(step, loss, acc):
            self.opt.zero_grad()  # early stop: keep step ``step``'s weights, as checkpointed
            self.stopped = True
            return loss
        self._update(step)
        return loss

    def _backward(self, want_acc: bool = False) -> tuple[Tensor, Tensor | None]:
        """Loss (and gradients) at the current weights; with ``want_acc``, also the per-member
        train accuracy of the same forward pass. Nothing here syncs with the host."""
        if self.fast:
            loss, logits = fast_loss(self.cfg, self.params, self.train_tokens, self.train_labels,
                                     self.loss_dtype, self._plans[id(self.train_tokens)])
        else:
            logits = self.last_logits(self.train_tokens)  # (E, N, V)
            loss = cross_entropy(logits, self.train_labels, self.loss_dtype)
        loss.sum().backward()
        acc = None
        if want_acc:
            acc = (logits.detach().argmax(-1) == self.train_labels).to(self.loss_dtype).mean(1)
        return loss.detach(), acc

    def _update(self, step: int) -> None:
        self.opt.step(warmup_factor(step, self.cfg.train.warmup_steps))
        self.opt.zero_grad()

    @torch.no_grad()
    def _rows_from(self, train_loss: Tensor, train_acc: Tensor) -> list[dict[str, Any]]:
        """Metrics rows from the train loss/accuracy of a training forward and a no-graph pass
        over the test pairs only: the same numbers as ``evaluate()`` at ~70% of its cost."""
        cols = [train_loss, train_acc, self._sum_sq()]
        if self.test_tokens is not None:
            logits = self.last_logits(self.test_tokens)
            nll = -logits.to(self.loss_dtype).log_softmax(-1).gather(
                -1, self.test_labels.unsqueeze(-1)).squeeze(-1)
            correct = (logits.argmax(-1) == self.test_labels).to(self.loss_dtype)
            cols += [nll.mean(1), correct.mean(1)]
        stats = torch.stack(cols).T.tolist()  # one host sync
        has_test = self.test_tokens is not None
        return [{"train_loss": s[0], "test_loss": s[3] if has_test else None, "train_acc": s[1],
                 "test_acc": s[4] if has_test else None, "sum_sq_weights": s[2]} for s in stats]

    def _sum_sq(self) -> Tensor:
        return sum((p.detach().double() ** 2).flatten(1).sum(1) for p in self.params.values())

    @torch.no_grad()
    def evaluate(self) -> list[dict[str, Any]]:
        """Train and test loss and accuracy per member over the whole grid, without a graph."""
        logits = self.last_logits(self.all_tokens)  # (E, P2, V)
        logp = logits.to(self.loss_dtype).log_softmax(-1)
        nll = -logp.gather(-1, self.labels.unsqueeze(-1)).squeeze(-1)  # (E, P2)
        correct = (logits.argmax(-1) == self.labels).to(self.loss_dtype)
        tr, te = self.is_train.to(self.loss_dtype), (~self.is_train).to(self.loss_dtype)
        n_tr, n_te = tr.sum(1), te.sum(1)
        sumsq = self._sum_sq()
        stats = torch.stack([(nll * tr).sum(1) / n_tr, (nll * te).sum(1) / n_te.clamp(min=1),
                             (correct * tr).sum(1) / n_tr, (correct * te).sum(1) / n_te.clamp(min=1),
                             sumsq]).T.tolist()  # one host sync
        has_test = bool((n_te > 0).all())
        return [{"train_loss": s[0], "test_loss": s[1] if has_test else None, "train_acc": s[2],
                 "test_acc": s[3] if has_test else None, "sum_sq_weights": s[4]} for s in stats]

    # -- run directory --------------------------------------------------------------------------
    def member_state(self, e: int) -> dict[str, Tensor]:
        return {k: v[e] for k, v in self.params.items()}

    def save(self) -> None:
        moments = self.opt.state_tensors()
        for e, m in enumerate(self.members):
            write_metrics(m.run_dir / "metrics.jsonl", self.metrics[e])
            save_optimizer(m.run_dir, self.step, {k: v[e] for k, v in moments.items()}, self.opt.t)
            save_checkpoint(m.run_dir, self.step, self.member_state(e), m.config)

    def start_fresh(self, record: bool = True) -> None:
        for m in self.members:
            if m.run_dir.exists() and any(m.run_dir.iterdir()):
                raise RunError(f"{m.run_dir} is not empty; pass --resume {m.run_dir} to continue "
                               "it, or choose another --out")
        for m in self.members:
            atomic_write(m.run_dir / "config.json", config_json(m.config))
        if record:
            self.record(0.0)
            self.save()

    def resume(self) -> None:
        """Reload weights, AdamW moments and metrics from the newest step every member has."""
        common = None
        for m in self.members:
            ck = m.run_dir / "checkpoints"
            if not (m.run_dir / "config.json").exists():
                raise RunError(f"{m.run_dir}: no config.json; nothing to resume")
            optim = {int(f.name[6:13]) for f in ck.glob("optim_*.safetensors")} if ck.is_dir() else set()
            have = set(checkpoint_steps(m.run_dir)) & optim
            common = have if common is None else common & have
        if not common:
            raise RunError(f"{self.members[0].run_dir}: no checkpoint with optimizer state to resume from")
        step = max(common)
        for e, m in enumerate(self.members):
            state, _ = read_safetensors(checkpoint_path(m.run_dir, step))
            moments, meta = read_safetensors(m.run_dir / "checkpoints" / f"optim_{step:07d}.safetensors")
            with torch.no_grad():
                for k, v in state.items():
                    self.params[k][e].copy_(v)
                for k in self.opt.exp_avg:
                    self.opt.exp_avg[k][e].copy_(moments[f"exp_avg.{k}"])
                    self.opt.exp_avg_sq[k][e].copy_(moments[f"exp_avg_sq.{k}"])
            self.opt.t = int(meta["t"])
            self.metrics[e] = [r for r in read_metrics(m.run_dir / "metrics.jsonl") if r["step"] <= step]
        self.step = step
        self.elapsed0 = self.metrics[0][-1].get("elapsed_s", 0.0) if self.metrics[0] else 0.0

    def record(self, elapsed: float) -> list[dict[str, Any]]:
        rows = self.evaluate()
        for e, r in enumerate(rows):
            self.metrics[e].append({"step": self.step, **r, "elapsed_s": round(elapsed, 3)})
        return rows

    # -- loop -----------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> list[list[dict[str, Any]]]:
        """Train to ``train.steps`` (or the early stop); returns each member's metrics rows.

        The metrics row of step ``s`` (every ``eval_every`` steps) reuses the loss and accuracy
        of the training forward at step ``s``'s weights and adds a no-graph pass over the test
        pairs; the checkpoint of step ``s`` is written before step ``s``'s update. While it runs,
        glibc keeps freed step buffers for reuse (``groklab._heap.retained_heap``).
        """
        t = self.cfg.train
        self.resume() if resume else self.start_fresh(record=False)
        t0 = time.perf_counter() - self.elapsed0
        bar = tqdm(total=t.steps, initial=self.step, disable=not self.progress, unit="step",
                   dynamic_ncols=True, desc=self.cfg.preset or "train")
        saved = self.step if resume else -1

        def observe(s: int, loss: Tensor, acc: Tensor | None) -> bool:
            nonlocal saved
            has_row = bool(self.metrics[0]) and self.metrics[0][-1]["step"] == s
            stop = False
            if acc is not None and not has_row:
                rows = self._rows_from(loss, acc)
                elapsed = round(time.perf_counter() - t0, 3)
                for e, r in enumerate(rows):
                    self.metrics[e].append({"step": s, **r, "elapsed_s": elapsed})
                bar.set_postfix_str(_postfix(rows), refresh=False)
                stop = t.stop_test_loss is not None and all(
                    r["test_loss"] is not None and r["test_loss"] < t.stop_test_loss for r in rows)
            if (s % t.checkpoint_every == 0 or stop) and saved != s:
                if not (self.metrics[0] and self.metrics[0][-1]["step"] == s):
                    self.record(time.perf_counter() - t0)
                self.save()
                saved = s
            return stop

        self._observer, self.stopped = observe, False
        with retained_heap():  # reuse freed step buffers instead of page-faulting them in
            try:
                while self.step < t.steps:
                    self.train_step(self.step)
                    if self.stopped:
                        break
                    self.step += 1
                    bar.update(1)
                else:
                    if not (self.metrics[0] and self.metrics[0][-1]["step"] == self.step):
                        self.record(time.perf_counter() - t0)
                    if saved != self.step:
                        self.save()
            finally:
                self._observer = None
                bar.close()
        return self.metrics


def _postfix(rows: list[dict[str, Any]]) -> str:
    r = rows[0]
    s = f"train {r['train_loss']:.2e} ({r['train_acc']:.0%})"
    if r["test_loss"] is not None:
        s += f" test {r['test_loss']:.2e} ({r['test_acc']:.1%})"
    return s + (f" [+{len(rows) - 1} members]" if len(rows) > 1 else "")
