"""``groklab analyze`` on PAIR's MLP family (``docs/analysis_mlp.md``): tiny trained runs of each
variant, the star constructions, and sparse parity, end to end through the CLI."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from groklab.analysis.fourier import fourier_basis
from groklab.analysis.mlp_run import analyze_mlp
from groklab.cli import main
from groklab.runs import load_run

P11 = ["--preset", "pair2023", "--task.p", "11", "--model.d_embed", "16", "--model.d_hidden", "12",
       "--train.checkpoint_every", "100", "--no-progress"]
TRAINED = {  # name -> CLI arguments after `train`
    "tied": P11 + ["--train.steps", "300"],
    "untied": P11 + ["--train.steps", "200", "--model.embed", "untied"],
    "collapsed": P11 + ["--train.steps", "200", "--model.collapsed_in", "true",
                        "--model.collapsed_out", "true"],
    "d_embed_is_p": P11 + ["--train.steps", "100", "--model.d_embed", "11", "--model.collapsed_in", "true"],
    "five": ["--preset", "pair-five-neurons", "--train.steps", "600", "--train.checkpoint_every", "200",
             "--no-progress"],
}
CONSTRUCTED = {
    "star_relu": ["--p", "67", "--neurons", "5", "--act", "relu", "--freqs", "4,5,7"],
    "star_quadratic": ["--p", "67", "--neurons", "5", "--act", "quadratic"],
}
PARITY = ["--preset", "pair-parity", "--task.n_bits", "12", "--task.n_train", "200", "--task.n_test", "200",
          "--model.d_hidden", "16", "--train.steps", "300", "--no-progress"]
MODULAR = list(TRAINED) + list(CONSTRUCTED)

TOP = {"schema_version", "task", "family", "analyses", "p", "final_step", "n_checkpoints",
       "metrics_last_step", "elapsed_s", "grid_accuracy", "outcome", "outcome_detail", "grokking_step",
       "key_frequencies", "key_frequency_rule", "neuron_clusters", "neurons", "sort_order", "stars", "final",
       "checkpoints", "spikes", "spike_rule", "oscillations", "oscillation_rule"}
NEURON = {"index", "k", "in_angle", "out_angle", "in_norm", "out_norm", "max_dft"}
STAR = {"neurons", "in_angle", "out_angle", "in_norm", "out_norm", "spacing", "spacing_deviation",
        "rotation_offset", "rotation_max_residual", "rotation_rms_residual", "group_fve",
        "group_fve_phase_free"}
ROW = {"step", "dft_gini", "weight_l2", "weight_l1", "n_key_frequencies"}
FINAL = {"train_loss", "test_loss", "train_acc", "test_acc"}
PARITY_TOP = {"schema_version", "task", "family", "analyses", "n_bits", "k", "final_step", "n_checkpoints",
              "outcome", "outcome_detail", "grid_accuracy", "final", "live_threshold", "prune_step",
              "acc_jump_step", "acc_level", "checkpoints", "prune_step_rel",
              "spikes", "spike_rule", "oscillations", "oscillation_rule"}
PARITY_ROW = {"step", "live_distractors", "weight_l1", "weight_l2", "parity_weight_norm",
              "distractor_weight_norm", "live_distractors_rel"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run, trained or constructed and then analysed with ``groklab analyze``."""
    root = tmp_path_factory.mktemp("mlp")
    out = {}
    for name, args in TRAINED.items():
        assert main(["train", *args, "--out", str(root / name)]) == 0
        out[name] = root / name
    for name, args in CONSTRUCTED.items():
        assert main(["construct", "star", *args, "--out", str(root / name)]) == 0
        out[name] = root / name
    assert main(["train", *PARITY, "--out", str(root / "parity")]) == 0
    out["parity"] = root / "parity"
    for d in out.values():
        assert main(["analyze", str(d), "--no-progress"]) == 0
    return out


def f64(x):
    return torch.tensor(x, dtype=torch.float64)


def _load(run):
    return json.loads((run / "analysis.json").read_text()), np.load(run / "analysis.npz")


def _state(run, step):
    return {k: v.double() for k, v in load_file(run / "checkpoints" / f"step_{step:07d}.safetensors").items()}


def _explicit_collapse(s, m):
    """W_input, W_output by the explicit matmuls of models/mlp.py's docstring, from the config."""
    W_input = s["mlp.W_in"] if m.collapsed_in else s["embed.W_E"] @ s["mlp.W_in"]
    if m.collapsed_out:
        W_output = s["mlp.W_out"]
    elif m.embed == "untied":
        W_output = s["mlp.W_out"] @ s["unembed.W_U"]
    else:
        W_output = s["mlp.W_out"] @ s["embed.W_E"].T
    return W_input, W_output


@pytest.mark.parametrize("name", MODULAR)
def test_modular_schema_and_arrays(runs, name):
    run = runs[name]
    d, z = _load(run)
    cfg = load_run(run).config
    p, H, steps = cfg.task.p, cfg.model.d_hidden, load_run(run).steps
    C = len(steps)
    assert TOP <= set(d)
    assert (d["task"], d["family"], d["p"], d["n_checkpoints"], d["final_step"]) == (
        "modular", "mlp", p, C, steps[-1])
    assert set(d["final"]) >= FINAL and d["final"]["train_acc"] is not None
    assert d["key_frequency_rule"] == {**d["key_frequency_rule"], "min_neurons": 2, "min_max_dft": None,
                                       "checkpoint": steps[-1]}
    assert [r["step"] for r in d["checkpoints"]] == steps and all(ROW <= set(r) for r in d["checkpoints"])
    assert len(d["neurons"]) == H and all(set(n) >= NEURON for n in d["neurons"])
    assert sum(d["neuron_clusters"].values()) == H
    assert set(d["stars"]) == {str(k) for k in d["key_frequencies"]}
    for k, s in d["stars"].items():
        assert STAR <= set(s) and len(s["neurons"]) == d["neuron_clusters"][k] >= 2
        assert sum(s["spacing"]) == pytest.approx(2 * math.pi, abs=1e-9)
        assert 0.0 <= s["group_fve"] <= s["group_fve_phase_free"] <= 1.0 + 1e-9
    assert d["checkpoints"][-1]["n_key_frequencies"] == len(d["key_frequencies"])
    assert 0.0 <= d["grid_accuracy"] <= 1.0
    shapes = {"steps": (C,), "W_input": (C, p, H), "W_output": (C, H, p), "dft_W_input": (p, H),
              "dft_W_output": (H, p), "fourier_labels": (p,), "sort_order": (H,), "dft_gini": (C,),
              "weight_l2": (C,), "weight_l1": (C,),
              **{f"neuron_{x}": (H,) for x in ("k", "in_angle", "out_angle", "in_norm", "out_norm")}}
    for key, shape in shapes.items():
        assert z[key].shape == shape, key
    assert z["W_input"].dtype == z["W_output"].dtype == np.float32
    assert z["steps"].dtype == z["sort_order"].dtype == np.int64
    assert z["steps"].tolist() == steps and z["sort_order"].tolist() == d["sort_order"]
    assert z["fourier_labels"][:3].tolist() == ["Const", "cos 1", "sin 1"]


@pytest.mark.parametrize("name", MODULAR)
def test_modular_numbers_match_explicit_computations(runs, name):
    """Oracles: the explicit matmuls for W_input / W_output, F @ W_input for the DFT, the argmax
    rule for each neuron's k, and the sums of squares for the weight norms (circle W_E left out)."""
    run = runs[name]
    d, z = _load(run)
    r = load_run(run)
    m, p = r.config.model, r.config.task.p
    F = fourier_basis(p)[0].double()
    for i, step in enumerate(r.steps):
        s = _state(run, step)
        W_input, W_output = _explicit_collapse(s, m)
        assert_close(torch.from_numpy(z["W_input"][i]).double(), W_input, atol=1e-5, rtol=1e-5)
        assert_close(torch.from_numpy(z["W_output"][i]).double(), W_output, atol=1e-5, rtol=1e-5)
        trained = [v for k, v in s.items() if not (k == "embed.W_E" and m.embed == "circle")]
        assert d["checkpoints"][i]["weight_l2"] == pytest.approx(
            math.sqrt(sum(float(v.pow(2).sum()) for v in trained)), rel=1e-9)
        assert d["checkpoints"][i]["weight_l1"] == pytest.approx(sum(float(v.abs().sum()) for v in trained),
                                                               rel=1e-9)
    D = F @ W_input  # final checkpoint
    assert_close(torch.from_numpy(z["dft_W_input"]).double(), D, atol=1e-4, rtol=1e-4)
    assert_close(torch.from_numpy(z["dft_W_output"]).double(), W_output @ F.T, atol=1e-4, rtol=1e-4)
    k = (D.abs().argmax(0) + 1) // 2
    assert z["neuron_k"].tolist() == k.tolist() == [n["k"] for n in d["neurons"]]
    ks, counts = np.unique(z["neuron_k"], return_counts=True)
    assert d["neuron_clusters"] == {str(a): int(c) for a, c in zip(ks, counts, strict=True)}
    assert d["key_frequencies"] == [int(a) for a, c in zip(ks, counts, strict=True) if a > 0 and c >= 2]
    kk = z["neuron_k"][z["sort_order"]]
    ang = z["neuron_in_angle"][z["sort_order"]]
    assert np.all((np.diff(kk) > 0) | ((np.diff(kk) == 0) & (np.diff(ang) >= 0)))


def test_star_relu_construction_is_found_exactly(runs):
    d, _ = _load(runs["star_relu"])
    assert d["key_frequencies"] == [4, 5, 7]
    assert d["neuron_clusters"] == {"4": 5, "5": 5, "7": 5}
    assert d["grid_accuracy"] == 1.0
    assert (d["final_step"], d["n_checkpoints"]) == (0, 1)
    for f in ("4", "5", "7"):
        s = d["stars"][f]
        base = 5 * [4, 5, 7].index(int(f))
        assert sorted(s["neurons"]) == list(range(base, base + 5))
        assert_close(f64(s["spacing"]), f64([2 * math.pi / 5] * 5), atol=1e-6, rtol=0)
        for key in ("spacing_deviation", "rotation_offset", "rotation_max_residual", "rotation_rms_residual"):
            assert_close(f64(s[key]), f64(0.0), atol=1e-6, rtol=0)
        # the construction's neuron j sits at theta_j = 2 pi j / 5 and writes at 2 theta_j
        want = torch.tensor([2 * math.pi * j / 5 for j in range(5)], dtype=torch.float64)
        want = math.pi - torch.remainder(math.pi - want, 2 * math.pi)
        got = f64([d["neurons"][n]["in_angle"] for n in range(base, base + 5)])
        assert_close(got, want, atol=1e-6, rtol=0)
        assert 0.99 < s["group_fve"] <= s["group_fve_phase_free"] < 1.0 + 1e-9


def test_star_quadratic_group_fve_is_one(runs):
    d, _ = _load(runs["star_quadratic"])
    assert d["key_frequencies"] == [1] and d["neuron_clusters"] == {"1": 5} and d["grid_accuracy"] == 1.0
    s = d["stars"]["1"]
    assert_close(f64([s["group_fve"], s["group_fve_phase_free"]]), torch.ones(2, dtype=torch.float64),
                 atol=1e-9, rtol=0)


def test_five_neuron_run_excludes_the_fixed_circle(runs):
    run = runs["five"]
    d, z = _load(run)
    assert d["embed"] == "circle" and d["weight_norm_params"] == ["mlp.W_in", "mlp.W_out"]
    assert "excluded" in d["conventions"]["weight_norms"]
    # the circle embedding has only frequency 1, so every neuron (and the whole DFT) is frequency 1
    assert d["key_frequencies"] == [1] and d["neuron_clusters"] == {"1": 5}
    assert_close(torch.from_numpy(z["dft_gini"]), torch.full((4,), 1 - 2 / 66, dtype=torch.float64),
                 atol=1e-6, rtol=0)
    assert z["n_key_frequencies"].tolist() == [1, 1, 1, 1]
    s = _state(run, 0)
    assert s["embed.W_E"].shape == (67, 2)  # stored in the checkpoint, fixed


def test_d_embed_equal_to_p_uses_the_config_flags(runs):
    d, _ = _load(runs["d_embed_is_p"])  # collapsed() alone would refuse: W_in and W_E are both 11 wide
    assert (d["collapsed_in"], d["collapsed_out"]) == (True, False)


def test_parity_schema_and_pruning(runs):
    run = runs["parity"]
    d, z = _load(run)
    r = load_run(run)
    C, H, n_bits, k = len(r.steps), 16, 12, 3
    assert PARITY_TOP <= set(d)
    assert (d["task"], d["family"], d["n_bits"], d["k"]) == ("sparse_parity", "mlp", 12, 3)
    assert d["grid_accuracy"] is None
    assert (d["live_threshold"], d["acc_level"]) == (0.05, 0.9)
    assert all(PARITY_ROW <= set(row) for row in d["checkpoints"])
    shapes = {"steps": (C,), "W_in": (C, n_bits + 1, H), "W_out": (C, H), "live_distractors": (C,),
              "live_distractors_rel": (C,)}
    for key, shape in shapes.items():
        assert z[key].shape == shape, key
    assert z["live_distractors"].dtype == np.int64
    assert z["test_acc_steps"].tolist() == [m["step"] for m in r.metrics]
    assert_close(torch.from_numpy(z["test_acc"]), torch.tensor([m["test_acc"] for m in r.metrics],
                                                                 dtype=torch.float64))
    for i, step in enumerate(r.steps):  # oracle: recount from the checkpoint
        s = _state(run, step)
        W = s["mlp.W_in"]
        dis = W[k:n_bits].abs()
        assert z["live_distractors"][i] == int((dis > 0.05).sum()) == d["checkpoints"][i]["live_distractors"]
        assert z["live_distractors_rel"][i] == int((dis > 0.1 * W[:k].abs().max()).sum())
        assert d["checkpoints"][i]["parity_weight_norm"] == pytest.approx(float(W[:k].norm()), rel=1e-9)
        assert d["checkpoints"][i]["distractor_weight_norm"] == pytest.approx(float(dis.norm()), rel=1e-9)
        assert d["checkpoints"][i]["weight_l2"] == pytest.approx(
            math.sqrt(float(W.pow(2).sum() + s["mlp.W_out"].pow(2).sum())), rel=1e-9)
        assert_close(torch.from_numpy(z["W_out"][i]).double(), s["mlp.W_out"][:, 0])

    def naive_prune(live):  # the last step after which the count stays 0
        return next((s for i, s in enumerate(r.steps) if all(c == 0 for c in live[i:])), None)

    assert d["prune_step"] == naive_prune(z["live_distractors"].tolist())
    assert d["prune_step_rel"] == naive_prune(z["live_distractors_rel"].tolist())
    assert d["acc_jump_step"] == next((m["step"] for m in r.metrics if m["test_acc"] >= 0.9), None)


def test_progress_bar_ticks_once_per_checkpoint(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["tied"], run)

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    assert analyze_mlp(load_run(run), bar) == run / "analysis.json"
    assert bar.n == 4


def test_cli_errors_exit_2(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    shutil.copytree(runs["star_relu"], empty)
    shutil.rmtree(empty / "checkpoints")
    assert main(["analyze", str(empty), "--no-progress"]) == 2
    assert "no checkpoints" in capsys.readouterr().err
    bad = tmp_path / "bad"  # a config whose collapse flags do not fit the saved weights
    shutil.copytree(runs["star_relu"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["collapsed_in"] = True
    (bad / "config.json").write_text(json.dumps(cfg))
    assert main(["analyze", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "does not fit config.json" in err and "step_0000000" in err
    assert main(["analyze", str(tmp_path / "missing"), "--no-progress"]) == 2
