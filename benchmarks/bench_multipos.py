"""ms/step of ``Trainer.train_step`` with the multi-position fast path (``models.multipos``) on and
off (the vmapped generic forward), interleaved in one process so that machine noise hits both.

    python benchmarks/bench_multipos.py [--reps 15] [--threads N] [--presets digits5 induction ...]

Each rep times one step of each path (forward, backward, AdamW), alternating which goes first;
the step index advances, so infinite-data presets draw a fresh batch each step (included, as in
training). The heap is kept (``retained_heap``), as ``Trainer.run`` does. It prints wall-clock
ms and process CPU ms per step (medians); on a machine shared with other jobs, the 1-thread CPU
time is the steadiest measure (a 2-thread step waits on a descheduled thread at every op).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from groklab._heap import retained_heap
from groklab.presets import get_preset
from groklab.train.loop import Member, Trainer

PRESETS = ("digits5", "digits5-infinite", "induction", "induction-infinite")


def bench(preset: str, reps: int, tmp: Path) -> dict[str, list[tuple[float, float]]]:
    """``{"fast": [(wall ms, cpu ms), ...], "generic": [...]}`` per step for ``preset``."""
    tr = Trainer([Member(get_preset(preset), tmp / preset)], progress=False)
    times: dict[str, list[tuple[float, float]]] = {"fast": [], "generic": []}
    step = 0

    def one(path: str) -> tuple[float, float]:
        nonlocal step
        tr.multipos = path == "fast"
        t, c = time.perf_counter(), time.process_time()
        tr.train_step(step)
        step += 1
        return (time.perf_counter() - t) * 1e3, (time.process_time() - c) * 1e3

    for path in ("fast", "generic", "fast", "generic"):  # warm-up
        one(path)
    for r in range(reps):
        for path in (("fast", "generic") if r % 2 == 0 else ("generic", "fast")):
            times[path].append(one(path))
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms/step, median of "
          f"{args.reps} interleaved steps: wall (cpu)")
    print(f"{'preset':<20} {'fast':>16} {'generic':>16} {'speed-up wall (cpu)':>20}")
    with tempfile.TemporaryDirectory() as tmp, retained_heap():  # as in Trainer.run
        for preset in args.presets:
            t = bench(preset, args.reps, Path(tmp))
            med = {p: [statistics.median(x[i] for x in t[p]) for i in (0, 1)] for p in t}
            (fw, fc), (gw, gc) = med["fast"], med["generic"]
            print(f"{preset:<20} {fw:>7.1f} ({fc:>6.1f}) {gw:>7.1f} ({gc:>6.1f}) "
                  f"{gw / fw:>10.1f}x ({gc / fc:.1f}x)", flush=True)


if __name__ == "__main__":
    main()
