"""Benchmark ``groklab analyze`` on a synthetic 400-checkpoint p=113 run (nanda2023 model).

The checkpoints are one randomly initialised nanda2023 model plus a random walk of small
perturbations, written with ``groklab.runs.save_checkpoint``: the point is the analysis cost,
not the training. The analysis runs in a child process so that its peak RSS is its own.

Usage::

    python benchmarks/bench_analyze.py                 # synthesise into a temp dir, then analyse
    python benchmarks/bench_analyze.py --dir /tmp/b400 # reuse (or create) a synthetic run there
    python benchmarks/bench_analyze.py --checkpoints 50

Prints the wall time, the peak RSS of the analysis (its process and any worker processes together,
sampled from /proc) and the CPU time. Target (2-core CPU): <= 60 s, <= 2 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, from /proc (Linux), in MiB."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
            continue
    return total


def synthesise(run_dir: Path, n_ckpt: int, every: int = 100) -> None:
    import torch

    from groklab import build_model, get_preset
    from groklab.runs import atomic_write, checkpoint_steps, config_json, save_checkpoint

    if len(checkpoint_steps(run_dir)) == n_ckpt:
        return
    cfg = get_preset("nanda2023").resolved()
    model = build_model(cfg)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    atomic_write(run_dir / "config.json", config_json(cfg))
    rows = []
    for i in range(n_ckpt):
        step = i * every
        for v in state.values():
            v.mul_(0.999).add_(torch.randn(v.shape, generator=g) * 0.01)
        save_checkpoint(run_dir, step, state, cfg)
        rows.append(json.dumps({"step": step, "train_loss": 1.0, "test_loss": 1.0,
                                "train_acc": 0.0, "test_acc": 0.0}))
    atomic_write(run_dir / "metrics.jsonl", "\n".join(rows) + "\n")


def analyse_child(run_dir: Path, workers: int | None) -> None:
    from groklab.analysis.pipeline import analyze_run

    t = time.perf_counter()
    analyze_run(run_dir, progress=False, workers=workers)
    wall = time.perf_counter() - t
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # worker processes, if any
    # ru_maxrss is in KiB on Linux. A worker's ru_maxrss starts from its parent's RSS at fork,
    # so the whole-tree peak is sampled from /proc by the benchmark's parent instead.
    print(json.dumps({"wall_s": round(wall, 2), "parent_rss_mb": round(me.ru_maxrss / 1024, 1),
                      "worker_rss_mb": round(kids.ru_maxrss / 1024, 1),
                      "cpu_s": round(me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, 2),
                      "load_avg_1m": round(os.getloadavg()[0], 2)}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="synthetic run directory (default: a temp dir)")
    ap.add_argument("--checkpoints", type=int, default=400)
    ap.add_argument("--workers", type=int, default=None,
                    help="worker processes for analyze_run (default: its default, 1)")
    ap.add_argument("--child", choices=("synth", "analyse"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "synth":
        synthesise(Path(args.dir), args.checkpoints)
        return 0
    if args.child == "analyse":
        analyse_child(Path(args.dir), args.workers)
        return 0
    tmp = None
    if args.dir:
        run_dir = Path(args.dir)
    else:
        tmp = tempfile.TemporaryDirectory()
        run_dir = Path(tmp.name) / "run"
    # Each phase runs in its own process: a child's ru_maxrss starts from its parent's RSS at
    # fork, so this parent stays small (no torch import) and the analysis is measured alone.
    t = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--child", "synth", "--dir", str(run_dir),
                    "--checkpoints", str(args.checkpoints)], check=True)
    print(f"synthetic run: {run_dir} ({args.checkpoints} checkpoints, p=113, "
          f"{time.perf_counter() - t:.1f} s to write or check)")
    cmd = [sys.executable, __file__, "--child", "analyse", "--dir", str(run_dir)]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tree_peak = 0.0
    while proc.poll() is None:  # sample the RSS of the analysis process and its workers
        tree_peak = max(tree_peak, _tree_rss_mb(proc.pid))
        time.sleep(0.1)
    stdout, stderr = proc.communicate()
    if proc.returncode:
        print(stderr, file=sys.stderr)
        return proc.returncode
    res = json.loads(stdout.strip().splitlines()[-1])
    res["peak_rss_mb"] = round(max(res["parent_rss_mb"], tree_peak), 1)
    ok = res["wall_s"] <= 60 and res["peak_rss_mb"] <= 2048
    print(f"analyze_run: wall {res['wall_s']} s, peak RSS {res['peak_rss_mb']} MB "
          f"(analysis process and its workers together, sampled every 0.1 s; "
          f"getrusage of the analysis process {res['parent_rss_mb']} MB) "
          f"(target <= 60 s, <= 2048 MB: {'met' if ok else 'NOT met'}); CPU {res['cpu_s']} s, "
          f"1-min load average {res['load_avg_1m']} on {os.cpu_count()} cores")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
