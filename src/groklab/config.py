"""Run configuration: nested frozen dataclasses, dotted CLI overrides and validation.

A config is pure data: creating one seeds nothing and picks no device. ``Config.resolved()``
fills the derived fields (``d_head``, ``d_vocab``, ``d_vocab_out``) so that ``config.json``
holds every number that defined the run.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, Union

OPERATIONS = ("add", "subtract", "multiply", "x2xyy2", "rand")


class ConfigError(ValueError):
    """A config key, type or value is invalid. The CLI turns it into exit code 2."""


@dataclass(frozen=True)
class TaskConfig:
    p: int = 113  # modulus, an odd prime
    operation: Literal["add", "subtract", "multiply", "x2xyy2", "rand"] = "add"  # c = op(a, b) mod p
    frac_train: float = 0.3  # share of the p^2 pairs used for training, in (0, 1]
    data_seed: int = 0  # seeds the train/test split only (never the init)
    split: Literal["python_shuffle", "torch_randperm"] = "python_shuffle"  # nanda2023 / TL demo rule


@dataclass(frozen=True)
class ModelConfig:
    n_layers: int = 1  # transformer blocks
    n_heads: int = 4  # attention heads per block
    d_model: int = 128  # residual stream width
    d_head: int | None = None  # per-head width; None means d_model // n_heads
    d_mlp: int = 512  # MLP hidden width
    act_fn: Literal["relu", "gelu", "quadratic"] = "relu"  # MLP non-linearity; quadratic is x^2
    attn_only: bool = False  # blocks without MLPs
    use_ln: bool = False  # LayerNorm before attention, MLP and unembed
    n_ctx: int = 3  # sequence length: a, b, '='
    d_vocab: int | None = None  # input tokens; None means p + 1 ('=' is token p)
    d_vocab_out: int | None = None  # output classes; None means p + 1 (nanda2023 keeps '=')
    attn_bias: bool = False  # b_Q, b_K, b_V, b_O
    unembed_bias: bool = False  # b_U
    freeze_biases: bool = False  # keep every bias at zero (TL demo)
    init: Literal["nanda", "gpt2"] = "nanda"  # nanda: randn/sqrt(d_model), W_U randn/sqrt(d_vocab_out)
    init_range: float | None = None  # gpt2 sigma; None means 0.8 / sqrt(d_model)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 10_000  # full-batch optimizer steps
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 1.0  # AdamW decoupled weight decay, applied to every parameter
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.98  # AdamW second-moment decay
    eps: float = 1e-8  # AdamW epsilon
    warmup_steps: int = 10  # linear warm-up: lr * min(step / warmup_steps, 1); 0 disables
    seed: int = 0  # seeds the weight init only
    loss_dtype: Literal["float64", "float32"] = "float64"  # log-softmax precision; float32 slingshots
    eval_every: int = 10  # steps between train/test evaluations
    checkpoint_every: int = 100  # steps between checkpoints
    stop_test_loss: float | None = None  # stop early once test loss falls below this
    device: Literal["cpu", "cuda", "auto"] = "cpu"  # where to train


@dataclass(frozen=True)
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str | None = None  # the preset this config started from

    def resolved(self) -> Config:
        """Return a copy with derived model sizes filled in. Raises ConfigError if invalid."""
        validate(self)
        m, p = self.model, self.task.p
        return replace(
            self,
            model=replace(
                m,
                d_head=m.d_head if m.d_head is not None else m.d_model // m.n_heads,
                d_vocab=m.d_vocab if m.d_vocab is not None else p + 1,
                d_vocab_out=m.d_vocab_out if m.d_vocab_out is not None else p + 1,
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Build a config from ``to_dict`` output. Raises ConfigError on unknown keys or types."""
        cfg = cls()
        flat = {}
        for section, sub in d.items():
            if section in ("preset", "groklab_version"):
                continue
            if not isinstance(sub, dict):
                raise ConfigError(f"config section {section!r} must be an object")
            for k, v in sub.items():
                flat[f"{section}.{k}"] = v
        cfg = apply_overrides(cfg, flat, from_strings=False)
        return replace(cfg, preset=d.get("preset"))


SECTIONS = {"task": TaskConfig, "model": ModelConfig, "train": TrainConfig}


def valid_keys() -> list[str]:
    """All dotted keys, e.g. ``train.lr``."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)]


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(key: str, tp: Any, value: Any, from_string: bool) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (from_string and str(value).lower() in ("none", "null")):
            return None
        return _coerce(key, args[0], value, from_string)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_string and str(value).lower() in ("true", "1", "yes", "false", "0", "no"):
            return str(value).lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if from_string:
            try:
                return int(str(value).replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_string:
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover


def parse_value(key: str, value: Any, from_string: bool = True) -> Any:
    """Coerce one value for dotted ``key``. Raises ConfigError for an unknown key or bad type."""
    section, _, name = key.partition(".")
    cls = SECTIONS.get(section)
    if cls is None or name not in {f.name for f in fields(cls)}:
        raise ConfigError(
            f"unknown config key {key!r}. Valid keys: {', '.join(valid_keys())}"
        )
    return _coerce(key, _field_type(cls, name), value, from_string)


def apply_overrides(cfg: Config, overrides: dict[str, Any], from_strings: bool = True) -> Config:
    """Return ``cfg`` with dotted overrides applied, e.g. ``{"train.lr": "3e-4"}``.

    Raises:
        ConfigError: unknown key (the message lists the valid keys) or a value of the wrong type.
    """
    by_section: dict[str, dict[str, Any]] = {}
    for key, raw in overrides.items():
        value = parse_value(key, raw, from_strings)
        section, _, name = key.partition(".")
        by_section.setdefault(section, {})[name] = value
    return replace(
        cfg, **{s: replace(getattr(cfg, s), **kv) for s, kv in by_section.items()}
    )


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def validate(cfg: Config) -> None:
    """Check values that types cannot express. Raises ConfigError naming the key."""
    t, m, tr = cfg.task, cfg.model, cfg.train
    if not is_prime(t.p) or t.p == 2:
        raise ConfigError(f"task.p: {t.p} is not an odd prime; choose e.g. 53, 97, 113")
    if not 0.0 < t.frac_train <= 1.0:
        raise ConfigError(f"task.frac_train: {t.frac_train} must be in (0, 1]")
    if int(t.frac_train * t.p * t.p) < 1:
        raise ConfigError(f"task.frac_train: {t.frac_train} leaves no training pairs at p={t.p}")
    positive = {
        "model.n_layers": m.n_layers, "model.n_heads": m.n_heads, "model.d_model": m.d_model,
        "model.d_mlp": m.d_mlp, "train.steps": tr.steps, "train.eval_every": tr.eval_every,
        "train.checkpoint_every": tr.checkpoint_every,
    }
    for key, v in positive.items():
        if v < 1:
            raise ConfigError(f"{key}: {v} must be a positive integer")
    if m.d_head is None and m.d_model % m.n_heads:
        raise ConfigError(
            f"model.d_model: {m.d_model} is not divisible by model.n_heads={m.n_heads}; "
            "set model.d_head explicitly"
        )
    if m.d_head is not None and m.d_head < 1:
        raise ConfigError(f"model.d_head: {m.d_head} must be a positive integer")
    if m.n_ctx != 3:
        raise ConfigError(f"model.n_ctx: {m.n_ctx}; modular-arithmetic tasks use 3 tokens (a b =)")
    if m.d_vocab is not None and m.d_vocab < t.p + 1:
        raise ConfigError(f"model.d_vocab: {m.d_vocab} < p + 1 = {t.p + 1} input tokens")
    if m.d_vocab_out is not None and m.d_vocab_out < t.p:
        raise ConfigError(f"model.d_vocab_out: {m.d_vocab_out} < p = {t.p} classes")
    if tr.lr <= 0:
        raise ConfigError(f"train.lr: {tr.lr} must be > 0")
    if tr.weight_decay < 0:
        raise ConfigError(f"train.weight_decay: {tr.weight_decay} must be >= 0")
    for key, b in (("train.beta1", tr.beta1), ("train.beta2", tr.beta2)):
        if not 0.0 <= b < 1.0:
            raise ConfigError(f"{key}: {b} must be in [0, 1)")
    if tr.warmup_steps < 0:
        raise ConfigError(f"train.warmup_steps: {tr.warmup_steps} must be >= 0")
    if m.init_range is not None and m.init_range <= 0:
        raise ConfigError(f"model.init_range: {m.init_range} must be > 0")
