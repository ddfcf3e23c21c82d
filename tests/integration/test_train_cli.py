"""End to end through groklab.cli.main: a tiny run, the run-directory contract, and resume."""

import json

import pytest
import torch

from groklab import load_run
from groklab.cli import main
from groklab.train.loop import Trainer

TINY = ["--task.p", "11", "--model.d_model", "32", "--model.d_mlp", "64", "--train.steps", "60",
        "--train.eval_every", "10", "--train.checkpoint_every", "20", "--no-progress"]


def test_tiny_run_layout(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--preset", "nanda2023", "--out", str(out), *TINY]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["groklab_version"] and cfg["task"]["p"] == 11 and cfg["model"]["d_head"] == 8
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(0, 61, 10))
    for r in rows:
        assert {"step", "train_loss", "test_loss", "train_acc", "test_acc"} <= r.keys()
    names = sorted(p.name for p in (out / "checkpoints").glob("step_*.safetensors"))
    assert names == [f"step_{s:07d}.safetensors" for s in (0, 20, 40, 60)]
    run = load_run(out)
    assert run.steps == [0, 20, 40, 60] and len(run.metrics) == 7
    model = run.model_at(60)
    # The stored train loss is the model's loss on the train split (an independent recomputation).
    from groklab.tasks import make_data

    data = make_data(run.config.task)
    with torch.no_grad():
        logits = model(data.tokens[data.train_idx])[:, -1].double()
    loss = torch.nn.functional.cross_entropy(logits, data.labels[data.train_idx])
    torch.testing.assert_close(loss.item(), rows[-1]["train_loss"], rtol=1e-5, atol=1e-7)


def test_refuses_non_empty_out(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["train", "--out", str(out), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_resume_missing_run_exits_2(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(["train", "--preset", "nanda2023", "--out", str(full), *TINY]) == 0

    original = Trainer.train_step

    def dies_at_47(self, step):
        if step == 47:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(Trainer, "train_step", dies_at_47)
    assert main(["train", "--preset", "nanda2023", "--out", str(killed), *TINY]) == 130
    assert load_run(killed).steps == [0, 20, 40]
    monkeypatch.setattr(Trainer, "train_step", original)
    assert main(["train", "--resume", str(killed), "--no-progress"]) == 0

    a, b = load_run(full), load_run(killed)
    assert a.steps == b.steps
    for k, v in a.state_at(60).items():
        torch.testing.assert_close(b.state_at(60)[k], v, rtol=0, atol=0)
    assert [r["step"] for r in b.metrics] == [r["step"] for r in a.metrics]
    for ra, rb in zip(a.metrics, b.metrics, strict=True):
        torch.testing.assert_close(rb["test_loss"], ra["test_loss"], rtol=1e-12, atol=0)


@pytest.mark.slow
def test_default_quickstart_groks(tmp_path):
    """The bare `groklab train` recipe: train acc 100% early, test acc > 99% >= 1000 steps later."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--no-progress"]) == 0
    rows = load_run(out).metrics
    t_train = next(r["step"] for r in rows if r["train_acc"] == 1.0)
    t_test = next(r["step"] for r in rows if r["test_acc"] >= 0.99)
    assert t_test - t_train >= 1000


def test_resume_can_extend_a_finished_run(tmp_path, capsys):
    """Extending a 40-step run to 60 steps gives the 60-step run (no schedule depends on steps)."""
    full, short = tmp_path / "full", tmp_path / "short"
    assert main(["train", "--preset", "nanda2023", "--out", str(full), *TINY]) == 0
    assert main(["train", "--preset", "nanda2023", "--out", str(short), *TINY, "--train.steps", "40"]) == 0
    assert main(["train", "--resume", str(short), "--train.lr", "1"]) == 2
    assert "only train.steps" in capsys.readouterr().err
    assert main(["train", "--resume", str(short), "--train.steps", "60", "--no-progress"]) == 0
    a, b = load_run(full), load_run(short)
    assert b.config.train.steps == 60 and b.steps == a.steps
    for k, v in a.state_at(60).items():
        torch.testing.assert_close(b.state_at(60)[k], v, rtol=0, atol=0)
