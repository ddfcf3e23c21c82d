"""``groklab bench``: training-step speed of the fast path against the plain reference.

In one process (so that the shared-CPU noise hits both alike) it times, on the same weights:
the fast full-batch step (``Trainer.train_step``: forward, backward, AdamW) and the plain
reference (``tests/reference/naive_transformer.py``: every position through every layer, heads
in a loop, autograd, ``torch.optim.AdamW``); the fast step's achieved GFLOP/s against a matmul
peak measured in the same run; and per-member ms/step of ensembles of N = 1, 8, 32 for the
nanda2023 model and a small one (p=59, d_model 64, 4 heads, d_mlp 256, 30% data).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

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


def run_bench(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="groklab bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and no N=32 ensembles")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per figure")
    ap.add_argument("--no-ensembles", action="store_true", help="skip the ensemble table")
    args = ap.parse_args(argv or [])
    reps = args.reps or (3 if args.quick else 7)
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="groklab-bench-"))
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

    if not args.no_ensembles:
        small = replace(cfg, task=replace(cfg.task, p=59), model=replace(
            cfg.model, d_model=64, n_heads=4, d_head=None, d_mlp=256, d_vocab=None, d_vocab_out=None))
        small = small.resolved()
        sizes = (1, 8) if args.quick else (1, 8, 32)
        print("\nensembles: per-member ms/step (throughput vs N=1)")
        for name, c in (("small p=59", small), ("nanda2023", cfg)):
            base = None
            cells = []
            for n in sizes:
                t = _trainer(c, n, tmp / f"{name}-{n}")
                ms = _time(lambda t=t: t.train_step(20), max(2, reps // (1 if n < 32 else 2))) / n
                base = base or ms
                cells.append(f"N={n}: {ms:7.2f} ms ({base / ms:4.1f}x)")
                del t
            print(f"  {name:11s} " + "   ".join(cells))
    return 0
