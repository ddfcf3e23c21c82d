"""``--backend ray``: the sweep's groups as Ray core tasks, on a cluster or a loopback instance.

Why Ray core tasks and not Ray Tune: a group is already a plain resumable function
(``worker.run_group``) and the grid is fixed, so Tune's search algorithms and schedulers have
nothing to do, while its trial machinery would add per-trial working directories (relative paths
break), ~24 bookkeeping files per experiment and the rule that trainables live in an installed
module (``../shared/reference/ray.md``). One task per group, ``num_cpus`` = the group's torch
threads; Ray retries a task whose worker process dies (``max_retries``), and the retry resumes the
group from its last checkpoint. Errors raised by the group itself (a bad config) are not retried.

With no ``address``, groklab starts a local instance for the sweep and stops it afterwards. It
listens on 127.0.0.1 only, sends no usage statistics and writes no auth token: Ray's defaults
listen on every interface and report usage, so these variables are set before ``import ray``
(``ray.md``): ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, ``RAY_USAGE_STATS_ENABLED=0``,
``RAY_AUTH_MODE=disabled``. With ``address`` (``auto`` or ``HOST:PORT``) the cluster's own
settings apply. The workers need groklab installed and the sweep directory on a shared path.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..config import ConfigError
from .worker import GroupJob, run_group

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_AUTH_MODE": "disabled"}
INSTALL = 'pip install -e ".[ray]"'
MAX_RETRIES = 3  # worker deaths per group


def check_ray() -> None:
    """Raise ConfigError (exit 2) with the install command if Ray is not installed."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(f"--backend ray needs Ray, which is not installed: {INSTALL} "
                          "(or pip install 'ray==2.60.0'), or use --backend local")


@contextmanager
def ray_session(address: str | None, num_cpus: int | None = None) -> Iterator[object]:
    """Connect to ``address`` (``auto`` / ``HOST:PORT``), or start a loopback-only local instance
    with ``num_cpus`` CPUs (default: the cores of this process); shut down on exit.

    Raises:
        ConfigError: Ray missing; no cluster at ``address``; Ray imported earlier in this process
            without the loopback settings (they only act before ``import ray``).
    """
    check_ray()
    if address is None:
        if "ray" in sys.modules and any(os.environ.get(k) != v for k, v in LOOPBACK_ENV.items()):
            raise ConfigError("ray was imported before groklab could make its local instance loopback-only; "
                              "set " + " ".join(f"{k}={v}" for k, v in LOOPBACK_ENV.items()) +
                              " in the environment, or pass --address of a running cluster")
        os.environ.update(LOOPBACK_ENV)
    import ray

    from .local import cores

    try:
        if address is None:
            ctx = ray.init(num_cpus=num_cpus or cores(), include_dashboard=False, log_to_driver=False,
                           configure_logging=False)
        else:
            ctx = ray.init(address=address, log_to_driver=False, configure_logging=False)
    except ConnectionError as e:
        raise ConfigError(f"--address {address}: no Ray cluster there ({e}); start one with "
                          "`ray start --head`, or leave out --address for a local instance") from None
    try:
        yield ctx
    finally:
        ray.shutdown()


def run_ray(jobs: list[GroupJob], address: str | None, on_done: Callable[[dict], None] | None = None,
            num_cpus: int | None = None) -> None:
    """Run ``jobs`` as Ray tasks (``num_cpus`` = each job's threads) and wait for all of them.

    Raises:
        The group's own error (e.g. ConfigError) if a task fails for a reason other than its
        worker dying; RuntimeError if a worker died more than ``MAX_RETRIES`` times.
    """
    with ray_session(address, num_cpus):
        import ray
        from ray.exceptions import RayTaskError, WorkerCrashedError

        task = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(run_group)
        pending = {task.options(num_cpus=job.threads).remote(job): job for job in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            job = pending.pop(ref)
            try:
                res = ray.get(ref)
            except RayTaskError as e:
                raise e.as_instanceof_cause() from None
            except WorkerCrashedError:
                raise RuntimeError(f"group {job.group} ({job.dirs[0]} ...): its Ray worker died "
                                   f"{MAX_RETRIES + 1} times") from None
            if on_done:
                on_done(res)
