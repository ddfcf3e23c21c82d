"""A/B of a fast-path switch on a preset's training step, both settings alternated in one
process (so that machine noise hits both alike).

    python benchmarks/bench_switch.py induction softmax_ce.USE_KERNEL [--rounds 20]

``MODULE.FLAG`` is a boolean in ``groklab.models.MODULE`` (e.g. ``softmax_ce.USE_KERNEL``,
``multipos.USE_KERNEL``). One ``Trainer`` of the preset runs inside ``retained_heap()``, as
``groklab bench`` does; each round sets the flag off and on (the order reversed on odd rounds)
and takes the median ms of 5 ``train_step`` calls after 2 untimed ones. Prints each setting's
best median and the median over rounds of the paired ratio off / on (> 1: the switch helps).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

from groklab._heap import retained_heap
from groklab.bench import _trainer
from groklab.presets import get_preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("preset")
    ap.add_argument("flag", help="MODULE.FLAG in groklab.models, e.g. softmax_ce.USE_KERNEL")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mod_name, attr = args.flag.rsplit(".", 1)
    mod = importlib.import_module("groklab.models." + mod_name)
    if not isinstance(getattr(mod, attr, None), bool):
        ap.error(f"groklab.models.{mod_name}.{attr} is not a boolean switch")
    with retained_heap(), tempfile.TemporaryDirectory() as tmp:
        tr = _trainer(get_preset(args.preset).resolved(), 1, Path(tmp))
        step, res = 20, {False: [], True: []}  # past the warm-up's lr 0
        for r in range(args.rounds):
            for value in (False, True) if r % 2 else (True, False):
                setattr(mod, attr, value)
                for _ in range(2):
                    tr.train_step(step)
                    step += 1
                times = []
                for _ in range(5):
                    t = time.perf_counter()
                    tr.train_step(step)
                    times.append(time.perf_counter() - t)
                    step += 1
                res[value].append(statistics.median(times) * 1e3)
    off, on = min(res[False]), min(res[True])
    paired = statistics.median(a / b for a, b in zip(res[False], res[True], strict=True))
    print(f"{args.preset} {args.flag}: off {off:.2f} ms, on {on:.2f} ms (best of {args.rounds} medians); "
          f"median paired ratio off / on {paired:.3f}")


if __name__ == "__main__":
    main()
