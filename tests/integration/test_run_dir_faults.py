"""Run-directory faults (issue 9, item 9): file modes follow the umask, and a full disk during a
checkpoint ends with exit 1 and one line, losing nothing, so that ``--resume`` completes the run."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import torch

from groklab import load_run
from groklab.cli import main
from groklab.runs import atomic_write, last_complete_step

TINY = ["--preset", "nanda2023", "--task.p", "11", "--model.d_model", "32", "--model.d_mlp", "64",
        "--train.steps", "60", "--train.eval_every", "10", "--train.checkpoint_every", "20", "--no-progress"]


@pytest.fixture
def umask():
    """Set the process umask for a test; the old one is restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_follows_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_write(tmp_path / "a.json", "{}")
    atomic_write(tmp_path / "a.json", "{}")  # replacing a file too
    atomic_write(tmp_path / "sub" / "b.bin", b"\x00" * 10)
    assert _mode(tmp_path / "a.json") == mode and _mode(tmp_path / "sub" / "b.bin") == mode
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "b.bin", "sub"]  # no temp files


def test_run_files_are_readable_by_others_under_umask_022(tmp_path, umask):
    umask(0o022)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, "--train.steps", "20"]) == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.json", "metrics.jsonl", "step_0000020.safetensors",
                                       "optim_0000020.safetensors"}
    assert {p.name: _mode(p) for p in files} == {p.name: 0o644 for p in files}


def test_full_disk_during_a_checkpoint(tmp_path, monkeypatch, capsys):
    """The disk fills while the step-40 checkpoint is written (half of it lands in the temp file):
    exit 1, one line naming the file, step 20 and --resume; the step-0/20 checkpoints, the metrics
    and the optimizer state of step 20 are intact, the temp file is gone, and --resume ends with
    the weights of an uninterrupted run."""
    full, run = tmp_path / "full", tmp_path / "run"
    assert main(["train", "--out", str(full), *TINY]) == 0
    capsys.readouterr()

    real_write = os.write
    failed = []

    def disk_fills(fd, data):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".step_0000040.safetensors." in name:  # the checkpoint's temp file
            real_write(fd, bytes(data[:len(data) // 2]))
            failed.append(name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", disk_fills)
    assert main(["train", "--out", str(run), *TINY]) == 1
    monkeypatch.setattr(os, "write", real_write)
    cap = capsys.readouterr()
    assert failed and cap.out == ""
    lines = cap.err.splitlines()
    assert len(lines) == 1, cap.err
    ckpt = run / "checkpoints" / "step_0000040.safetensors"
    assert str(ckpt) in lines[0] and "No space left on device" in lines[0]
    assert "step 20" in lines[0] and f"--resume {run}" in lines[0]

    # nothing lost: no temp file, no step-40 checkpoint, and step 20 is complete and resumable
    assert not list(run.rglob("*.tmp")) and not ckpt.exists()
    assert last_complete_step([run]) == 20
    a, b = load_run(full), load_run(run)
    assert b.steps == [0, 20]
    for s in (0, 20):
        for k, v in a.state_at(s).items():
            assert torch.equal(b.state_at(s)[k], v), (s, k)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # noqa: E731
    assert strip(b.metrics)[:3] == strip(a.metrics)[:3]  # steps 0, 10, 20 (and maybe more)

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    a, b = load_run(full), load_run(run)
    assert a.steps == b.steps == [0, 20, 40, 60]
    for k, v in a.state_at(60).items():
        assert torch.equal(b.state_at(60)[k], v), k
    assert [r["step"] for r in b.metrics] == [r["step"] for r in a.metrics]


def test_full_disk_before_any_step_is_complete(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_write = os.write

    def disk_full(fd, data):
        if ".config.json." in os.readlink(f"/proc/self/fd/{fd}"):
            return real_write(fd, data)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", disk_full)
    assert main(["train", "--out", str(run), *TINY]) == 1
    monkeypatch.setattr(os, "write", real_write)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "no step is complete" in lines[0] and str(run) in lines[0]
    assert not list(run.rglob("*.tmp"))
