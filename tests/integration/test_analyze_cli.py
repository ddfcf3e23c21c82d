"""``groklab analyze`` end to end on a tiny trained run, and its error paths (exit code 2)."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from groklab.cli import main

CKPT_KEYS = {"step", "train_loss", "test_loss", "restricted_loss", "restricted_acc", "excluded_loss",
             "excluded_acc", "gini_W_E", "gini_W_L", "sum_sq_weights", "excluded_loss_by_freq"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze") / "r"
    rc = main(["train", "--task.p", "23", "--train.steps", "200", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out


def test_analyze_writes_schema(tiny_run, capsys):
    assert main(["analyze", str(tiny_run), "--no-progress"]) == 0
    assert "analysis.json" in capsys.readouterr().out
    d = json.loads((tiny_run / "analysis.json").read_text())
    for key in ("key_frequencies", "neuron_clusters", "frac_neurons_explained", "logit_fit_fve",
                "phase_boundaries", "checkpoints", "p", "final_step", "grokking_step",
                "key_frequency_source"):
        assert key in d, key
    assert d["p"] == 23 and d["final_step"] == 200
    # every run gets the full-grid accuracy and PAIR's outcome (analysis.outcome)
    assert 0.0 <= d["grid_accuracy"] <= 1.0 and d["outcome"] in ("cant_fit", "memorise", "together", "grok")
    # and the loss spikes / oscillations of its metrics (analysis.spikes; the same keys for every family)
    from groklab.analysis.spikes import run_spikes
    from groklab.runs import read_metrics

    assert {k: d[k] for k in ("spikes", "spike_rule", "oscillations", "oscillation_rule")} == json.loads(
        json.dumps(run_spikes(read_metrics(tiny_run / "metrics.jsonl"))))
    assert set(d["spikes"]) == {"train_loss", "test_loss"} and "n_cycles" in d["oscillations"]
    n_train = int(0.4 * 23 * 23)  # the default preset (quickstart) trains on 40% of the grid
    by_split = (d["final"]["train_acc"] * n_train + d["final"]["test_acc"] * (529 - n_train)) / 529
    np.testing.assert_allclose(d["grid_accuracy"], by_split, rtol=1e-9)
    assert d["key_frequency_source"]["reused_for_all_checkpoints"] is True
    assert d["key_frequency_source"]["checkpoint"] == 200
    key = d["key_frequencies"]
    assert key and all(isinstance(k, int) and 1 <= k <= 11 for k in key)
    assert set(d["phase_boundaries"]) == {"memorization_end", "circuit_formation_end", "cleanup_end"}
    assert sum(d["neuron_clusters"].values()) == 512 and "-1" in d["neuron_clusters"]
    steps = [c["step"] for c in d["checkpoints"]]
    assert steps == [0, 100, 200]
    for c in d["checkpoints"]:
        assert CKPT_KEYS <= set(c)
        assert set(c["excluded_loss_by_freq"]) == {str(k) for k in key}
    # recomputed losses agree with the trainer's log (which includes the '=' class: small gap)
    rows = {r["step"]: r for r in map(json.loads, (tiny_run / "metrics.jsonl").read_text().splitlines())}
    c0 = d["checkpoints"][0]
    np.testing.assert_allclose(c0["train_loss"], rows[0]["train_loss"], rtol=0.05)
    np.testing.assert_allclose(c0["train_loss"], math.log(23), rtol=0.1)

    z = np.load(tiny_run / "analysis.npz")
    C, p, K = 3, 23, len(key)
    shapes = {"steps": (C,), "embed_fourier_norms": (C, p), "W_L_fourier_norms": (C, p),
              "embed_key_planes": (C, K, p, 2), "neuron_frac_explained": (512,),
              "neuron_freq": (512,), "logit_fourier_norms": (p, p), "W_L_fourier": (p, 512),
              "attn_eq_to_a": (4, p, p), "embed_pca": (p, 2)}
    for name, shape in shapes.items():
        assert z[name].shape == shape, name
    assert z["steps"].dtype == np.int64 and z["neuron_freq"].dtype == np.int64
    assert z["embed_pca_var"].ndim == 1
    np.testing.assert_allclose(z["attn_eq_to_a"] + z["attn_eq_to_b"] <= 1 + 1e-6, True)


def test_analyze_missing_run_exits_2(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_analyze_run_without_checkpoints_exits_2(tiny_run, tmp_path, capsys):
    run = tmp_path / "empty"
    run.mkdir()
    shutil.copy(tiny_run / "config.json", run / "config.json")
    assert main(["analyze", str(run), "--no-progress"]) == 2
    assert "no checkpoints" in capsys.readouterr().err


def test_analyze_corrupt_checkpoint_exits_2(tiny_run, tmp_path, capsys):
    run = tmp_path / "corrupt"
    shutil.copytree(tiny_run, run)
    (run / "checkpoints" / "step_0000100.safetensors").write_bytes(b"\x00" * 20)
    assert main(["analyze", str(run), "--no-progress"]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_two_worker_processes_give_the_same_rows(tiny_run, tmp_path):
    from groklab.analysis.pipeline import analyze_run

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    rows = []
    for workers in (1, 2):
        analyze_run(run, progress=False, workers=workers)
        rows.append(json.loads((run / "analysis.json").read_text())["checkpoints"])
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]]
    # Same numbers up to float64 rounding: torch's vectorised sums may round the last bit
    # differently with another buffer alignment in another process (seen: logit_fit_fve, 1 ULP).
    torch.testing.assert_close(rows[1], rows[0], rtol=1e-12, atol=0)


def _random_run(path, **task):
    """A run directory with two randomly initialised checkpoints (no training)."""
    from groklab import Config, build_model
    from groklab.config import apply_overrides
    from groklab.runs import atomic_write, config_json, save_checkpoint

    over = {"model.d_model": 16, "model.d_mlp": 32, "model.n_heads": 2,
            **{f"task.{k}": v for k, v in task.items()}}
    cfg = apply_overrides(Config(), over, from_strings=False).resolved()
    atomic_write(path / "config.json", config_json(cfg))
    for step, seed in ((0, 0), (10, 1)):
        save_checkpoint(path, step, build_model(cfg, seed=seed).state_dict(), cfg)
    return path


@pytest.mark.parametrize("op, applicable", [("subtract", True), ("multiply", False)])
def test_other_operations(tmp_path, op, applicable):
    from groklab.analysis.pipeline import analyze_run

    run = _random_run(tmp_path / op, p=11, operation=op)
    d = json.loads(analyze_run(run, progress=False).read_text())
    assert d["fourier_circuit_applicable"] is applicable
    assert d["fourier_directions"] == ("cos/sin(w_k(a - b))" if op == "subtract" else "cos/sin(w_k(a + b))")
    assert [c["step"] for c in d["checkpoints"]] == [0, 10]
    assert d["grokking_step"] is None and d["phase_boundaries"]["memorization_end"] is None


def test_partial_checkpoint_of_a_running_trainer_is_ignored(tmp_path):
    from groklab.analysis.pipeline import analyze_run

    run = _random_run(tmp_path / "live", p=7)
    (run / "checkpoints" / ".step_0000020.safetensors.abc.tmp").write_bytes(b"\x00" * 7)
    d = json.loads(analyze_run(run, progress=False).read_text())
    assert d["final_step"] == 10 and d["n_checkpoints"] == 2
