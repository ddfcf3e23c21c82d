"""Full-batch training of one model or an ensemble of models as one batched computation.

An ensemble is a list of members whose configs differ only in ``BATCHABLE`` keys (seeds, lr,
weight decay, data seed). Every parameter carries a leading member axis; each member's loss,
gradients and AdamW state are its own, so each member follows its solo trajectory. Each member
writes its own run directory (see ``groklab.runs``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._heap import retained_heap
from ..models.mlp import has_mlp_path, mlp_inputs, mlp_logits
from ..models.mlp_fused import fused_mlp_loss, has_fused_mlp_loss
from ..models.multipos import has_multipos_path, multipos_logits, multipos_loss
from ..models.transformer import build_model
from ..runs import (
    RunError,
    atomic_write,
    config_json,
)
from ..tasks import Batch, build_task
from .grad_filter import EnsembleGradFilter
from .losses import collapse_stats, slot_loss
from .members import Member, check_batchable, resolve_device
from .optim import EnsembleAdamW, warmup_factor
from .state import load_state, save_state
from .step import (
    fast_last_logits,
    fast_loss,
    generic_logits,
    has_fast_path,
    plan_tokens,
)


def _last_slot_only(batch: Batch, n_ctx: int) -> bool:
    """Whether every example has one loss slot, at the last position (host sync)."""
    return batch.positions.shape[-1] == 1 and bool((batch.positions == n_ctx - 1).all())


def _parts(names: tuple[str, ...], values: list[float]) -> dict[str, float | None]:
    """``{part: mean loss}``; a part with no slots in the batch is None."""
    return {n: (v if v == v else None) for n, v in zip(names, values, strict=True)}


class Trainer:
    """Train ``members`` together. Use ``run()``; see ``groklab train --help`` for the CLI.

    The data come from each member's task (``groklab.tasks``): a fixed training set (full batch
    or minibatches) or a fresh batch every step, a fixed or fresh test set. Every batch is a
    pure function of ``(task config, step)``, so a resumed run sees the same stream.
    """

    def __init__(self, members: list[Member], progress: bool = True,
                 stop_when: Callable[[list[list[dict[str, Any]]]], bool] | None = None,
                 on_rows: Callable[[int, list[dict[str, Any]]], None] | None = None):
        """Args:
            members: the runs to train together (configs differing only in ``BATCHABLE`` keys).
            progress: show a tqdm bar.
            stop_when: called at every evaluation step with every member's metrics rows so far
                (also at the first step of a resumed run, so a decision survives a kill); True
                stops the run there, with a checkpoint of that step (``groklab.sweep`` retires
                settled members this way).
            on_rows: called with ``(step, rows)`` whenever a metrics row per member is appended
                (``rows[e]`` is member ``e``'s row, as written to ``metrics.jsonl``): the hook of
                the experiment trackers.
        """
        self.stop_when, self.on_rows = stop_when, on_rows
        self.members = [Member(m.config.resolved(), Path(m.run_dir)) for m in members]
        cfgs = [m.config for m in self.members]
        check_batchable(cfgs)
        self.cfg = cfgs[0]
        self.device = resolve_device(self.cfg.train.device)
        self.progress = progress
        dev = self.device
        self.tasks = [build_task(c.task) for c in cfgs]
        self.data = [t.data(c.train.batch_size, c) for t, c in zip(self.tasks, cfgs, strict=True)]
        self.part_names = self.tasks[0].part_names
        d0 = self.data[0]
        self.full_batch, self.infinite = d0.full_batch, d0.infinite
        # fixed sets, stacked over members once: [E, N, ...]
        self.train_set = None if d0.infinite else Batch.stack([d.train for d in self.data]).to(dev)
        self.test_set = (Batch.stack([d.test for d in self.data]).to(dev)
                         if not d0.test_fresh and d0.test is not None else None)
        self.has_test = d0.test_fresh or d0.test is not None
        self.loss_dtype = getattr(torch, self.cfg.train.loss_dtype)

        models = [build_model(c) for c in cfgs]
        self.model = models[0].to(dev)
        self.trainable = [k for k, p in models[0].named_parameters() if p.requires_grad]
        self.params = {k: torch.stack([dict(mm.named_parameters())[k].detach() for mm in models]).to(dev)
                       for k, _ in models[0].named_parameters()}
        for k in self.trainable:
            self.params[k].requires_grad_(True)
        t = self.cfg.train
        self.param_dtype = pdt = self.params[self.trainable[0]].dtype  # float64 weights: float64 lr, wd
        self.opt = EnsembleAdamW(
            {k: self.params[k] for k in self.trainable},
            lr=torch.tensor([c.train.lr for c in cfgs], device=dev, dtype=pdt),
            weight_decay=torch.tensor([c.train.weight_decay for c in cfgs], device=dev, dtype=pdt),
            betas=(t.beta1, t.beta2), eps=t.eps, l1=t.regularization == "l1",
            perp=t.optimizer == "perp_adamw",
        )
        # Grokfast (train.grad_filter): g += lamb * h between backward and the optimizer step
        self.grad_filter = None if t.grad_filter == "none" else EnsembleGradFilter(
            {k: self.params[k] for k in self.trainable}, t.grad_filter, alpha=t.grad_filter_alpha,
            lamb=t.grad_filter_lamb, window=t.grad_filter_window, warmup=t.grad_filter_warmup)
        self.loss_kind = t.loss
        # the fused loss kernels below compute softmax cross-entropy; any other loss (StableMax)
        # takes the same path's differentiable logits and train.losses.slot_loss
        self.fused_ce = t.loss == "cross_entropy"
        # PAIR's loss convention: CE averaged over the output classes too (CE / n_classes)
        self.loss_scale = 1.0
        self.mlp = has_mlp_path(self.cfg)  # models.mlp: one-hot rows as table lookups
        # models.mlp_fused: the loss and the weight gradients in one pass
        self.fused_mlp = self.mlp and self.fused_ce and has_fused_mlp_loss(self.cfg, len(cfgs))
        # the one-layer table trick (models.onelayer): one loss slot at the last position and a
        # fixed training set, whose gather plan is built once (host syncs here only)
        self.fast = (not self.mlp and has_fast_path(self.cfg) and self.train_set is not None
                     and self.full_batch and _last_slot_only(self.train_set, self.cfg.model.n_ctx))
        # any other LayerNorm-free model (models.multipos): loss slots only out of the last layer,
        # layer 0 as per-token tables, fused attention; False falls back to the vmapped forward
        self.multipos = not self.mlp and has_multipos_path(self.cfg)
        if t.loss_reduction == "class_mean":  # every output class, as PAIR's mean over one_hot * logp
            if self.mlp:
                n_out = self.cfg.task.mlp_io()[1]
                self.loss_scale = 1.0 / (2 if n_out == 1 else n_out)
            else:
                self.loss_scale = 1.0 / self.cfg.model.d_vocab_out
        self._plans: dict[int, Any] = {}
        if self.fast:
            self.train_tokens = self.train_set.tokens
            self.train_labels = self.train_set.labels[..., 0]
            for b in (self.train_set, self.test_set):
                if b is not None:
                    self._plans[id(b.tokens)] = plan_tokens(b.tokens, self.cfg.model.n_heads)
        self.metrics: list[list[dict[str, Any]]] = [[] for _ in cfgs]
        self.step = 0
        self.elapsed0 = 0.0
        self.stopped = False
        self._observer = None  # set by run(): metrics and checkpoints between backward and update

    # -- data -----------------------------------------------------------------------------------
    def train_batch(self, step: int) -> Batch:
        """The stacked ``[E, N, ...]`` training batch of 0-based step ``step``."""
        if self.full_batch:
            return self.train_set
        return Batch.stack([d.train_batch(step) for d in self.data]).to(self.device)

    def test_batch(self, step: int) -> Batch | None:
        """The stacked test examples of the evaluation at ``step`` (None without a test set)."""
        if self.test_set is not None or not self.has_test:
            return self.test_set
        return Batch.stack([d.test_batch(step) for d in self.data]).to(self.device)

    # -- model ------------------------------------------------------------------------------
    def logits(self, batch: Batch) -> Tensor:
        """``[E, N, K, d_vocab_out]`` logits at the batch's loss slots."""
        if self.mlp:
            return mlp_logits(self.cfg, self.params, batch.tokens, self._mlp_inputs(batch))
        if self.fast and _last_slot_only(batch, self.cfg.model.n_ctx):
            plan = self._plans.get(id(batch.tokens))
            return fast_last_logits(self.cfg, self.params, batch.tokens, plan).unsqueeze(2)
        if self.multipos:
            return multipos_logits(self.cfg, self.params, batch.tokens, batch.positions)
        return generic_logits(self.model, self.params, batch.tokens, batch.positions)

    def _mlp_inputs(self, batch: Batch) -> Tensor:
        """``models.mlp.mlp_inputs`` of ``batch``, built once for the fixed train and test sets."""
        fixed = batch is self.train_set or batch is self.test_set
        x = self._plans.get(id(batch.tokens)) if fixed else None
        if x is None:
            x = mlp_inputs(self.cfg, batch.tokens, self.param_dtype)
            if fixed:
                self._plans[id(batch.tokens)] = x
        return x

    def train_step(self, step: int) -> Tensor:
        """One AdamW step (0-based ``step``); returns the per-member loss, unsynced."""
        obs = self._observer
        want = obs is not None and step % self.cfg.train.eval_every == 0
        loss, stats = self._backward(step, want_stats=want)
        if obs is not None and obs(step, loss, stats):
            self.opt.zero_grad()  # early stop: keep step ``step``'s weights, as checkpointed
            self.stopped = True
            return loss
        self._update(step)
        return loss

    def _backward(self, step: int = 0, want_stats: bool = False) -> tuple[Tensor, dict[str, Tensor] | None]:
        """Loss (and gradients) of step ``step``'s batch at the current weights; with
        ``want_stats``, also the train statistics of the same forward pass when that batch is
        what the metrics report (full batch, or infinite data). Nothing here syncs with the host."""
        batch = self.train_batch(step)
        if self.fast and not self.fused_ce:
            logits = fast_last_logits(self.cfg, self.params, batch.tokens, self._plans[id(batch.tokens)])
            logits = logits.unsqueeze(2)
            loss = self._slot_loss(logits, batch.labels).mean((1, 2))
        elif self.fast:
            loss, logits = fast_loss(self.cfg, self.params, batch.tokens, batch.labels[..., 0],
                                     self.loss_dtype, self._plans[id(batch.tokens)])
            logits = logits.unsqueeze(2)
        elif self.mlp and self.fused_mlp:
            loss, logits = fused_mlp_loss(self.cfg, self.params, batch.tokens, batch.labels[..., 0],
                                          self.loss_dtype, self._mlp_inputs(batch))
        elif self.mlp:
            logits = mlp_logits(self.cfg, self.params, batch.tokens, self._mlp_inputs(batch))
            loss = self._slot_loss(logits, batch.labels).mean((1, 2))
        elif self.multipos and not self.fused_ce:
            logits = multipos_logits(self.cfg, self.params, batch.tokens, batch.positions)
            loss = self._slot_loss(logits, batch.labels).mean((1, 2))
        elif self.multipos:
            loss, logits = multipos_loss(self.cfg, self.params, batch.tokens, batch.positions, batch.labels,
                                         self.loss_dtype)
        else:
            logits = generic_logits(self.model, self.params, batch.tokens, batch.positions)
            loss = self._slot_loss(logits, batch.labels).mean((1, 2))
        if self.loss_scale != 1.0:
            loss = loss * self.loss_scale
        loss.sum().backward()
        stats = None
        if want_stats and (self.full_batch or self.infinite):
            stats = self._stats(logits.detach(), batch, loss.detach())
        return loss.detach(), stats

    def _slot_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Per-slot loss ``[E, N, K]`` under ``train.loss`` in ``train.loss_dtype``."""
        return slot_loss(logits, labels, self.loss_dtype, self.loss_kind)

    def _update(self, step: int) -> None:
        if self.grad_filter is not None:
            self.grad_filter.apply()
        self.opt.step(warmup_factor(step, self.cfg.train.warmup_steps))
        self.opt.zero_grad()

    def _stats(self, logits: Tensor, batch: Batch, loss: Tensor | None = None, collapse: bool = True
               ) -> dict[str, Tensor]:
        """Per-member loss, accuracy (over slots), loss by part: ``[E]``, ``[E]``, ``[E, parts]``;
        with ``collapse`` (training batches: the metrics rows report them for those only) also the
        Softmax Collapse measures (``train.losses.collapse_stats``), ``[E]`` each."""
        nll = self._slot_loss(logits, batch.labels) * self.loss_scale  # (E, N, K)
        out = {}
        if collapse:
            out["collapse"], out["zero"] = collapse_stats(logits, nll, self.loss_dtype)
        onehot = torch.nn.functional.one_hot(batch.parts, len(self.part_names)).to(nll.dtype)
        by_part = torch.einsum("enk,enkp->ep", nll, onehot) / onehot.sum((1, 2))
        correct = (logits.argmax(-1) == batch.labels).to(self.loss_dtype)
        return {"loss": nll.mean((1, 2)) if loss is None else loss.to(nll.dtype),
                "acc": correct.mean((1, 2)), "by_part": by_part, **out}

    @torch.no_grad()
    def _eval_stats(self, batch: Batch, collapse: bool = True) -> dict[str, Tensor]:
        return self._stats(self.logits(batch), batch, collapse=collapse)

    @torch.no_grad()
    def _rows_from(self, step: int, train: dict[str, Tensor] | None) -> list[dict[str, Any]]:
        """Metrics rows of ``step``: the train statistics (from the training forward, or a
        no-graph pass over the training set) and a no-graph pass over the test examples."""
        if train is None:
            train = self._eval_stats(self.train_set if self.train_set is not None else self.train_batch(step))
        cols = {"train_loss": train["loss"], "train_acc": train["acc"], "sum_sq_weights": self._sum_sq(),
                "softmax_collapse": train["collapse"], "zero_loss_frac": train["zero"]}
        parts = [train["by_part"]]
        test = self.test_batch(step)
        if test is not None:
            te = self._eval_stats(test, collapse=False)
            cols.update(test_loss=te["loss"], test_acc=te["acc"])
            parts.append(te["by_part"])
        names, P, C = self.part_names, len(self.part_names), len(cols)
        stats = torch.cat([torch.stack([c.to(torch.float64) for c in cols.values()]).T, *parts], 1).tolist()
        rows = []
        for s in stats:  # one host sync above; columns: cols, then train parts, then test parts
            v = dict(zip(cols, s[:C], strict=True))
            rows.append({
                "train_loss": v["train_loss"], "test_loss": v.get("test_loss"), "train_acc": v["train_acc"],
                "test_acc": v.get("test_acc"), "sum_sq_weights": v["sum_sq_weights"],
                "train_loss_by_part": _parts(names, s[C:C + P]),
                "test_loss_by_part": _parts(names, s[C + P:]) if test is not None else None,
                "softmax_collapse": v["softmax_collapse"], "zero_loss_frac": v["zero_loss_frac"],
            })
        return rows

    def _sum_sq(self) -> Tensor:
        return sum((self.params[k].detach().double() ** 2).flatten(1).sum(1) for k in self.trainable)

    @torch.no_grad()
    def evaluate(self) -> list[dict[str, Any]]:
        """The metrics row of the current weights (train and test statistics), without a graph."""
        return self._rows_from(self.step, None)

    # -- run directory --------------------------------------------------------------------------
    def member_state(self, e: int) -> dict[str, Tensor]:
        return {k: v[e] for k, v in self.params.items()}

    def save(self) -> None:
        """Write every member's metrics, optimizer state and checkpoint (``train.state.save_state``)."""
        save_state(self)

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
        """Reload weights, AdamW moments, filter state and metrics from the newest step every
        member has (``train.state.load_state``)."""
        load_state(self)

    def record(self, elapsed: float) -> list[dict[str, Any]]:
        rows = self.evaluate()
        for e, r in enumerate(rows):
            self.metrics[e].append({"step": self.step, **r, "elapsed_s": round(elapsed, 3)})
        if self.on_rows is not None:
            self.on_rows(self.step, [m[-1] for m in self.metrics])
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

        def observe(s: int, loss: Tensor, stats: dict[str, Tensor] | None) -> bool:
            nonlocal saved
            has_row = bool(self.metrics[0]) and self.metrics[0][-1]["step"] == s
            stop = False
            if s % t.eval_every == 0 and not has_row:
                rows = self._rows_from(s, stats)
                elapsed = round(time.perf_counter() - t0, 3)
                for e, r in enumerate(rows):
                    self.metrics[e].append({"step": s, **r, "elapsed_s": elapsed})
                if self.on_rows is not None:
                    self.on_rows(s, [m[-1] for m in self.metrics])
                bar.set_postfix_str(_postfix(rows), refresh=False)
                stop = t.stop_test_loss is not None and all(
                    r["test_loss"] is not None and r["test_loss"] < t.stop_test_loss for r in rows)
                stop = stop or t.stop_test_acc is not None and all(
                    r["test_acc"] is not None and r["test_acc"] >= t.stop_test_acc for r in rows)
            if s % t.eval_every == 0 and self.stop_when is not None and self.stop_when(self.metrics):
                stop = True
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
