"""Experiment tracking (``--log tensorboard|wandb``): hand-made metrics rows are logged, read back
from the trackers' own files and compared with the values written down here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from groklab.config import Config, ConfigError, TaskConfig
from groklab.runs import config_json, write_metrics
from groklab.train import tracker_files, tracking
from groklab.train.tracking import mirror_metrics, open_trackers

CFG = Config(task=TaskConfig(p=7, frac_train=0.5))


def _row(step, train_loss, test_loss, train_acc, test_acc, sum_sq, by_part, test_by_part, elapsed):
    return {"step": step, "train_loss": train_loss, "test_loss": test_loss, "train_acc": train_acc,
            "test_acc": test_acc, "sum_sq_weights": sum_sq, "train_loss_by_part": by_part,
            "test_loss_by_part": test_by_part, "elapsed_s": elapsed}


# Step 10 has no test figures (null) and part d1 has no slot at step 0: neither may be logged.
ROWS = [
    _row(0, 4.7, 4.8, 0.01, 0.0, 3598.5, {"d0": 2.5, "d1": None}, {"d0": 2.75, "d1": 3.0}, 0.0),
    _row(10, 3.25, None, 0.5, None, 2223.25, {"d0": 1.5, "d1": 1.75}, None, 1.5),
    _row(20, 0.125, 0.0625, 1.0, 0.96875, 953.0, {"d0": 0.25, "d1": 0.375}, {"d0": 0.5, "d1": 0.625}, 3.0),
]
EXPECTED = {  # scalar name -> {step: value}, written out from ROWS by hand
    "loss/train": {0: 4.7, 10: 3.25, 20: 0.125},
    "loss/test": {0: 4.8, 20: 0.0625},
    "acc/train": {0: 0.01, 10: 0.5, 20: 1.0},
    "acc/test": {0: 0.0, 20: 0.96875},
    "weights/sum_sq": {0: 3598.5, 10: 2223.25, 20: 953.0},
    "time/elapsed_s": {0: 0.0, 10: 1.5, 20: 3.0},
    "loss_by_part/train/d0": {0: 2.5, 10: 1.5, 20: 0.25},
    "loss_by_part/train/d1": {10: 1.75, 20: 0.375},
    "loss_by_part/test/d0": {0: 2.75, 20: 0.5},
    "loss_by_part/test/d1": {0: 3.0, 20: 0.625},
}


def _assert_series(got: dict[str, list[tuple[int, float]]], expected: dict[str, dict[int, float]], rtol):
    assert set(got) == set(expected)
    for name, series in expected.items():
        steps = [s for s, _ in got[name]]
        assert steps == sorted(series), name  # each step once, in order
        torch.testing.assert_close(torch.tensor([v for _, v in got[name]], dtype=torch.float64),
                                   torch.tensor([series[s] for s in steps], dtype=torch.float64),
                                   rtol=rtol, atol=0.0, msg=name)


# -- errors and laziness (no extra needed) -----------------------------------------------------------
def test_unknown_kind_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown tracker 'mlflow'.*tensorboard, wandb"):
        open_trackers(["mlflow"], tmp_path, CFG)
    assert list(tmp_path.iterdir()) == []


def test_missing_tensorboard_says_how_to_install(tmp_path, monkeypatch):
    for mod in ("tensorboard", "tensorboardX", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, mod, None)  # `import mod` now raises ImportError
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[tensorboard\]"'):
        open_trackers(["tensorboard"], tmp_path, CFG)


def test_missing_wandb_says_how_to_install_and_opens_nothing(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    _isolate_wandb(tmp_path, monkeypatch)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[wandb\]"'):
        open_trackers(["tensorboard", "wandb"], tmp_path / "run", CFG)
    assert not (tmp_path / "run").exists()  # the tensorboard writer was never opened


def test_no_kinds_is_a_no_op(tmp_path):
    with open_trackers([], tmp_path, CFG) as tracker:
        tracker.log(ROWS[0])
    assert tracker.kinds == () and list(tmp_path.iterdir()) == []


def test_libraries_are_imported_lazily():
    code = ("import sys; from groklab.train import tracking as t; t.check_kinds(['tensorboard', 'wandb']); "
            "print(sorted(m for m in ('wandb', 'tensorboard', 'tensorboardX', 'torch.utils.tensorboard') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- TensorBoard ------------------------------------------------------------------------------------
def _read_tb(log_dir: Path):
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    ea = ea_mod.EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea, {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def test_tensorboard_scalars_config_and_hparams(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.plugins.hparams import plugin_data_pb2

    with open_trackers(["tensorboard"], tmp_path, CFG) as tracker:
        for row in ROWS:
            tracker.log(row)
    ea, got = _read_tb(tmp_path / "tensorboard")
    _assert_series(got, EXPECTED, rtol=1e-6)  # event files store float32
    (text,) = ea.Tensors("config/text_summary")
    body = text.tensor_proto.string_val[0].decode().removeprefix("```json\n").removesuffix("\n```")
    assert json.loads(body)["task"]["p"] == 7 and "groklab_version" in json.loads(body)
    content = ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hp = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hp["task.p"].number_value == 7 and hp["train.lr"].number_value == CFG.train.lr
    assert hp["model.d_head"].string_value == "None"


def test_tensorboard_resume_logs_each_step_once(tmp_path):
    pytest.importorskip("tensorboard")
    with open_trackers(["tensorboard"], tmp_path, CFG) as tracker:
        for row in ROWS:
            tracker.log(row)
    # A second session re-sends steps 10 and 20 (changed, to tell them apart) and adds step 30.
    # Step 10 is held: ignored. Step 20, the highest held, may be half written: purged, re-logged.
    changed = [{**r, "train_loss": r["train_loss"] + 100} for r in ROWS[1:]]
    new = {**ROWS[2], "step": 30, "train_loss": 0.0078125}
    with open_trackers(["tensorboard"], tmp_path, CFG) as tracker:
        for row in [*changed, new]:
            tracker.log(row)
    ea, got = _read_tb(tmp_path / "tensorboard")
    expected = {name: {**s, 30: s[20]} if 20 in s else s for name, s in EXPECTED.items()}
    expected["loss/train"] = {0: 4.7, 10: 3.25, 20: 100.125, 30: 0.0078125}
    _assert_series(got, expected, rtol=1e-6)
    assert len(ea.Tensors("config/text_summary")) == 1  # the config is written once
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_tensorboard_resume_after_a_killed_writer(tmp_path):
    pytest.importorskip("tensorboard")
    with open_trackers(["tensorboard"], tmp_path, CFG) as tracker:
        for row in ROWS:
            tracker.log(row)
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    events.write_bytes(events.read_bytes()[:-9])  # the last scalar of step 20 is cut off
    with open_trackers(["tensorboard"], tmp_path, CFG) as tracker:
        tracker.log(ROWS[2])
    _, got = _read_tb(tmp_path / "tensorboard")
    _assert_series(got, EXPECTED, rtol=1e-6)


def test_tensorboardx_is_the_fallback(tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")  # before hiding it
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "tensorboard", None)
        with open_trackers(["tensorboard"], tmp_path, CFG) as tracker:
            assert type(tracker._backends["tensorboard"]._writer).__module__.startswith("tensorboardX")
            for row in ROWS:
                tracker.log(row)
    _, got = _read_tb(tmp_path / "tensorboard")
    _assert_series(got, EXPECTED, rtol=1e-6)


def test_mirror_metrics_replays_a_run_once(tmp_path):
    pytest.importorskip("tensorboard")
    (tmp_path / "config.json").write_text(config_json(CFG))
    write_metrics(tmp_path / "metrics.jsonl", ROWS)
    assert mirror_metrics(["tensorboard"], tmp_path) == 3
    assert mirror_metrics(["tensorboard"], tmp_path) == 3  # a second mirror adds no step
    _, got = _read_tb(tmp_path / "tensorboard")
    _assert_series(got, EXPECTED, rtol=1e-6)


# -- Weights & Biases (offline) ---------------------------------------------------------------------
def _isolate_wandb(tmp_path: Path, monkeypatch) -> None:
    """wandb's own cache and settings go to tmp_path; the env vars tracking sets are restored."""
    for k, v in tracking._WANDB_ENV.items():
        monkeypatch.setenv(k, v)
    for k in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(k, str(tmp_path / "wandb-home" / k.lower()))


def _read_wandb(run_dir: Path):
    """``(run ids, {scalar: [(step, value)]}, config)`` from the offline ``.wandb`` files."""
    from wandb.proto.wandb_internal_pb2 import Record

    ids, got, config = [], {}, {}
    for f in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"), key=lambda f: f.parent.name):
        ids.append(f.stem.removeprefix("run-"))
        for r in tracker_files.wandb_records(f, Record):
            kind = r.WhichOneof("record_type")
            if kind == "history":
                for item in r.history.item:
                    name = item.key or "/".join(item.nested_key)
                    if not name.startswith("_"):
                        got.setdefault(name, []).append((r.history.step.num, json.loads(item.value_json)))
            elif kind == "run":
                config = {u.key: json.loads(u.value_json) for u in r.run.config.update}
                assert r.run.display_name == run_dir.name and r.run.project == "groklab"
    return ids, got, config


def test_wandb_offline_history_and_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    _isolate_wandb(tmp_path, monkeypatch)
    members = [tmp_path / "seed-0", tmp_path / "seed-1"]  # an ensemble: two runs open at once
    other = {**ROWS[0], "train_loss": 9.5}
    with open_trackers(["wandb"], members[0], CFG) as tracker, \
            open_trackers(["wandb"], members[1], CFG) as tracker_1:
        run = tracker._backends["wandb"]._run
        assert run.offline and run.settings.x_disable_stats and run.settings.console == "off"
        for row in ROWS:
            tracker.log(row)
        tracker_1.log(other)
    ids, got, config = _read_wandb(members[0])
    assert len(ids) == 1
    _assert_series(got, EXPECTED, rtol=1e-12)  # JSON doubles: exact
    assert config["task"]["p"] == 7 and config["train"]["lr"] == CFG.train.lr
    ids_1, got_1, _ = _read_wandb(members[1])
    assert ids_1 != ids and got_1["loss/train"] == [(0, 9.5)]


def test_wandb_resume_continues_the_run_without_repeats(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    _isolate_wandb(tmp_path, monkeypatch)
    # 600 rows: the transaction log spans several 32 KiB blocks, so chunked records are read too.
    rows = [{"step": s, "train_loss": 1.0 / (s + 1), "test_loss": None} for s in range(0, 6000, 10)]
    with open_trackers(["wandb"], tmp_path, CFG) as tracker:
        for row in rows[:400]:
            tracker.log(row)
    assert sum(f.stat().st_size for f in (tmp_path / "wandb").glob("*/*.wandb")) > 2 * 32768
    with open_trackers(["wandb"], tmp_path, CFG) as tracker:  # resume: re-sends rows 300.. (changed)
        for row in rows[300:]:
            tracker.log({**row, "train_loss": row["train_loss"] + (100 if row["step"] < 4000 else 0)})
    ids, got, _ = _read_wandb(tmp_path)
    assert len(ids) == 2 and ids[0] == ids[1]  # one W&B run, two offline sessions
    _assert_series(got, {"loss/train": {r["step"]: r["train_loss"] for r in rows}}, rtol=1e-12)


def test_cli_log_tensorboard_through_a_resume(tmp_path):
    """``groklab train --log tensorboard``, then ``--resume`` with more steps: every metrics row
    is in TensorBoard once, with its value."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from groklab.cli import main
    from groklab.runs import read_metrics

    run = tmp_path / "run"
    common = ["--log", "tensorboard", "--no-progress"]
    assert main(["train", "--preset", "pair-five-neurons", "--train.steps", "60", "--out", str(run),
                 *common]) == 0
    assert main(["train", "--resume", str(run), "--train.steps", "120", *common]) == 0
    ea = EventAccumulator(str(run / "tensorboard"))
    ea.Reload()
    got = {e.step: e.value for e in ea.Scalars("loss/train")}
    rows = read_metrics(run / "metrics.jsonl")
    assert sorted(got) == [r["step"] for r in rows] == list(range(0, 121, 30))
    torch.testing.assert_close([got[r["step"]] for r in rows], [r["train_loss"] for r in rows],
                               rtol=1e-6, atol=0)
