"""Run-directory primitives: atomic writes, checkpoint metadata, and clear errors."""

import json
import os

import pytest
import torch

from groklab import build_model, get_preset, load_run
from groklab.runs import (
    RunError,
    atomic_write,
    checkpoint_path,
    config_json,
    read_metrics,
    read_safetensors,
    save_checkpoint,
)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    f = tmp_path / "sub" / "x.json"
    atomic_write(f, "one")
    atomic_write(f, b"two")
    assert f.read_text() == "two"
    assert os.listdir(f.parent) == ["x.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    f = tmp_path / "x.txt"
    atomic_write(f, "old")

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write(f, "new")
    assert f.read_text() == "old"
    assert os.listdir(tmp_path) == ["x.txt"]


def test_checkpoint_roundtrip_and_metadata(tmp_path):
    cfg = get_preset("nanda2023").resolved()
    model = build_model(cfg)
    save_checkpoint(tmp_path, 1200, model.state_dict(), cfg)
    path = checkpoint_path(tmp_path, 1200)
    assert path.name == "step_0001200.safetensors"
    tensors, meta = read_safetensors(path)
    assert meta["step"] == "1200"
    assert json.loads(meta["config"])["task"]["p"] == 113
    for k, v in model.state_dict().items():
        torch.testing.assert_close(tensors[k], v)


def test_load_run_errors(tmp_path):
    with pytest.raises(RunError, match="no such run directory"):
        load_run(tmp_path / "missing")
    with pytest.raises(RunError, match="config.json"):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RunError, match="invalid config"):
        load_run(tmp_path)


def test_corrupt_checkpoint_is_reported(tmp_path):
    cfg = get_preset("nanda2023").resolved()
    (tmp_path / "config.json").write_text(config_json(cfg))
    path = checkpoint_path(tmp_path, 0)
    path.parent.mkdir()
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage")
    run = load_run(tmp_path)
    assert run.steps == [0]
    with pytest.raises(RunError, match="corrupt checkpoint"):
        run.model_at(0)


def test_metrics_ignore_truncated_last_line(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 0}\n{"step": 10}\n{"step": 2')
    assert [r["step"] for r in read_metrics(f)] == [0, 10]
    f.write_text('{"step": 0}\n{bad\n{"step": 2}\n')
    with pytest.raises(RunError, match="line 2"):
        read_metrics(f)
