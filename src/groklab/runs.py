"""The run directory: the contract between training, analysis, reports and users.

Layout (documented in the README)::

    RUN/config.json                              resolved config + "groklab_version"
    RUN/metrics.jsonl                            one JSON object per evaluation
    RUN/checkpoints/step_{step:07d}.safetensors  TransformerLens state dict;
                                                 metadata "step" and "config" (JSON)
    RUN/checkpoints/optim_{step:07d}.safetensors AdamW moments for --resume (latest two kept)

Every file is written atomically: to a temporary file in the same folder, then renamed. Its mode
follows the umask.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from . import __version__
from .config import Config, ConfigError

# config keys a resumed run may change (extend it, stop it earlier, move it): anything else would
# make it a different experiment (``groklab train --resume``, ``groklab slingshot``)
RESUME_KEYS = ("train.steps", "train.stop_test_loss", "train.stop_test_acc", "train.device")

CKPT_RE = re.compile(r"^step_(\d{7})\.safetensors$")
OPTIM_RE = re.compile(r"^optim_(\d{7})\.safetensors$")


class RunError(RuntimeError):
    """A run directory is missing, incomplete or corrupt. The CLI turns it into exit code 2."""


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, then rename.

    A reader never sees a half-written file, and a failure (a full disk, a crash) leaves the old
    file (or none); the temp file is removed. The file's mode follows the umask (0644 under umask
    022), like any tool's output. An ``OSError`` names ``path``, not the temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = _create_temp(path)
    try:
        try:
            view = memoryview(raw)
            while view:  # os.write may write less than asked (e.g. > 2 GiB)
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(path)) from e  # OSError picks the errno's subclass
        raise


def _create_temp(path: Path) -> tuple[int, Path]:
    """Create ``.NAME.<random>.tmp`` beside ``path``, exclusively, with mode 0666 less the umask
    (``tempfile.mkstemp`` would make it 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(tmp))  # pragma: no cover


def config_json(cfg: Config) -> str:
    d = cfg.to_dict()
    d["groklab_version"] = __version__
    return json.dumps(d, indent=2, sort_keys=True)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}.safetensors"


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Tensor], cfg: Config) -> None:
    """Write the state dict with ``step`` and ``config`` (JSON) in the safetensors metadata."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    meta = {"step": str(step), "config": config_json(cfg)}
    atomic_write(checkpoint_path(run_dir, step), st_save(tensors, metadata=meta))


def save_optimizer(run_dir: Path, step: int, tensors: dict[str, Tensor], t: int) -> None:
    """Write the optimizer moments for ``step``, then delete all but the newest two."""
    ck = Path(run_dir) / "checkpoints"
    data = st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
                   metadata={"step": str(step), "t": str(t)})
    atomic_write(ck / f"optim_{step:07d}.safetensors", data)
    old = sorted(int(m.group(1)) for f in ck.iterdir() if (m := OPTIM_RE.match(f.name)))
    for s in old[:-2]:
        (ck / f"optim_{s:07d}.safetensors").unlink(missing_ok=True)


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Load tensors and metadata. Raises RunError if the file is missing or corrupt."""
    try:
        raw = Path(path).read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        return st_load(raw), header.get("__metadata__", {}) or {}
    except FileNotFoundError:
        raise RunError(f"{path}: checkpoint file is missing") from None
    except (SafetensorError, ValueError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: corrupt checkpoint ({e}); delete it or re-run training") from None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Parse ``metrics.jsonl``. A truncated last line (a killed writer) is ignored."""
    if not path.exists():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise RunError(f"{path}: line {i + 1} is not valid JSON") from None
    return rows


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_config(run_dir: Path) -> Config:
    """The run's config. Raises RunError if ``config.json`` is missing or invalid."""
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise RunError(f"{run_dir}: no such run directory (train one with `groklab train --out {run_dir}`)")
    try:
        return Config.from_dict(json.loads(path.read_text())).resolved()
    except FileNotFoundError:
        raise RunError(f"{path}: missing; {run_dir} is not a groklab run directory") from None
    except (json.JSONDecodeError, ConfigError) as e:
        raise RunError(f"{path}: invalid config ({e})") from None


def checkpoint_steps(run_dir: Path) -> list[int]:
    ck = Path(run_dir) / "checkpoints"
    if not ck.is_dir():
        return []
    return sorted(int(m.group(1)) for f in ck.iterdir() if (m := CKPT_RE.match(f.name)))


def last_complete_step(run_dirs: list[Path]) -> int | None:
    """The newest step that every run directory has with both a checkpoint and optimizer state:
    where ``--resume`` restarts. None if there is none."""
    common: set[int] | None = None
    for d in run_dirs:
        ck = Path(d) / "checkpoints"
        names = [f.name for f in ck.iterdir()] if ck.is_dir() else []
        optim = {int(m.group(1)) for n in names if (m := OPTIM_RE.match(n))}
        have = set(checkpoint_steps(d)) & optim
        common = have if common is None else common & have
    return max(common) if common else None


@dataclass
class Run:
    """A training run read from disk: ``groklab.load_run(path)``.

    Attributes:
        path: the run directory.
        config: the resolved ``Config`` it was trained with.
        metrics: one dict per evaluation (``step``, ``train_loss``, ``test_loss``, ``train_acc``,
            ``test_acc``, ...), in step order.
        steps: the steps that have a checkpoint, ascending.
    """

    path: Path
    config: Config
    metrics: list[dict[str, Any]] = field(repr=False)
    steps: list[int]

    def state_at(self, step: int) -> dict[str, Tensor]:
        """The state dict saved at ``step``. Raises RunError if there is no such checkpoint."""
        if step not in self.steps:
            raise RunError(f"{self.path}: no checkpoint at step {step}; "
                           f"steps: {self.steps[:5]}...{self.steps[-3:]}")
        return read_safetensors(checkpoint_path(self.path, step))[0]

    def model_at(self, step: int | None = None):
        """The model (a ``HookedTransformer``, or an ``MLPModel`` for ``model.family: mlp``) with
        the weights of ``step`` (default: the last checkpoint)."""
        from .models.mlp import MLPModel
        from .models.transformer import HookedTransformer

        if step is None:
            if not self.steps:
                raise RunError(f"{self.path}: no checkpoints yet")
            step = self.steps[-1]
        model = MLPModel(self.config) if self.config.model.family == "mlp" else HookedTransformer(self.config)
        try:
            model.load_state_dict(self.state_at(step))
        except RuntimeError as e:
            raise RunError(f"{checkpoint_path(self.path, step)}: does not match config.json ({e})") from None
        return model.eval()


def load_run(path: str | os.PathLike) -> Run:
    """Open a run directory written by ``groklab train``.

    Raises:
        RunError: the directory or its ``config.json`` is missing or corrupt.
    """
    path = Path(path)
    cfg = read_config(path)
    metrics = read_metrics(path / "metrics.jsonl")
    return Run(path, cfg, metrics, checkpoint_steps(path))
