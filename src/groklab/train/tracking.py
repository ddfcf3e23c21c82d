"""Experiment tracking: mirror ``metrics.jsonl`` rows to TensorBoard or to Weights & Biases (offline).

Both libraries are optional extras (``pip install -e ".[tensorboard]"``, ``".[wandb]"``) and are
imported only when their kind is opened. ``metrics.jsonl`` stays the record; a tracker is a copy
of it in a viewer. Each run directory (each ensemble member) gets its own tracker run:

    RUN/tensorboard/events.out.tfevents.*   TensorBoard event files, one per session
    RUN/wandb/offline-run-*/run-<id>.wandb  W&B offline runs, one per session, one run id

Scalar names (``global_step`` / ``step`` = the row's ``step``, optimizer steps): ``loss/train``,
``loss/test`` (mean NLL, nats), ``acc/train``, ``acc/test`` (fraction), ``weights/sum_sq``,
``loss_by_part/{train,test}/<part>`` and ``time/elapsed_s`` (training wall seconds). A ``null``
value is not logged. The config is written once per run: TensorBoard text ``config`` plus its
hparams, W&B's run config. See ``docs/tracking.md``.

Resume: opening a tracker on a run directory that already has tracker files continues the same
tracker run and never logs a step twice. TensorBoard reads its event files; rows before the
highest step found there are skipped, and that step (which a killed writer may have left half
written) is purged (``SummaryWriter(purge_step=...)``) and logged again. W&B reads its offline
``.wandb`` files, resumes their run id (``resume="allow"``; ``wandb sync`` uploads the sessions in
order), and skips rows up to the highest step found. Skipped rows are the same as the logged ones
because a resumed run retraces the same weights.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError
from ..runs import config_json, read_config, read_metrics
from .tracker_files import last_record_kind, tb_history, wandb_history

KINDS = ("tensorboard", "wandb")
# metrics.jsonl key -> scalar name
_SCALARS = (("train_loss", "loss/train"), ("test_loss", "loss/test"), ("train_acc", "acc/train"),
            ("test_acc", "acc/test"), ("sum_sq_weights", "weights/sum_sq"), ("elapsed_s", "time/elapsed_s"))
_HPARAM_METRICS = ("loss/train", "loss/test", "acc/train", "acc/test")
# Never reach the network: offline, no error reporting (Sentry/OpenTelemetry), no console capture,
# no system/GPU sampling (it queries cloud metadata URLs), no git, code or pip-freeze snapshots.
_WANDB_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false",
              "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true"}
_WANDB_SETTINGS = {"mode": "offline", "silent": True, "console": "off", "save_code": False,
                   "disable_code": True, "disable_git": True, "x_disable_stats": True,
                   "x_disable_meta": True, "x_disable_machine_info": True, "x_disable_viewer": True,
                   "x_save_requirements": False, "reinit": "create_new"}


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The tracker scalars of one ``metrics.jsonl`` row, by name (see the module docstring).

    ``None`` values (``test_*`` without a test split, a part with no slot) and missing keys (runs
    from before the task family have no ``*_loss_by_part``) are left out. ``step`` is not a scalar.
    """
    out = {name: float(row[key]) for key, name in _SCALARS if row.get(key) is not None}
    for split in ("train", "test"):
        for part, v in (row.get(f"{split}_loss_by_part") or {}).items():
            if v is not None:
                out[f"loss_by_part/{split}/{part}"] = float(v)
    return out


class Tracker:
    """The trackers of one run directory, opened by :func:`open_trackers`; a context manager.

    ``log(row)`` sends one metrics row to every tracker, ``close()`` flushes and closes them.
    With no kinds it does nothing, so a caller can always hold one.
    """

    def __init__(self, backends: dict[str, Any]):
        self._backends = backends

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._backends)

    def log(self, row: dict[str, Any]) -> None:
        """Log one ``metrics.jsonl`` row (exactly the dict written there) at ``row["step"]``.

        A row whose step the tracker already holds (an earlier session's, or a step not above the
        last one logged here) is ignored, so replaying rows is safe. ``None`` values are skipped.
        Raises KeyError if ``row`` has no ``"step"``.
        """
        step = int(row["step"])
        values = scalars(row)
        for b in self._backends.values():
            b.log(step, values)

    def close(self) -> None:
        """Flush and close every tracker (W&B: ``run.finish()``). Closing twice is a no-op; if one
        tracker fails to close, the others are still closed and the first error is raised."""
        backends, self._backends = self._backends, {}
        error = None
        for b in backends.values():
            try:
                b.close()
            except Exception as e:  # close the rest, then raise
                error = error or e
        if error is not None:
            raise error

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_kinds(kinds: Iterable[str]) -> list[str]:
    """Return ``kinds`` without repeats, in order (a lone string is one kind). Raises ConfigError on
    an unknown kind."""
    if isinstance(kinds, str):
        kinds = [kinds]
    out: list[str] = []
    for k in kinds:
        if k not in KINDS:
            raise ConfigError(f"unknown tracker {k!r}; valid kinds: {', '.join(KINDS)} "
                              f"(e.g. `--log tensorboard`)")
        if k not in out:
            out.append(k)
    return out


def importable_kinds(kinds: Iterable[str]) -> list[str]:
    """``check_kinds(kinds)`` after importing each kind's package (ConfigError if one is missing)."""
    kinds = check_kinds(kinds)
    for k in kinds:
        _IMPORTS[k]()
    return kinds


def open_trackers(kinds: list[str], run_dir: Path, config: Config) -> Tracker:
    """Open a tracker of each kind for one run directory (one ensemble member).

    Args:
        kinds: tracker kinds, from ``KINDS`` (``"tensorboard"``, ``"wandb"``); may be empty.
        run_dir: the run directory; trackers write under ``run_dir/tensorboard`` and
            ``run_dir/wandb``, so open them after the trainer has checked that it is empty.
        config: the run's config (TensorBoard text and hparams, W&B run config).

    Returns:
        A :class:`Tracker`. On resume it continues the run's tracker files (module docstring).

    Raises:
        ConfigError: an unknown kind (the message lists the valid ones), or a kind whose package
            is not installed (the message gives the ``pip install`` command). Nothing is left open.
    """
    kinds = importable_kinds(kinds)  # every import first, so a missing package opens nothing
    run_dir = Path(run_dir)
    backends: dict[str, Any] = {}
    try:
        for k in kinds:
            backends[k] = _BACKENDS[k](run_dir, config)
    except BaseException:
        Tracker(backends).close()
        raise
    return Tracker(backends)


def mirror_metrics(kinds: list[str], run_dir: Path) -> int:
    """Replay a run directory's ``metrics.jsonl`` into trackers, e.g. for a run trained without
    ``--log``, then close them.

    Steps a tracker already holds are skipped (see "Resume" in the module docstring), so mirroring
    twice, or mirroring a run that was trained with ``--log``, logs nothing twice. An ensemble
    root has no metrics of its own: mirror each member directory.

    Returns:
        The number of rows read from ``metrics.jsonl``.

    Raises:
        ConfigError: as :func:`open_trackers`.
        RunError: ``run_dir`` is not a run directory, or its files are corrupt.
    """
    kinds = check_kinds(kinds)
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    with open_trackers(kinds, run_dir, config) as tracker:
        for row in rows:
            tracker.log(row)
    return len(rows)


class TrainerMirror:
    """The ``Trainer(on_rows=...)`` hook that mirrors every member's new metrics rows.

    The trackers open at the first row (after the trainer has checked and created the run
    directories); on a resumed run the rows kept from before the kill are replayed first, so
    nothing the killed process had not flushed goes missing and nothing is logged twice. Call
    ``close()`` when training ends (``with`` works too).
    """

    def __init__(self, kinds: list[str], members: list[Any]):
        self.kinds, self.members = importable_kinds(kinds), members  # a missing package fails before training
        self.trainer: Any = None  # set to the Trainer for the replay on resume
        self._trackers: list[Tracker] | None = None

    def __call__(self, step: int, rows: list[dict[str, Any]]) -> None:
        if self._trackers is None:
            self._trackers = [open_trackers(self.kinds, m.run_dir, m.config) for m in self.members]
            if self.trainer is not None:
                for t, kept in zip(self._trackers, self.trainer.metrics, strict=True):
                    for r in kept:
                        t.log(r)
        for t, r in zip(self._trackers, rows, strict=True):
            t.log(r)

    def close(self) -> None:
        for t in self._trackers or []:
            t.close()

    def __enter__(self) -> TrainerMirror:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- TensorBoard --------------------------------------------------------------------------------
def _import_tensorboard() -> tuple[Any, Any, Any]:
    """``(SummaryWriter, hparams, Event)``: torch's writer if ``tensorboard`` is installed, else
    tensorboardX's."""
    try:
        import tensorboard  # noqa: F401 - torch.utils.tensorboard needs it
        from tensorboard.compat.proto.event_pb2 import Event
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams
    except ImportError:
        try:
            from tensorboardX import SummaryWriter
            from tensorboardX.proto.event_pb2 import Event
            from tensorboardX.summary import hparams
        except ImportError:
            raise ConfigError('--log tensorboard needs the tensorboard package: '
                              'pip install -e ".[tensorboard]" (or pip install tensorboardX)') from None
    return SummaryWriter, hparams, Event


class _TensorBoard:
    def __init__(self, run_dir: Path, config: Config):
        SummaryWriter, hparams, Event = _import_tensorboard()
        log_dir = run_dir / "tensorboard"
        self._held, has_config = tb_history(log_dir, Event)
        self._last: int | None = None
        self._writer = SummaryWriter(str(log_dir), purge_step=self._held, flush_secs=10)
        if not has_config or self._held == 0:  # purge_step=0 hides the old config too
            self._writer.add_text("config", "```json\n" + config_json(config) + "\n```", 0)
            file_writer = self._writer._get_file_writer()  # add_hparams would make a sub-run
            for summary in hparams(_flat_hparams(config.to_dict()), dict.fromkeys(_HPARAM_METRICS, 0.0)):
                file_writer.add_summary(summary, 0)

    def log(self, step: int, values: dict[str, float]) -> None:
        if (self._held is not None and step < self._held) or (self._last is not None and step <= self._last):
            return
        for name, v in values.items():
            self._writer.add_scalar(name, v, global_step=step)
        self._last = step

    def close(self) -> None:
        self._writer.close()


def _flat_hparams(d: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Dotted keys (``train.lr``); values TensorBoard's hparams accept (others as text)."""
    out: dict[str, bool | int | float | str] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_hparams(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, bool | int | float | str) else str(v)
    return out


def _import_wandb() -> Any:
    for k, v in _WANDB_ENV.items():  # before wandb starts its service, which reads them
        os.environ[k] = v
    try:
        import wandb
        from wandb.proto import wandb_internal_pb2  # noqa: F401 - the .wandb record format
    except ImportError:
        raise ConfigError('--log wandb needs the wandb package: pip install -e ".[wandb]"') from None
    return wandb


class _Wandb:
    def __init__(self, run_dir: Path, config: Config):
        wandb = _import_wandb()
        from wandb.proto.wandb_internal_pb2 import Record

        self._record = Record
        run_dir.mkdir(parents=True, exist_ok=True)
        run_id, self._held = wandb_history(run_dir / "wandb", Record)
        fields = getattr(wandb.Settings, "model_fields", _WANDB_SETTINGS)  # older wandb lacks some
        settings = wandb.Settings(**{k: v for k, v in _WANDB_SETTINGS.items() if k in fields})
        resume = {"id": run_id, "resume": "allow"} if run_id else {}
        self._run = wandb.init(mode="offline", dir=run_dir, project="groklab", name=run_dir.name,
                               config=config.to_dict(), settings=settings, **resume)

    def log(self, step: int, values: dict[str, float]) -> None:
        if self._held is not None and step <= self._held:
            return
        self._run.log(values, step=step)
        self._held = step

    def close(self) -> None:
        """``run.finish()``, then wait (up to 60 s) until wandb's service has written the run's exit
        record: ``finish`` returns before the ``.wandb`` file is complete, and a tracker opened
        next on this directory reads that file."""
        self._run.finish()
        path, deadline = Path(self._run.settings.sync_file), time.monotonic() + 60.0
        while time.monotonic() < deadline:
            try:
                if last_record_kind(path, self._record) == "exit":
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        warnings.warn(f"{path}: wandb did not finish writing within 60 s", stacklevel=2)


_IMPORTS = {"tensorboard": _import_tensorboard, "wandb": _import_wandb}
_BACKENDS = {"tensorboard": _TensorBoard, "wandb": _Wandb}
