"""``groklab bench``: training-step speed of the fast path against the plain reference.

In one process (so that the shared-CPU noise hits both alike) it times, on the same weights:
the fast full-batch step (``Trainer.train_step``: forward, backward, AdamW) and the plain
reference (``tests/reference/naive_transformer.py``: every position through every layer, heads
in a loop, autograd, ``torch.optim.AdamW``); the fast step's achieved GFLOP/s against a matmul
peak measured in the same run; and per-member ms/step of ensembles of N = 1, 8, 32 for the
nanda2023 model and a small one (p=59, d_model 64, 4 heads, d_mlp 256, 30% data). For scale it
also times the issue's calibration row (the last position's MLP and unembed alone, forward and
backward, plain autograd), the fast step's floor (its three ``[N, d_mlp] x [d_mlp, V]`` products
alone), and what evaluation and checkpoints add to a run at the default intervals.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from ._heap import retained_heap
from .config import Config
from .presets import get_preset

REFERENCE = Path(__file__).resolve().parents[2] / "tests" / "reference" / "naive_transformer.py"


def _naive():
    if not REFERENCE.exists():
        raise SystemExit(f"groklab bench: {REFERENCE} not found; run it from a source checkout")
    spec = importlib.util.spec_from_file_location("naive_transformer", REFERENCE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _time(fn, reps: int, warmup: int = 1) -> float:
    """Median ms per call over ``reps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(out)


def _trainer(cfg: Config, n: int, tmp: Path):
    from .train.loop import Member, Trainer

    members = [Member(replace(cfg, train=replace(cfg.train, seed=s)), tmp / f"m{s}") for s in range(n)]
    return Trainer(members, progress=False)


def _fast_step_flops(tr) -> float:
    """Dense FLOPs of one fast step (``train.tables`` + ``train.fused``): the q/k/v products,
    ``W_O W_cat`` and the table through ``d_head``, the weighted row sums, ``W_L`` and
    ``post @ W_L``; forward once and backward twice."""
    m, plan = tr.cfg.model, tr._plans[id(tr.train_tokens)]
    E, N, K = plan.E, plan.N, plan.bag.shape[1]
    D, M, V, H, Dh = m.d_model, m.d_mlp, m.d_vocab_out, m.n_heads, m.d_head
    C = M + V
    U, U_last = len(plan.tok_all), len(plan.vocab[-1])
    tables = U * D * 3 * H * Dh + H * Dh * D * C + U * H * Dh * C + U_last * D * C
    fwd = 2 * E * (tables + N * K * C + N * M * V + M * D * V)
    return 3.0 * fwd


def _matmul_peak(reps: int) -> float:
    a, b = torch.randn(2048, 1024), torch.randn(1024, 1024)
    ms = _time(lambda: a @ b, reps, warmup=2)
    return 2 * 2048 * 1024 * 1024 / ms / 1e6


def _last_position_plain(tr, reps: int) -> float:
    """ms of the issue's calibration row: the last position's MLP and unembed alone (plain
    autograd, float64 loss), forward and backward, on ``[N, d_model]`` residuals."""
    m, N = tr.cfg.model, tr.train_tokens.shape[1]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, m.d_model, generator=g)
    w = {k: (torch.randn(*shape, generator=g) * 0.05).requires_grad_()
         for k, shape in (("W_in", (m.d_model, m.d_mlp)), ("b_in", (m.d_mlp,)),
                          ("W_out", (m.d_mlp, m.d_model)), ("b_out", (m.d_model,)),
                          ("W_U", (m.d_model, m.d_vocab_out)))}
    labels = tr.train_labels[0]

    def step():
        r = x + torch.relu(x @ w["W_in"] + w["b_in"]) @ w["W_out"] + w["b_out"]
        logp = (r @ w["W_U"]).double().log_softmax(-1)
        (-logp.gather(1, labels[:, None]).mean()).backward()
        for t in w.values():
            t.grad = None

    return _time(step, reps)


def _gemm_floor(tr, reps: int) -> float:
    """ms of the fast step's three unavoidable products: ``post @ W_L`` and its two gradients."""
    m, N = tr.cfg.model, tr.train_tokens.shape[1]
    post, W_L = torch.randn(1, N, m.d_mlp).relu(), torch.randn(1, m.d_mlp, m.d_vocab_out)
    direct, d_logits = torch.randn(1, N, m.d_vocab_out), torch.randn(1, N, m.d_vocab_out)

    def step():
        torch.baddbmm(direct, post, W_L)
        torch.bmm(d_logits, W_L.transpose(1, 2))
        torch.bmm(post.transpose(1, 2), d_logits)

    return _time(step, reps)


def _run_overhead(cfg: Config, tmp: Path, reps: int, steps: int) -> tuple[float, float, float | None]:
    """(ms per metrics row, ms per checkpoint, end-to-end overhead of ``Trainer.run`` over bare
    steps or None) for ``cfg`` at its default intervals."""
    tr = _trainer(cfg, 1, tmp / "overhead")
    tr.start_fresh(record=False)
    loss, acc = tr._backward(want_acc=True)
    tr.opt.zero_grad()
    t_row = _time(lambda: tr._rows_from(loss, acc), reps)
    t_save = _time(tr.save, reps)
    if not steps:
        return t_row, t_save, None
    cfg_run = replace(cfg, train=replace(cfg.train, steps=steps))
    bare = _trainer(cfg_run, 1, tmp / "overhead-bare")

    def bare_steps() -> float:
        t0 = time.perf_counter()
        for s in range(steps):
            bare.train_step(s)
        return time.perf_counter() - t0

    t_bare = bare_steps()
    run = _trainer(cfg_run, 1, tmp / "overhead-run")
    t0 = time.perf_counter()
    run.run()
    t_run = time.perf_counter() - t0
    t_bare = (t_bare + bare_steps()) / 2  # bare loops before and after, against drifting load
    return t_row, t_save, t_run / t_bare - 1


def small_config(cfg: Config) -> Config:
    """The issue's small ensemble model: ``cfg`` with p=59, d_model 64, 4 heads, d_mlp 256."""
    return replace(cfg, task=replace(cfg.task, p=59), model=replace(
        cfg.model, d_model=64, n_heads=4, d_head=None, d_mlp=256, d_vocab=None, d_vocab_out=None)).resolved()


def run_bench(argv: list[str] | None = None) -> int:
    # as in Trainer.run, both implementations reuse freed buffers; the runs go to a temp dir
    with retained_heap(), tempfile.TemporaryDirectory(prefix="groklab-bench-") as tmp:
        return _run_bench(argv, Path(tmp))


def _run_bench(argv: list[str] | None, tmp: Path) -> int:
    ap = argparse.ArgumentParser(prog="groklab bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and no N=32 ensembles")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per figure")
    ap.add_argument("--no-ensembles", action="store_true", help="skip the ensemble table")
    args = ap.parse_args(argv or [])
    reps = args.reps or (3 if args.quick else 7)
    print(f"groklab bench: torch {torch.__version__}, {torch.get_num_threads()} threads, reps={reps}")

    cfg = get_preset("nanda2023").resolved()
    tr = _trainer(cfg, 1, tmp / "fast")
    naive = _naive()
    sd = {k: v[0].detach().clone().requires_grad_() for k, v in tr.params.items()}
    opt = torch.optim.AdamW(sd.values(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))
    tokens, labels = tr.train_tokens[0].clone(), tr.train_labels[0].clone()

    def plain_step():
        naive.naive_loss(sd, tokens, labels).backward()
        opt.step()
        opt.zero_grad()

    step = [20]

    def fast_step():
        tr.train_step(step[0])

    fast, plain = [], []
    for _ in range(max(2, reps // 2)):  # interleave so that load changes hit both
        fast.append(_time(fast_step, 3))
        plain.append(_time(plain_step, 1))
    t_fast, t_plain = min(fast), min(plain)
    peak = _matmul_peak(reps)
    gflops = _fast_step_flops(tr) / t_fast / 1e6
    t_eval = _time(tr.evaluate, reps)
    print(f"\nnanda2023 full-batch step ({tr.train_tokens.shape[1]} pairs), best of {len(fast)} medians:")
    print(f"  plain reference (naive, every position, autograd, AdamW): {t_plain:8.1f} ms/step")
    print(f"  fast step (Trainer.train_step)                           : {t_fast:8.1f} ms/step")
    print(f"  speed-up                                                 : {t_plain / t_fast:8.1f}x")
    print(f"  fast step: {_fast_step_flops(tr) / 1e9:.2f} GFLOP dense work, {gflops:.1f} GFLOP/s "
          f"= {gflops / peak:.0%} of the matmul peak measured here ({peak:.1f} GFLOP/s)")
    print(f"  evaluate() over all {tr.all_tokens.shape[1]} pairs: {t_eval:.1f} ms "
          f"({t_eval / t_fast:.2f} steps; the loop's metrics rows skip the train half)")
    t_last = _last_position_plain(tr, reps)
    t_floor = _gemm_floor(tr, reps)
    print(f"  for scale: last position's MLP + unembed alone, plain autograd: {t_last:8.1f} ms "
          f"(fast step = {t_fast / t_last:.2f}x of it; issue's anchors 45 / 37 = 1.22x)")
    print(f"  for scale: the fast step's three post @ W_L products alone   : {t_floor:8.1f} ms "
          f"({t_floor / t_fast:.0%} of the fast step)")
    t_row, t_save, e2e = _run_overhead(cfg, tmp, reps, 0 if args.quick else 300)
    every = cfg.train
    frac = (t_row / every.eval_every + t_save / every.checkpoint_every) / t_fast
    print(f"  run overhead at the default intervals: metrics row {t_row:.1f} ms every {every.eval_every} "
          f"steps + checkpoint {t_save:.1f} ms every {every.checkpoint_every} = {frac:.1%} of the step time"
          + ("" if e2e is None else f"; end to end, Trainer.run vs bare steps (300 each): {e2e:+.1%}"))

    if not args.no_ensembles:
        small = small_config(cfg)
        sizes = (1, 8) if args.quick else (1, 8, 32)
        print("\nensembles: per-member ms/step (throughput vs N=1), sizes interleaved, best of "
              f"{max(2, reps // 2)} rounds")
        for name, c in (("small p=59", small), ("nanda2023", cfg)):
            trainers = {n: _trainer(c, n, tmp / f"{name}-{n}") for n in sizes}
            best = {n: float("inf") for n in sizes}
            for _ in range(max(2, reps // 2)):  # alternate the sizes so that load drift hits all
                for n, t in trainers.items():
                    best[n] = min(best[n], _time(lambda t=t: t.train_step(20), 3 if n < 32 else 2) / n)
            cells = [f"N={n}: {best[n]:7.2f} ms ({best[1] / best[n]:4.1f}x)" for n in sizes]
            print(f"  {name:11s} " + "   ".join(cells))
            del trainers
    return 0
