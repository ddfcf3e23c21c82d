"""``groklab sweep``: expansion and groups, the stop rules, results.csv, resume, kill -9."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from groklab.analysis.outcome import classify_outcome
from groklab.cli import main
from groklab.runs import read_metrics, read_safetensors, write_metrics
from groklab.sweep import SweepSpec, expand, group_members, stop_reason
from groklab.sweep.results import member_stats

TINY = [  # sparse parity small enough to learn in ~60 steps; 8 members in 2 groups
    "--preset", "pair-parity", "--seeds", "0-1", "--grid", "train.weight_decay=0.1,1",
    "--grid", "model.d_hidden=8,16", "--train.steps", "150", "--train.checkpoint_every", "30",
    "--train.regularization", "l2", "--train.lr", "0.01", "--task.n_bits", "8", "--task.k", "2",
    "--task.n_train", "200", "--task.n_test", "200", "--no-progress", "--workers", "1",
]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_expand_names_values_and_groups():
    spec = SweepSpec("pair-parity", grid={"train.weight_decay": [0.1, 1.0], "model.d_hidden": [8, 16]},
                     seeds=[0, 1, 2], overrides={"train.steps": 10})
    ms = expand(spec)
    assert len(ms) == 2 * 2 * 3
    assert ms[0].dir == "runs/weight_decay-0.1_d_hidden-8_seed-0" and ms[-1].seed == 2
    assert ms[4].values == {"train.weight_decay": 0.1, "model.d_hidden": 16}
    assert all(m.config.train.steps == 10 for m in ms)
    assert [m.config.model.d_hidden for m in ms[:6]] == [8, 8, 8, 16, 16, 16]
    # weight decay and seed batch; d_hidden does not: one group per width
    groups = group_members(ms, group_size=64)
    assert sorted(sorted(ms[i].config.model.d_hidden for i in g) for g in groups) == [[8] * 6, [16] * 6]
    assert sorted(len(g) for g in group_members(ms, group_size=4)) == [3, 3, 3, 3]
    assert len(group_members(ms, group_size=64, workers=4)) == 4
    assert sorted(i for g in group_members(ms, 5, 3) for i in g) == list(range(12))


def test_expand_vary_data_and_bad_specs():
    ms = expand(SweepSpec("pair-parity", seeds=[3, 4], vary_data=True))
    assert [(m.config.train.seed, m.config.task.data_seed) for m in ms] == [(3, 3), (4, 4)]
    assert ms[0].dir == "runs/seed-3"
    from groklab.config import ConfigError
    for bad in (SweepSpec("pair-parity", stop="sometimes"), SweepSpec("pair-parity", seeds=[1, 1]),
                SweepSpec("pair-parity", grid={"train.seed": [1, 2]}),
                SweepSpec("pair-parity", grid={"train.lr": [1e-3, 1e-3]}),
                SweepSpec("pair-parity", grid={"train.lr": [1e-3]}, overrides={"train.lr": 1e-2})):
        with pytest.raises(ConfigError):
            expand(bad)


def test_stop_rules_by_hand():
    rows = [{"step": 0, "train_loss": 1.0, "test_loss": 1.0, "test_acc": 0.5},
            {"step": 10, "train_loss": 1e-6, "test_loss": 0.5, "test_acc": 0.991},
            {"step": 20, "train_loss": 2e-6, "test_loss": 1e-5, "test_acc": 1.0}]
    assert stop_reason(rows[:1], "grokked") is None and stop_reason(rows[:2], "grokked") == "grokked"
    assert stop_reason(rows[:2], "settled") is None  # test loss not yet at 1e-5
    assert stop_reason(rows, "settled") == "settled"  # 1e-5 itself passes, as in classify_outcome
    assert stop_reason(rows, "never") is None
    with pytest.raises(ValueError, match="settled"):
        stop_reason(rows, "soon")


def test_member_stats_against_hand_values(tmp_path):
    rows = [{"step": 0, "train_loss": 0.7, "test_loss": 0.7, "train_acc": 0.5, "test_acc": 0.5},
            {"step": 10, "train_loss": 1e-7, "test_loss": 0.8, "train_acc": 1.0, "test_acc": 0.6},
            {"step": 20, "train_loss": 2e-7, "test_loss": 4e-7, "train_acc": 1.0, "test_acc": 0.995}]
    write_metrics(tmp_path / "metrics.jsonl", rows)
    s = member_stats(tmp_path)
    assert s["steps"] == 20 and s["grok_step"] == 20 and s["stopped"] is None
    torch.testing.assert_close(s["max_test_train_ratio"], 0.8 / 1e-7, rtol=1e-12, atol=0)
    assert (s["min_train_loss"], s["min_test_loss"]) == (1e-7, 4e-7)
    assert s["outcome"] == classify_outcome(rows).outcome == "grok"


def test_sweep_runs_retires_and_resumes(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", *TINY, "--stop", "grokked", "--out", str(out)]) == 0
    spec = json.loads((out / "sweep.json").read_text())
    rows = _csv(out / "results.csv")
    assert len(rows) == len(spec["members"]) == 8 and len(spec["groups"]) == 2
    assert list(rows[0])[:4] == ["run", "train.weight_decay", "model.d_hidden", "seed"]
    stopped = [r for r in rows if r["stopped"]]
    assert stopped, "no member reached 99% test accuracy: the tiny task no longer learns"
    for r in rows:
        metrics = read_metrics(out / r["run"] / "metrics.jsonl")
        if r["stopped"]:  # left the batch at its grok step, with a checkpoint there
            assert int(r["steps"]) == int(r["grok_step"]) == metrics[-1]["step"] < 150
            assert (out / r["run"] / "checkpoints" / f"step_{int(r['steps']):07d}.safetensors").is_file()
        else:
            assert int(r["steps"]) == 150
    # the members that stayed trained on as if the others had never been there (up to float32
    # rounding: a batch's size changes the kernels' blocking, ~1e-8 relative per step here)
    ref = tmp_path / "ref"
    assert main(["sweep", *TINY, "--stop", "never", "--out", str(ref)]) == 0
    for r in rows:
        a = read_metrics(out / r["run"] / "metrics.jsonl")
        b = read_metrics(ref / r["run"] / "metrics.jsonl")[:len(a)]
        torch.testing.assert_close([x["train_loss"] for x in a], [x["train_loss"] for x in b],
                                   rtol=1e-4, atol=0)
    capsys.readouterr()
    assert main(["sweep", *TINY, "--stop", "grokked", "--out", str(out)]) == 0  # all done: nothing trains
    said = capsys.readouterr().out
    assert "0 groups trained" in said
    assert f"{sum(1 for r in rows if r['grok_step'])} reached 99% test accuracy" in said
    assert _csv(out / "results.csv") == rows


def test_sweep_bad_input_exits_2(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", *TINY, "--grid", "train.nonsense=1,2", "--out", str(out)]) == 2
    assert "unknown config key 'train.nonsense'" in capsys.readouterr().err
    assert not out.exists()
    assert main(["sweep", *TINY, "--train.steps", "2", "--out", str(out)]) == 0
    assert main(["sweep", *TINY, "--train.steps", "3", "--out", str(out)]) == 2
    assert "holds a different sweep" in capsys.readouterr().err
    spec = tmp_path / "s.toml"
    spec.write_text('preset = "pair-parity"\nsteps = 3\n')
    assert main(["sweep", str(spec), "--out", str(tmp_path / "x")]) == 2
    assert "unknown field(s) steps" in capsys.readouterr().err


def test_sweep_grows_by_seeds_without_retraining(tmp_path, capsys):
    """More seeds on a finished sweep: the saved members keep their runs (not retrained, same
    rows), only the new seeds train, and the result equals a sweep run with all seeds at once."""
    def args(seeds, *extra):
        a = list(TINY)
        a[a.index("--seeds") + 1] = seeds
        return ["sweep", *a, *extra, "--stop", "never", "--train.steps", "40"]

    out, ref = tmp_path / "grown", tmp_path / "ref"
    assert main([*args("0-1"), "--out", str(out)]) == 0
    before = {r["run"]: r for r in _csv(out / "results.csv")}
    mtimes = {r: (out / r / "metrics.jsonl").stat().st_mtime_ns for r in before}
    capsys.readouterr()
    assert main([*args("0-2"), "--out", str(out)]) == 0
    assert "12 runs" in capsys.readouterr().out
    rows = _csv(out / "results.csv")
    assert len(rows) == 12 and sorted(int(r["seed"]) for r in rows) == sorted([0, 1, 2] * 4)
    for r in rows:
        if r["run"] in before:
            assert r == before[r["run"]]
            assert (out / r["run"] / "metrics.jsonl").stat().st_mtime_ns == mtimes[r["run"]]
    spec = json.loads((out / "sweep.json").read_text())
    assert spec["seeds"] == [0, 1, 2]
    assert sorted(i for g in spec["groups"] for i in g) == list(range(12))
    for i, m in enumerate(spec["members"]):
        assert i in spec["groups"][m["group"]]
    assert main([*args("0-2"), "--out", str(ref)]) == 0
    got = {r["run"]: r for r in rows}
    for r in _csv(ref / "results.csv"):  # same rows as all seeds at once (float32 batch rounding)
        torch.testing.assert_close(float(got[r["run"]]["final_train_loss"]), float(r["final_train_loss"]),
                                   rtol=1e-4, atol=0)
        assert got[r["run"]]["outcome"] == r["outcome"]
    # dropping a seed, or changing anything else, is still a different sweep
    capsys.readouterr()
    assert main([*args("1-2"), "--out", str(out)]) == 2
    assert main([*args("0-3", "--train.lr", "0.02"), "--out", str(out)]) == 2
    assert "holds a different sweep" in capsys.readouterr().err


def test_toml_spec_equals_flags(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('preset = "pair-parity"\nseeds = [0, 1]\nstop = "never"\n[overrides]\n'
                    '"train.steps" = 4\n[grid]\n"train.weight_decay" = [0.1, 1]\n')
    assert main(["sweep", str(spec), "--no-progress", "--workers", "1", "--out", str(tmp_path / "a")]) == 0
    assert main(["sweep", "--preset", "pair-parity", "--seeds", "0,1", "--stop", "never", "--train.steps",
                 "4", "--grid", "train.weight_decay=0.1,1", "--no-progress", "--workers", "1",
                 "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "sweep.json").read_text()) for d in "ab")
    assert a == b
    assert _csv(tmp_path / "a" / "results.csv") == _csv(tmp_path / "b" / "results.csv")


def test_kill_9_then_rerun_gives_the_same_results(tmp_path):
    """A sweep killed with SIGKILL mid-training and re-run ends with the results.csv of an
    uninterrupted sweep (same rows, same floats)."""
    args = [*TINY, "--stop", "grokked", "--train.steps", "240"]
    ref = tmp_path / "ref"
    assert main(["sweep", *args, "--out", str(ref)]) == 0
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "groklab.cli", "sweep", *args, "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    try:  # kill once the first group is part-way: some checkpoint past step 60, none at the end
        while time.time() < deadline and proc.poll() is None:
            cks = list(out.glob("runs/*/checkpoints/step_*.safetensors"))
            if any(int(p.stem.split("_")[1]) >= 90 for p in cks):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    assert not (out / "results.csv").exists()
    assert main(["sweep", *args, "--out", str(out)]) == 0
    assert _csv(out / "results.csv") == _csv(ref / "results.csv")
    for r in _csv(ref / "results.csv"):
        step = int(r["steps"])
        a, _ = read_safetensors(out / r["run"] / "checkpoints" / f"step_{step:07d}.safetensors")
        b, _ = read_safetensors(ref / r["run"] / "checkpoints" / f"step_{step:07d}.safetensors")
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_crossover_brackets_a_toy_boundary_and_resumes(tmp_path, capsys):
    """Bisect task.n_train on the tiny parity task: few sequences do not generalise within the
    budget, many do. The bracket's ends must be probes on the two sides, and a re-run trains
    nothing and gives the same answer."""
    args = ["crossover", "--preset", "pair-parity", "--key", "task.n_train", "--lo", "10", "--hi", "200",
            "--budget", "150", "--seeds", "0-1", "--tol", "40", "--train.regularization", "l2",
            "--train.lr", "0.01", "--task.n_bits", "8", "--task.k", "2", "--task.n_test", "200",
            "--train.checkpoint_every", "50", "--no-progress", "--workers", "1", "--out", str(tmp_path / "c")]
    assert main(args) == 0
    d = json.loads((tmp_path / "c" / "sweep.json").read_text())
    co = d["crossover"]
    lo, hi = co["bracket"]
    assert 10 <= lo < hi <= 200 and hi - lo <= 40
    by_value = {p["value"]: p["groks"] for p in co["probes"]}
    assert by_value[hi] is True and (by_value.get(lo) is False or lo == 10)
    rows = _csv(tmp_path / "c" / "results.csv")
    assert len(rows) == 2 * len(co["values"])
    for p in co["probes"]:  # a probe groks iff at least half its seeds reach 99% within the budget
        g = [r["grok_step"] for r in rows if int(r["task.n_train"]) == p["value"]]
        assert p["groks"] == (2 * sum(bool(x) and int(x) <= 150 for x in g) >= len(g))
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "c").glob("runs/*/metrics.jsonl")}
    assert main(args) == 0
    again = json.loads((tmp_path / "c" / "sweep.json").read_text())["crossover"]
    assert again["bracket"] == co["bracket"] and again["values"] == co["values"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing trained again


def test_crossover_bad_key_exits_2(tmp_path, capsys):
    assert main(["crossover", "--preset", "pair-parity", "--key", "task.test_fresh", "--lo", "0",
                 "--hi", "1", "--budget", "10", "--out", str(tmp_path / "c")]) == 2
    assert "crossover needs a numeric key" in capsys.readouterr().err


def test_sweep_log_tensorboard_mirrors_every_member_once(tmp_path, capsys):
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = tmp_path / "sw"
    small = [*TINY, "--grid", "model.d_hidden=8", "--train.steps", "60", "--out", str(out)]
    assert main(["sweep", *small, "--log", "nonsense"]) == 2  # an unknown kind: refused before training
    assert "unknown tracker 'nonsense'" in capsys.readouterr().err and not out.exists()
    assert main(["sweep", *small, "--log", "tensorboard"]) == 0
    assert main(["sweep", *small, "--log", "tensorboard"]) == 0  # all done: the mirror adds no step
    rows = _csv(out / "results.csv")
    assert len(rows) == 4
    for r in rows:
        ea = ea_mod.EventAccumulator(str(out / r["run"] / "tensorboard"), size_guidance={"scalars": 0})
        ea.Reload()
        metrics = read_metrics(out / r["run"] / "metrics.jsonl")
        got = [(e.step, e.value) for e in ea.Scalars("loss/train")]
        assert [s for s, _ in got] == [m["step"] for m in metrics]  # every row, each step once
        torch.testing.assert_close([v for _, v in got], [m["train_loss"] for m in metrics], rtol=1e-6, atol=0)
