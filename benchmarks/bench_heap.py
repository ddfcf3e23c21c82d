"""Side-by-side A/B of ``groklab._heap.retained_heap`` (glibc mallopt) on training steps.

mallopt settings are process-wide, so each measurement runs in a fresh subprocess; the two
settings alternate (A, B, A, B, ...) so that load changes on a shared machine hit both alike.
Prints minor page faults and ms per step (per member for ensembles), then the ratio of medians.

    python benchmarks/bench_heap.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, sys, tempfile, time
from contextlib import nullcontext
from pathlib import Path
from groklab._heap import retained_heap
from groklab.bench import _trainer, small_config
from groklab.presets import get_preset
name, n, retain = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
cfg = get_preset("nanda2023").resolved()
if name == "small":
    cfg = small_config(cfg)
with retained_heap() if retain else nullcontext(), tempfile.TemporaryDirectory() as tmp:
    tr = _trainer(cfg, n, Path(tmp))
    for s in range(3):
        tr.train_step(s)
    k = 12 if n == 1 else 5
    f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for s in range(k):
        tr.train_step(3 + s)
    ms = (time.perf_counter() - t0) / k * 1e3 / n
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / k
print(json.dumps({"ms": ms, "faults": faults}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cases = [("nanda2023", "nanda", 1), ("nanda2023", "nanda", 8), ("small p=59", "small", 8),
             ("small p=59", "small", 32)]
    for label, name, n in cases:
        res: dict[str, list[dict]] = {"0": [], "1": []}
        for _ in range(args.rounds):
            for retain in ("0", "1"):
                out = subprocess.run([sys.executable, "-c", CHILD, name, str(n), retain],
                                     capture_output=True, text=True, check=True)
                res[retain].append(json.loads(out.stdout.strip().splitlines()[-1]))
        med = {r: statistics.median(x["ms"] for x in v) for r, v in res.items()}
        flt = {r: statistics.median(x["faults"] for x in v) for r, v in res.items()}
        print(f"{label:11s} N={n:<3d} glibc default: {med['0']:7.2f} ms/member/step, "
              f"{flt['0']:8.0f} faults/step | retained_heap: {med['1']:7.2f} ms, {flt['1']:6.0f} "
              f"faults | speed-up {med['0'] / med['1']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
