"""``run_sweep``: expand a spec, write ``sweep.json``, train the groups on a backend, write
``results.csv``. Re-running the same spec into the same directory resumes it: finished members
are skipped and interrupted groups continue from their last checkpoint.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import ConfigError
from ..runs import RunError, atomic_write
from .local import run_local, threads_per_worker
from .results import write_results
from .spec import SPEC_FILE, SweepSpec, expand, group_members, read_sweep_json, spec_json
from .worker import GroupJob, member_done

BACKENDS = ("local", "ray")
_SAME = ("kind", "preset", "overrides", "grid", "seeds", "vary_data", "stop", "group_size")


def _norm(d: dict[str, Any]) -> str:
    return json.dumps({k: d.get(k) for k in _SAME}, sort_keys=True, default=str)


def _seeds_grown(saved: dict[str, Any], new: dict[str, Any]) -> bool:
    """The new spec is the saved one with more seeds (every saved seed kept)."""
    same = all(json.dumps(saved.get(k), sort_keys=True, default=str) == json.dumps(new.get(k), sort_keys=True,
                                                                                   default=str)
               for k in _SAME if k != "seeds")
    return same and set(saved.get("seeds") or []) <= set(new.get("seeds") or [])


def prepare(spec: SweepSpec, out: Path, workers: int, extra: dict[str, Any] | None = None,
            extend: bool = False) -> tuple[dict[str, Any], list]:
    """Expand ``spec`` and write (or check) ``out/sweep.json``; returns it and the members.

    A new sweep needs an empty or missing ``out``. An existing one must hold the same spec
    (its saved groups are reused, so the batches do not depend on ``workers``), or the same spec
    with more seeds (the saved members keep their runs and groups; the new ones get new groups).
    With ``extend`` (crossover), the saved members may be a prefix of this spec's.

    Raises:
        RunError: ``out`` holds something else, or a different sweep.
        ConfigError: a bad spec.
    """
    members = expand(spec)
    path = out / SPEC_FILE
    if path.exists():
        saved = read_sweep_json(out)
        dirs = [m.dir for m in members]
        saved_dirs = [m["dir"] for m in saved["members"]]
        new = spec_json(spec, members, [])
        same = _norm(saved) == _norm(new)
        grown = not same and _seeds_grown(saved, new) and set(saved_dirs) <= set(dirs)
        if not same and not grown and not (extend and dirs[:len(saved_dirs)] == saved_dirs):
            raise RunError(f"{out} holds a different sweep ({path}); re-run its own command to resume it "
                           "(only more seeds may be added), or choose another --out")
        index = {d: i for i, d in enumerate(dirs)}
        groups = [[index[saved_dirs[i]] for i in g] for g in saved["groups"]]
        old = set(saved_dirs)
        fresh = [i for i, d in enumerate(dirs) if d not in old]
        if fresh:
            groups += [[fresh[i] for i in g]
                       for g in group_members([members[i] for i in fresh], spec.group_size, workers)]
    else:
        if out.exists() and any(out.iterdir()):
            raise RunError(f"{out} is not empty and has no {SPEC_FILE}; choose another --out")
        groups = group_members(members, spec.group_size, workers)
    d = spec_json(spec, members, groups, extra)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(d, indent=1))
    return d, members


def jobs_for(out: Path, d: dict[str, Any], members: list, threads: int) -> list[GroupJob]:
    """A ``GroupJob`` for every group with an unfinished member."""
    jobs = []
    for g, idx in enumerate(d["groups"]):
        ms = [members[i] for i in idx]
        if all(member_done(out / m.dir, m.config.train.steps) for m in ms):
            continue
        jobs.append(GroupJob(str(out.resolve()), g, tuple(m.dir for m in ms),
                             tuple(m.config.to_dict() for m in ms), d["stop"], threads))
    return jobs


def run_jobs(jobs: list[GroupJob], backend: str, workers: int, address: str | None,
             progress: bool, total: int, log: list[str] | None = None) -> None:
    """Train ``jobs`` on ``backend`` with a members-done progress bar; with ``log`` (tracker kinds),
    each group's members are mirrored to the trackers as soon as the group is done."""
    bar = tqdm(total=total, disable=not progress, unit="run", desc="sweep", dynamic_ncols=True)
    by_group = {j.group: j for j in jobs}

    def done(res: dict) -> None:
        bar.update(res["members"])
        if log:
            job = by_group[res["group"]]
            mirror_members(log, [Path(job.sweep_dir) / d for d in job.dirs])

    try:
        if backend == "local":
            run_local(jobs, workers, done)
        elif backend == "ray":
            from .ray_backend import run_ray

            run_ray(jobs, address=address, on_done=done)
        else:
            raise ConfigError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    finally:
        bar.close()


def mirror_members(kinds: list[str], dirs: list[Path]) -> None:
    """Mirror each finished member's ``metrics.jsonl`` to the trackers ``kinds``
    (``train.tracking.mirror_metrics``: steps a tracker already holds are skipped, so mirroring
    a member twice logs nothing twice)."""
    from ..train.tracking import mirror_metrics

    for d in dirs:
        if (d / "metrics.jsonl").exists():
            mirror_metrics(kinds, d)


def run_sweep(spec: SweepSpec, out: Path, backend: str = "local", workers: int | None = None,
              address: str | None = None, progress: bool = True, threads: int | None = None,
              log: list[str] | None = None) -> Path:
    """Run (or resume) the sweep ``spec`` into ``out``; returns the path of ``results.csv``.

    Args:
        spec: what to sweep (``SweepSpec``).
        out: the sweep directory.
        backend: ``local`` (a process pool) or ``ray``.
        workers: worker processes for ``local`` (default: one per core); the groups are split
            so there are at least this many when possible. With ``ray``, one task per group and
            ``threads`` CPUs each; the cluster schedules them.
        address: ``ray``: ``auto``, ``HOST:PORT``, or None for a local loopback instance.
        progress: show a progress bar over members.
        threads: torch threads per group (default ``cores // workers``, so the workers never
            ask for more threads than there are cores).
        log: tracker kinds (``tensorboard``, ``wandb``): every member directory gets its own
            tracker run, written in this process as its group finishes (and, for members
            finished by an earlier session, at the end), from its ``metrics.jsonl``.

    Raises:
        ConfigError, RunError: bad spec, a directory holding another sweep, a missing backend.
    """
    from .local import cores

    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "ray":
        from .ray_backend import check_ray

        check_ray()  # exit 2 with the install line before anything is written
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if log:
        from ..train.tracking import importable_kinds

        log = importable_kinds(log)  # an unknown kind or a missing package: exit 2 before training
    workers = workers or cores()
    out = Path(out)
    d, members = prepare(spec, out, workers)
    threads = threads or threads_per_worker(workers)
    jobs = jobs_for(out, d, members, threads)
    t0 = time.perf_counter()
    if jobs:
        run_jobs(jobs, backend, workers, address, progress, sum(len(j.dirs) for j in jobs), log)
    if log:  # members an earlier session finished (the rest are already mirrored: skipped)
        mirror_members(log, [out / m["dir"] for m in d["members"]])
    path = write_results(out, d)
    _summary(path, len(members), len(jobs), time.perf_counter() - t0)
    return path


def _summary(path: Path, n: int, n_jobs: int, elapsed: float) -> None:
    from .results import read_results

    rows = read_results(path.parent)
    counts = Counter(r["outcome"] or "unclassified" for r in rows)
    what = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    grokked = sum(1 for r in rows if r.get("grok_step") not in (None, ""))
    print(f"{path}: {n} runs ({what}; {grokked} reached 99% test accuracy); "
          f"{n_jobs} groups trained in {elapsed:.1f} s")
