"""``--backend local``: the sweep's groups on a pool of worker processes on this machine.

``workers`` processes (default: one per core) each train one group at a time with
``threads = max(1, cores // workers)`` torch threads, so the pool never asks for more threads than
the machine has cores (two torch processes with two threads each on two cores made every step
10-40x slower here, README "Performance"). Workers are started with ``spawn`` (no forked torch
state). A group whose worker process dies (killed, out of memory) is submitted again, up to
``retries`` times, and resumes from its last checkpoint.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from .worker import GroupJob, run_group


def cores() -> int:
    """Cores this process may use (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int) -> int:
    """Torch threads per worker so that ``workers`` workers do not oversubscribe the cores."""
    return max(1, cores() // max(1, workers))


def _init_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def run_local(jobs: list[GroupJob], workers: int, on_done: Callable[[dict], None] | None = None,
              retries: int = 2) -> None:
    """Run ``jobs`` on ``workers`` processes (in this process when ``workers`` is 1).

    Raises:
        RuntimeError: a group whose worker died more than ``retries`` times.
        Whatever ``run_group`` raises for a bad group (its error, not a retry).
    """
    if workers <= 1:
        for job in jobs:
            res = run_group(job)
            if on_done:
                on_done(res)
        return
    todo = list(jobs)
    deaths: dict[int, int] = {}
    while todo:
        threads = todo[0].threads
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                                 initializer=_init_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(run_group, job): job for job in todo}
            todo = []
            broken = False
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    res = fut.result()
                except BrokenProcessPool:
                    broken = True
                    todo.append(job)
                    continue
                if on_done:
                    on_done(res)
            if broken:
                for job in todo:
                    deaths[job.group] = deaths.get(job.group, 0) + 1
                    if deaths[job.group] > retries:
                        raise RuntimeError(f"group {job.group} ({job.dirs[0]} ...): its worker died "
                                           f"{deaths[job.group]} times; see the system log (out of memory?)")
