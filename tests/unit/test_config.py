"""Config overrides, validation and the CLI's exit code 2 on bad input."""

import pytest

from groklab.cli import main
from groklab.config import Config, ConfigError, apply_overrides, is_prime, valid_keys
from groklab.presets import PRESETS, get_preset


def test_required_keys_exist():
    keys = set(valid_keys())
    for k in ["task.p", "task.operation", "task.frac_train", "task.data_seed", "model.d_model",
              "model.n_heads", "model.d_mlp", "model.act_fn", "model.attn_only", "model.use_ln",
              "train.steps", "train.lr", "train.weight_decay", "train.seed", "train.eval_every",
              "train.checkpoint_every"]:
        assert k in keys


def test_overrides_are_typed():
    cfg = apply_overrides(get_preset("nanda2023"), {"train.weight_decay": "0.3", "task.p": "97",
                                                      "model.attn_only": "true", "model.d_head": "none"})
    assert cfg.train.weight_decay == 0.3 and isinstance(cfg.train.weight_decay, float)
    assert cfg.task.p == 97 and cfg.model.attn_only is True and cfg.model.d_head is None
    assert cfg.resolved().model.d_head == 32 and cfg.resolved().model.d_vocab_out == 98


@pytest.mark.parametrize("key,value,fragment", [
    ("train.lrr", "1", "Valid keys"),
    ("train.steps", "ten", "expected an integer"),
    ("train.lr", "fast", "expected a number"),
    ("task.operation", "divide", "add, subtract"),
    ("model.attn_only", "maybe", "true or false"),
])
def test_bad_override_names_key(key, value, fragment):
    with pytest.raises(ConfigError) as e:
        apply_overrides(Config(), {key: value})
    assert key in str(e.value) and fragment in str(e.value)


@pytest.mark.parametrize("key,value", [("task.p", 100), ("task.p", 2), ("task.frac_train", 0.0),
                                       ("task.frac_train", 1.5), ("model.n_heads", 3)])
def test_impossible_values(key, value):
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        apply_overrides(Config(), {key: value}, from_strings=False).resolved()


def test_is_prime_against_sieve():
    sieve = [True] * 200
    sieve[0] = sieve[1] = False
    for i in range(2, 200):
        for j in range(2 * i, 200, i):
            sieve[j] = False
    assert [n for n in range(200) if is_prime(n)] == [n for n in range(200) if sieve[n]]


def test_roundtrip_dict():
    for preset in PRESETS.values():
        cfg = preset.config.resolved()
        assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("argv,fragment", [
    (["--train.lrr", "1"], "train.lrr"),
    (["--task.p", "100"], "not an odd prime"),
    (["--task.frac_train", "0"], "(0, 1]"),
    (["--train.steps", "x"], "expected an integer"),
    (["--preset", "nope"], "nanda2023"),
    (["--bogus"], "unknown option"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, argv, fragment):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--no-progress", *argv]) == 2
    assert fragment in capsys.readouterr().err
    assert not out.exists()


def test_list_presets(capsys):
    assert main(["train", "--list-presets"]) == 0
    text = capsys.readouterr().out
    for name in PRESETS:
        assert name in text
    assert "source:" in text


@pytest.mark.parametrize("command,flags", [("train", ["--seeds", "--vary-data", "--resume"]),
                                           ("bench", ["--zoo", "--pair", "--sweep", "--threads", "--heap",
                                                      "--zoo-presets"])])
def test_subcommand_help_lists_its_flags(command, flags, capsys):
    """``groklab <command> --help`` exits 0 and lists the command's own flags (bench parses its
    arguments itself, so the subparser must not answer --help first)."""
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(f in out for f in flags), out
