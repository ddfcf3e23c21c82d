"""``groklab bench --sweep``: sweep throughput against the same runs one after another.

The reduced PAIR sparse-parity grid (``pair-parity-sweep``: weight decay 0.01, 0.03, 0.1, 0.3, 1 x
d_hidden 16, 32, 64 x n_train 750, 1250, 1750 x seeds 0-2 = 135 runs) is trained once with
``groklab sweep`` (batched groups, settled members leave their batch, one worker per core) and
timed end to end, process start-up included. Its baseline is what a user without ``sweep`` would
do: ``groklab train`` once per run, one after another, each a fresh process with torch's default
threads. Timing all 135 that way would take hours, so ``sample`` runs (one per (d_hidden, n_train)
group, the weight decay and seed cycling through their values) are timed and the rate is
extrapolated. Printed: runs per hour both ways and their ratio, and the sweep's class counts per
weight decay.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

WDS = (0.01, 0.03, 0.1, 0.3, 1.0)
WIDTHS = (16, 32, 64)
N_TRAIN = (750, 1250, 1750)
SEEDS = (0, 1, 2)


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "groklab.cli", *args]


def bench_sweep(tmp: Path, steps: int | None = None, sample: int = 9, keep: Path | None = None) -> dict:
    """Time the reduced grid as one sweep and ``sample`` of its runs as separate trainings.

    Returns ``{"sweep_s", "sweep_runs_per_h", "train_s", "train_runs_per_h", "ratio", "counts"}``.
    """
    from .sweep.results import read_results

    extra = ["--train.steps", str(steps)] if steps else []
    out = keep or tmp / "sweep"
    grid = [f"train.weight_decay={','.join(map(str, WDS))}", f"model.d_hidden={','.join(map(str, WIDTHS))}",
            f"task.n_train={','.join(map(str, N_TRAIN))}"]
    args = ["sweep", "--preset", "pair-parity-sweep", *[a for g in grid for a in ("--grid", g)],
            "--seeds", "0-2", "--out", str(out), "--no-progress", *extra]
    print("sweep: groklab " + " ".join(args))
    t0 = time.perf_counter()
    subprocess.run(_cmd(*args), check=True)
    sweep_s = time.perf_counter() - t0
    n = len(WDS) * len(WIDTHS) * len(N_TRAIN) * len(SEEDS)
    rows = read_results(out)
    counts = {wd: Counter(r["outcome"] for r in rows if float(r["train.weight_decay"]) == wd) for wd in WDS}
    picks = list(itertools.product(WIDTHS, N_TRAIN))[:sample]
    train_s = 0.0
    for i, (w, m) in enumerate(picks):
        wd, seed = WDS[i % len(WDS)], SEEDS[i % len(SEEDS)]
        a = ["train", "--preset", "pair-parity-sweep", "--train.weight_decay", str(wd), "--model.d_hidden",
             str(w), "--task.n_train", str(m), "--train.seed", str(seed), "--out", str(tmp / f"train{i}"),
             "--no-progress", *extra]
        t0 = time.perf_counter()
        subprocess.run(_cmd(*a), check=True, stdout=subprocess.DEVNULL)
        dt = time.perf_counter() - t0
        train_s += dt
        print(f"  groklab train wd {wd} d_hidden {w} n_train {m} seed {seed}: {dt:.1f} s")
    res = {"sweep_s": sweep_s, "sweep_runs_per_h": n / sweep_s * 3600, "train_s": train_s,
           "train_runs_per_h": len(picks) / train_s * 3600, "counts": counts}
    res["ratio"] = res["sweep_runs_per_h"] / res["train_runs_per_h"]
    print(f"sweep: {n} runs in {sweep_s:.0f} s = {res['sweep_runs_per_h']:.0f} runs/h")
    print(f"one after another (groklab train, {len(picks)} runs timed): {train_s:.0f} s = "
          f"{res['train_runs_per_h']:.0f} runs/h; all {n} would take {n * train_s / len(picks) / 60:.0f} min")
    print(f"sweep throughput / sequential: {res['ratio']:.1f}x (target >= 5x)")
    for wd, c in counts.items():
        kinds = ("grok", "memorise", "cant_fit", "together")
        print(f"  wd {wd}: " + ", ".join(f"{k} {c.get(k, 0)}" for k in kinds))
    return res
