"""``groklab analyze`` picks the analyses that fit the task: a tiny training run of each zoo task,
then the analysis and its schema (``docs/analysis_zoo.md``); modular runs keep theirs."""

import json
import shutil
import warnings

import numpy as np
import pytest

from groklab import Config, TaskConfig, TrainConfig, train
from groklab.analysis.pipeline import analyze_run
from groklab.cli import main
from groklab.config import ModelConfig
from groklab.runs import RunError
from groklab.tasks import DigitAdditionConfig, MaxElementConfig, RepeatedSubsequenceConfig

TRAIN = dict(steps=40, lr=3e-3, eval_every=5, checkpoint_every=20, warmup_steps=2)
CONFIGS = {
    "digit_addition": Config(
        task=DigitAdditionConfig(n_digits=2, n_train=None, n_test=64),
        model=ModelConfig(n_layers=1, n_heads=2, d_model=32, d_mlp=64),
        train=TrainConfig(batch_size=32, **TRAIN)),
    "repeated_subsequence": Config(
        task=RepeatedSubsequenceConfig(seq_len=25, subseq_len=6, num_repeats=3, vocab_size=16, n_train=None,
                                       n_test=32),
        model=ModelConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, attn_only=True),
        train=TrainConfig(batch_size=16, **TRAIN)),
    "max_element": Config(
        task=MaxElementConfig(rand_size=4, seq_len=8, n_train=64, n_test=64),
        model=ModelConfig(n_layers=1, n_heads=1, d_model=16, d_head=8, attn_only=True),
        train=TrainConfig(**TRAIN)),
}
TOP = {"schema_version", "task", "analyses", "final_step", "n_checkpoints", "parts", "final", "phase_changes",
       "spikes", "spike_rule", "oscillations", "oscillation_rule"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name, cfg in CONFIGS.items():
        d = tmp_path_factory.mktemp("zoo") / name
        with warnings.catch_warnings():  # the trainer's own warnings are its tests' business
            warnings.filterwarnings("ignore", message=r"torch.searchsorted\(\): input value tensor")
            train(cfg, str(d))
        out[name] = d
    return out


def _load(run):
    return json.loads((run / "analysis.json").read_text()), np.load(run / "analysis.npz")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_analyze_writes_the_task_schema(runs, name, capsys):
    run = runs[name]
    assert main(["analyze", str(run), "--no-progress"]) == 0
    assert "analysis.json" in capsys.readouterr().out
    d, z = _load(run)
    assert TOP <= set(d)
    assert d["task"] == name and d["final_step"] == 40 and d["n_checkpoints"] == 3
    parts = d["parts"]
    expected = {"digit_addition": ["digit0", "digit1", "digit2"], "repeated_subsequence": ["copy1", "copy2"],
                "max_element": [f"label{i}" for i in range(4)]}[name]
    assert parts == expected
    curves = {"train", "test"} | {f"{s}.{p}" for s in ("train", "test") for p in parts}
    assert set(d["phase_changes"]) == curves
    for v in d["phase_changes"].values():
        assert v is None or (set(v) == {"start", "steepest", "end"}
                             and v["start"] <= v["steepest"] <= v["end"])
    assert {"train_loss", "test_loss", "train_acc", "test_acc", "train_loss_by_part",
            "test_loss_by_part"} <= set(d["final"])
    assert set(d["final"]["train_loss_by_part"]) == set(parts)
    S, P = len(z["metric_steps"]), len(parts)
    assert S == 9 and z["train_loss_by_part"].shape == (S, P) and z["test_loss_by_part"].shape == (S, P)
    assert np.isfinite(z["train_loss_by_part"]).all()
    np.testing.assert_array_equal(z["steps"], [0, 20, 40])
    assert d["analyses"][:2] == ["loss_parts", "phase_changes"]


def test_induction_section(runs):
    analyze_run(runs["repeated_subsequence"], progress=False)
    d, z = _load(runs["repeated_subsequence"])
    assert d["analyses"] == ["loss_parts", "phase_changes", "induction"]
    ind = d["induction"]
    for key in ("prev_token_heads", "induction_heads", "formed_step", "rule", "final_prev_token_scores",
                "final_induction_scores"):
        assert key in ind
    assert z["prev_token_score"].shape == (3, 2) and z["induction_score"].shape == (3, 2)
    assert ((z["prev_token_score"] >= 0) & (z["prev_token_score"] <= 1)).all()
    np.testing.assert_allclose(ind["final_induction_scores"], z["induction_score"][-1])
    assert all(h.startswith("L0H") for h in ind["prev_token_heads"])
    assert all(h.startswith("L1H") for h in ind["induction_heads"])
    # the drop the circuit is checked against: test with finite data, train with infinite
    fd = ind["formed_inside_drop"]
    cfg = json.loads((runs["repeated_subsequence"] / "config.json").read_text())
    assert fd["curve"] == ("train" if cfg["task"]["n_train"] is None else "test")
    drop, f = d["phase_changes"][fd["curve"]], ind["formed_step"]
    assert fd["inside"] == (None if drop is None or f is None else drop["start"] <= f <= drop["end"])
    # at initialisation every head is close to uniform attention
    np.testing.assert_allclose(z["prev_token_score"][0], ind["uniform_prev_token_score"], rtol=0.5)


def test_skip_trigram_section(runs):
    analyze_run(runs["max_element"], progress=False)
    d, z = _load(runs["max_element"])
    assert d["analyses"] == ["loss_parts", "phase_changes", "skip_trigrams"]
    st = d["skip_trigrams"]
    assert set(st["formed_step"]) == {f"label{i}" for i in range(4)} and "rule" in st
    assert all(v is None or v in (0, 20, 40) for v in st["formed_step"].values())
    assert z["attn_on_special"].shape == (3, 4)
    assert ((z["attn_on_special"] > 0) & (z["attn_on_special"] <= 1)).all()


def test_digit_addition_has_only_the_loss_analyses(runs):
    analyze_run(runs["digit_addition"], progress=False)
    d, _ = _load(runs["digit_addition"])
    assert d["analyses"] == ["loss_parts", "phase_changes"]
    assert "induction" not in d and "skip_trigrams" not in d


def test_zoo_run_without_checkpoints_is_a_run_error(runs, tmp_path, capsys):
    run = tmp_path / "empty"
    run.mkdir()
    shutil.copy(runs["max_element"] / "config.json", run / "config.json")
    with pytest.raises(RunError, match="no checkpoints"):
        analyze_run(run, progress=False)
    assert main(["analyze", str(run), "--no-progress"]) == 2
    assert "no checkpoints" in capsys.readouterr().err


def test_modular_run_names_its_task_and_analyses(tmp_path):
    cfg = Config(task=TaskConfig(p=13, frac_train=0.6), model=ModelConfig(d_model=32, d_mlp=64, n_heads=2),
                 train=TrainConfig(steps=20, eval_every=10, checkpoint_every=10))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch.searchsorted\(\): input value tensor")
        train(cfg, str(tmp_path / "m"))
    d, _ = _load(analyze_run(tmp_path / "m", progress=False).parent)
    assert d["task"] == "modular"
    assert d["analyses"] == ["fourier_circuit", "progress_measures", "phase_boundaries", "clock_pizza"]
    assert "key_frequencies" in d and "phase_changes" not in d
