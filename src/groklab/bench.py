"""``groklab bench``: training-step speed of groklab against plain PyTorch versions of its models.

Everything is timed in one process (so that the shared-CPU noise hits both sides alike), on the
same weights and the same batches, the two sides interleaved.

Modular arithmetic (``--only modular``): the fast full-batch step (``Trainer.train_step``:
forward, backward, AdamW) against the plain reference (``tests/reference/naive_transformer.py``:
every position through every layer, heads in a loop, autograd, ``torch.optim.AdamW``); the fast
step's achieved GFLOP/s against a matmul peak measured in the same run; and per-member ms/step of
ensembles of N = 1, 8, 32 for the nanda2023 model and a small one (p=59, d_model 64, 4 heads,
d_mlp 256, 30% data). For scale it also times the issue's calibration row (the last position's
MLP and unembed alone, forward and backward, plain autograd), the fast step's floor (its three
``[N, d_mlp] x [d_mlp, V]`` products alone), and what evaluation and checkpoints add to a run at
the default intervals.

The phase-change zoo (``--only zoo``, or ``--zoo``): for each of the presets ``digits5``,
``digits5-infinite``, ``induction``, ``induction-infinite``, ``max-element`` and
``max-element-infinite``, ms/step of ``Trainer.train_step`` (whatever path the Trainer picks for
it) against the plain notebook-style version of the same model (``tests/reference/naive_zoo.py``:
``nn.Module``, every position through every layer, per-head einsums, the notebook's loss,
``torch.optim.AdamW`` with a ``LambdaLR`` warm-up), and the ratio. Both sides read the step's
batch from the same task stream (``Trainer.train_batch``), so drawing fresh data costs both alike.
``--zoo-presets`` picks rows. Both sides run inside ``retained_heap()`` (freed buffers reused, as
``Trainer.run`` trains); ``--heap default`` leaves glibc's own heap to both, as a plain script runs.

PAIR's MLP (``--only pair``, or ``--pair``; ``groklab.bench_pair``): for ``pair2023`` and
``pair-parity``, per-member ms/step of N = 1, 8, 64, 256 members trained as one batched
``Trainer`` against the plain loop (one ``nn.Module`` + ``torch.optim`` per run, stepped in turn),
and the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
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

REFERENCES = Path(__file__).resolve().parents[2] / "tests" / "reference"
ZOO_PRESETS = ("digits5", "digits5-infinite", "induction", "induction-infinite", "max-element",
               "max-element-infinite")


def _naive(name: str = "naive_transformer"):
    """The plain reference module ``tests/reference/<name>.py``, imported by path."""
    path = REFERENCES / f"{name}.py"
    if not path.exists():
        raise SystemExit(f"groklab bench: {path} not found; run it from a source checkout")
    spec = importlib.util.spec_from_file_location(name, path)
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
    """Dense FLOPs of one fast step (``models.tables`` + ``models.fused``): the q/k/v products,
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
    _, stats = tr._backward(0, want_stats=True)  # the train half of a metrics row, as in Trainer.run
    tr.opt.zero_grad()
    t_row = _time(lambda: tr._rows_from(0, stats), reps)
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


def _heap_parser() -> argparse.ArgumentParser:
    """``--heap``, read by ``run_bench`` before anything allocates and listed by ``_run_bench``'s
    parser (its parent)."""
    ap = argparse.ArgumentParser(prog="groklab bench", add_help=False)
    ap.add_argument("--heap", choices=("retained", "default"), default="retained",
                    help="retained (default): both sides reuse freed buffers, as groklab's Trainer.run "
                         "does (groklab._heap); default: glibc's own heap, as a plain script runs")
    return ap


def run_bench(argv: list[str] | None = None) -> int:
    # as in Trainer.run, both implementations reuse freed buffers (unless --heap default); the runs
    # go to a temp dir. The heap is chosen before anything allocates: glibc's own dynamic
    # thresholds cannot be restored once mallopt has run.
    heap = _heap_parser().parse_known_args(argv or [])[0].heap
    with (retained_heap() if heap == "retained" else contextlib.nullcontext()), \
            tempfile.TemporaryDirectory(prefix="groklab-bench-") as tmp:
        return _run_bench(argv, Path(tmp))


def _run_bench(argv: list[str] | None, tmp: Path) -> int:
    ap = argparse.ArgumentParser(prog="groklab bench", description=__doc__.split("\n")[0],
                                 parents=[_heap_parser()])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and no N=32 ensembles")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per figure")
    ap.add_argument("--no-ensembles", action="store_true", help="skip the ensemble table")
    ap.add_argument("--only", choices=("modular", "zoo", "pair", "sweep"), default=None,
                    help="run only the modular-arithmetic figures, the phase-change zoo rows or PAIR's "
                    "MLP rows")
    ap.add_argument("--zoo", action="store_const", const="zoo", dest="only", help="same as --only zoo")
    ap.add_argument("--pair", action="store_const", const="pair", dest="only", help="same as --only pair")
    ap.add_argument("--sweep", action="store_const", const="sweep", dest="only",
                    help="sweep throughput on the reduced PAIR parity grid (135 runs, ~15-30 min; "
                         "not in the default set)")
    ap.add_argument("--sweep-steps", type=int,
                    help="--sweep: train.steps of every run (default the preset's 10k)")
    ap.add_argument("--sweep-sample", type=int, default=9,
                    help="--sweep: runs timed one after another (default 9)")
    ap.add_argument("--keep", help="--sweep: keep the sweep in this directory")
    ap.add_argument("--zoo-presets", nargs="+", choices=ZOO_PRESETS, default=ZOO_PRESETS,
                    help="--zoo: only these presets' rows")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's); 1 steadies figures on a loaded machine")
    args = ap.parse_args(argv or [])
    if args.only == "sweep":
        from .bench_sweep import bench_sweep

        bench_sweep(tmp, args.sweep_steps, args.sweep_sample, Path(args.keep) if args.keep else None)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps or (3 if args.quick else 7)
    print(f"groklab bench: torch {torch.__version__}, {torch.get_num_threads()} threads, reps={reps}, "
          f"{args.heap} heap")
    if args.only in (None, "modular"):
        _bench_modular(args, reps, tmp)
    if args.only in (None, "zoo"):
        _bench_zoo(reps, tmp, tuple(args.zoo_presets))
    if args.only in (None, "pair"):
        from .bench_pair import bench_pair

        bench_pair(reps, tmp)
    return 0


def _bench_modular(args: argparse.Namespace, reps: int, tmp: Path) -> None:
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
    n_eval = sum(b.tokens.shape[1] for b in (tr.train_set, tr.test_set) if b is not None)
    print(f"  evaluate() over all {n_eval} pairs: {t_eval:.1f} ms "
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


def _zoo_batch_note(tr) -> str:
    """How the preset feeds its steps, e.g. ``750 (full batch)`` or ``64 (fresh each step)``."""
    b, n = tr.train_batch(0), tr.cfg.task.n_train
    if tr.infinite:
        return f"{b.tokens.shape[1]} (fresh each step)"
    if tr.full_batch:
        return f"{n} (full batch)"
    return f"{b.tokens.shape[1]} of {n} (minibatches)"


def _zoo_plain_step(naive, tr):
    """The plain notebook-style step of ``tr``'s model, from ``tr``'s current weights: a closure
    ``step(s)`` that trains the plain model on step ``s``'s batch (``Trainer.train_batch``)."""
    cfg, t = tr.cfg, tr.cfg.train
    state = {k: v.detach().clone() for k, v in tr.member_state(0).items()}
    model = naive.from_groklab_state(state, doubled_residual=cfg.model.doubled_residual)
    opt, sched = naive.notebook_optimizer(model, t.lr, t.weight_decay, (t.beta1, t.beta2),
                                          max(t.warmup_steps, 1))
    name, n_ctx = cfg.task.name, cfg.model.n_ctx

    def loss_fn(batch) -> torch.Tensor:
        tokens = batch.tokens[0]
        logits = model(tokens)  # every position
        if name == "digit_addition":
            return naive.digits_loss(logits, tokens, cfg.task.n_digits)
        if name == "max_element":
            return naive.max_element_loss(logits, batch.labels[0, :, 0])
        mask = naive.mask_from_positions(batch.positions[0], n_ctx)
        return naive.induction_loss(logits, tokens, mask)  # float32, as in the notebook

    return lambda s: naive.train_step(opt, sched, lambda: loss_fn(tr.train_batch(s)))


_ZOO_CALLS = 5  # calls per median: with 3, a zoo row's ratio swung by ~20% between runs on a busy day


def _zoo_row(naive, name: str, rounds: int, tmp: Path) -> tuple[float, float, str]:
    """(plain ms, groklab ms, batch note) per step of preset ``name``, best of interleaved rounds."""
    tr = _trainer(get_preset(name).resolved(), 1, tmp / f"zoo-{name}")
    plain = _zoo_plain_step(naive, tr)
    steps = {"fast": 20, "plain": 20}  # past the warm-up's lr 0; infinite data: a new batch each call

    def fast_step() -> None:
        tr.train_step(steps["fast"])
        steps["fast"] += 1

    def plain_step() -> None:
        plain(steps["plain"])
        steps["plain"] += 1

    fast, slow = [], []
    for _ in range(rounds):  # interleave so that load changes hit both
        fast.append(_time(fast_step, _ZOO_CALLS))
        slow.append(_time(plain_step, _ZOO_CALLS))
    return min(slow), min(fast), _zoo_batch_note(tr)


def _bench_zoo(reps: int, tmp: Path, presets: tuple[str, ...] = ZOO_PRESETS
               ) -> dict[str, tuple[float, float]]:
    """Print and return ``{preset: (plain ms, groklab ms)}`` per step."""
    naive = _naive("naive_zoo")
    # one round per rep (7 by default): on 2026-12-08 six back-to-back runs of the induction row
    # gave 3.5-4.6x with 3 rounds and 4.1-4.8x with 7, so 3 were too few to reach each side's
    # floor on a noisy machine (the row costs ~3 s a round)
    rounds = max(2, reps)
    print(f"\nphase-change zoo: ms/step, best of {rounds} interleaved medians of {_ZOO_CALLS}; plain = "
          "tests/reference/naive_zoo.py (nn.Module, every position, torch.optim.AdamW + LambdaLR), "
          "groklab = Trainer.train_step (issue 9 targets: digits5 >= 3x, induction >= 4x)")
    print(f"  {'preset':22s} {'examples per step':28s} {'plain':>10s} {'groklab':>10s} {'speed-up':>9s}")
    out = {}
    for name in presets:
        t_plain, t_fast, note = _zoo_row(naive, name, rounds, tmp)
        out[name] = (t_plain, t_fast)
        print(f"  {name:22s} {note:28s} {t_plain:7.1f} ms {t_fast:7.1f} ms {t_plain / t_fast:8.1f}x",
              flush=True)
    return out
