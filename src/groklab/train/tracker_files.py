"""Reading tracker files back, so that a resumed run continues its tracker runs without logging a
step twice (``tracking`` module docstring): TensorBoard event files (TFRecord framing) and W&B
offline ``.wandb`` transaction logs (LevelDB log framing)."""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def tfrecords(raw: bytes) -> Iterator[bytes]:
    """The records of a TFRecord file (u64 length, u32 crc, data, u32 crc); a cut tail ends it."""
    pos = 0
    while pos + 12 <= len(raw):
        (n,) = struct.unpack_from("<Q", raw, pos)
        if pos + 16 + n > len(raw):
            return
        yield raw[pos + 12:pos + 12 + n]
        pos += 16 + n


def tb_history(log_dir: Path, Event: Any) -> tuple[int | None, bool]:
    """``(highest step with a scalar, whether a config was written)`` in ``log_dir``'s event files."""
    held, has_config = None, False
    for f in sorted(log_dir.glob("events.out.tfevents.*")):
        try:
            for rec in tfrecords(f.read_bytes()):
                ev = Event.FromString(rec)
                for v in ev.summary.value:
                    if v.tag.startswith(("config/", "_hparams_/")):
                        has_config = True
                    else:
                        held = ev.step if held is None else max(held, ev.step)
        except Exception as e:  # a damaged file must not stop training
            warnings.warn(f"{f}: unreadable TensorBoard event file ({e}); steps may be logged twice",
                          stacklevel=3)
    return held, has_config


# -- Weights & Biases -----------------------------------------------------------------------------


def last_record_kind(path: Path, Record: Any) -> str | None:
    kind = None
    for r in wandb_records(path, Record):
        kind = r.WhichOneof("record_type")
    return kind


def wandb_records(path: Path, Record: Any) -> Iterator[Any]:
    """The records of a W&B ``.wandb`` transaction log, as ``wandb_internal_pb2.Record``.

    The format is LevelDB's log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB
    blocks of chunks (u32 crc, u16 length, u8 type: 1 full, 2 first, 3 middle, 4 last). A cut tail
    (a killed writer) ends the records. Raises ValueError if the header is not a W&B log's.
    """
    raw = Path(path).read_bytes()
    if raw[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    block, pos, parts = 32768, 7, []
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # too little room for a chunk header: the block is padded
            pos += block - pos % block
            continue
        _crc, n, kind = struct.unpack_from("<IHB", raw, pos)
        if kind == 0 or pos + 7 + n > len(raw):
            return
        parts.append(raw[pos + 7:pos + 7 + n])
        pos += 7 + n
        if kind in (1, 4):
            yield Record.FromString(b"".join(parts))
            parts = []


def wandb_history(wandb_dir: Path, Record: Any) -> tuple[str | None, int | None]:
    """``(run id, highest history step)`` of the newest offline run in ``wandb_dir``; ``(None, None)``
    if there is none."""
    files = sorted(wandb_dir.glob("offline-run-*/run-*.wandb"), key=lambda f: f.parent.name)
    if not files:
        return None, None
    run_id = files[-1].stem[len("run-"):]
    held = None
    for f in files:
        if f.stem != f"run-{run_id}":
            continue
        try:
            for r in wandb_records(f, Record):
                if r.WhichOneof("record_type") == "history":
                    held = r.history.step.num if held is None else max(held, r.history.step.num)
        except Exception as e:  # a damaged file must not stop training
            warnings.warn(f"{f}: unreadable W&B run file ({e}); steps may be logged twice", stacklevel=3)
    return run_id, held
