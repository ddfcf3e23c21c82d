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

from .errors import ConfigError
from .tasks import OPERATIONS, TASKS, TaskConfig, task_config_class
from .tasks.modular import is_prime

__all__ = ["MODEL_FAMILIES", "OPERATIONS", "Config", "ConfigError", "MLPConfig", "ModelConfig", "TaskConfig",
           "TrainConfig", "model_config_class",
           "apply_overrides", "is_prime", "parse_value", "valid_keys", "validate"]


@dataclass(frozen=True)
class ModelConfig:
    """``model.*`` keys of the transformer family (``model.family: transformer``, the default)."""

    family: str = "transformer"  # model family: transformer or mlp (MLPConfig)
    n_layers: int = 1  # transformer blocks
    n_heads: int = 4  # attention heads per block
    d_model: int = 128  # residual stream width
    d_head: int | None = None  # per-head width; None means d_model // n_heads
    d_mlp: int = 512  # MLP hidden width
    act_fn: Literal["relu", "gelu", "quadratic"] = "relu"  # MLP non-linearity; quadratic is x^2
    attn_only: bool = False  # blocks without MLPs
    use_ln: bool = False  # LayerNorm before attention, MLP and unembed
    n_ctx: int | None = None  # sequence length; None means the task's (3 for modular: a, b, '=')
    d_vocab: int | None = None  # input tokens; None means the task's (p + 1 for modular)
    d_vocab_out: int | None = None  # output classes; None means the task's (p + 1: nanda2023 keeps '=')
    attn_bias: bool = False  # b_Q, b_K, b_V, b_O
    unembed_bias: bool = False  # b_U
    freeze_biases: bool = False  # keep every bias at zero (TL demo)
    init: Literal["nanda", "gpt2"] = "nanda"  # nanda: randn/sqrt(d_model), W_U randn/sqrt(d_vocab_out)
    init_range: float | None = None  # gpt2 sigma; None means 0.8 / sqrt(d_model)
    init_qkv: Literal["d_model", "d_head"] = "d_model"  # nanda init: W_Q/W_K/W_V = randn / sqrt(this)
    doubled_residual: bool = False  # x_{l+1} = 2 x_l + block(x_l), the induction notebook's quirk
    attn_coeff: float = 1.0  # attention rate alpha (Zhong et al. 2023): pattern = alpha softmax + (1 -
    # alpha) on every visible key; 0 is constant attention (the pizza model), 1 is ordinary attention


@dataclass(frozen=True)
class MLPConfig:
    """``model.*`` keys of PAIR's one-layer MLP (``model.family: mlp``; ``pair.md`` §1.1).

    ``act(W_E[a] W_in + W_E[b] W_in) W_out W_E^T``: one-hot a and b through ``embed.W_E``
    ``[d_vocab, d_embed]``, one shared ``mlp.W_in`` ``[d_embed, d_hidden]``, ``mlp.W_out``
    ``[d_hidden, d_embed]``, tied unembedding; no biases. A bit-vector task (sparse parity) has
    ``mlp.W_in`` ``[n_bits + 1, d_hidden]`` and ``mlp.W_out`` ``[d_hidden, 1]`` (set both
    ``collapsed_*`` true).
    """

    family: str = "mlp"  # model family: transformer (ModelConfig) or mlp
    d_embed: int = 500  # embedding width (PAIR embed_size); unused when both matrices are collapsed
    d_hidden: int = 24  # hidden neurons (PAIR hidden_size)
    act_fn: Literal["relu", "quadratic"] = "relu"  # quadratic is x^2 (Gromov 2023)
    embed: Literal["tied", "untied", "circle"] = "tied"  # tied: W_E also unembeds; untied: own unembed.W_U
    # [d_embed, d_vocab_out]; circle: W_E fixed to L2-normalised cos/sin of 2 pi circle_freq i / p
    circle_freq: int = 1  # frequency of the fixed circle embedding (embed: circle)
    collapsed_in: bool = False  # mlp.W_in is [d_vocab, d_hidden]: no input embedding (PAIR)
    collapsed_out: bool = False  # mlp.W_out is [d_hidden, d_vocab_out]: no unembedding
    dtype: Literal["float32", "float64"] = "float32"  # weights, forward and optimizer state; PAIR's
    # notebook runs JAX with jax_enable_x64, so its MLP computes in float64 (pair.md 1.1)


MODEL_FAMILIES: dict[str, type] = {"transformer": ModelConfig, "mlp": MLPConfig}


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 10_000  # optimizer steps
    batch_size: int | None = None  # examples per step; None: the full training set (full batch)
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
    stop_test_acc: float | None = None  # stop early once test accuracy reaches this (e.g. 0.99)
    device: Literal["cpu", "cuda", "auto"] = "cpu"  # where to train
    regularization: Literal["l2", "l1"] = "l2"  # l2: AdamW's decoupled decay; l1: wd*sign(w) added to
    # the gradient before Adam (PAIR's l1 branch, sparse parity)
    loss_reduction: Literal["mean", "class_mean"] = "mean"  # class_mean: PAIR's CE averaged over the
    # classes too (CE / d_vocab_out), used for training and recorded in metrics.jsonl
    loss: Literal["cross_entropy", "stablemax"] = "cross_entropy"  # stablemax: Prieto et al. 2025's
    # s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0) in place of exp, in loss_dtype (train.losses)
    optimizer: Literal["adamw", "perp_adamw"] = "adamw"  # perp_adamw: AdamW on the gradient minus its
    # component along the weights, rescaled to its norm (Prieto et al. 2025's ⊥AdamW)
    grad_filter: Literal["none", "ema", "ma"] = "none"  # Grokfast (Lee et al. 2024): g += lamb * h
    # with h an EMA or a moving average of past gradients, before the optimizer (train.grad_filter)
    grad_filter_alpha: float = 0.98  # EMA momentum (grokfast.py's default)
    grad_filter_lamb: float | None = None  # amplification; None: 2.0 for ema, 5.0 for ma (grokfast.py)
    grad_filter_window: int = 100  # MA window in steps (grokfast.py's default)
    grad_filter_warmup: bool = True  # MA: leave gradients unfiltered until the window is full


@dataclass(frozen=True)
class Config:
    task: Any = field(default_factory=TaskConfig)  # one of the task config classes (tasks.TASKS)
    model: Any = field(default_factory=ModelConfig)  # ModelConfig or MLPConfig (model.family)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str | None = None  # the preset this config started from

    def resolved(self) -> Config:
        """Return a copy with derived model sizes filled in. Raises ConfigError if invalid."""
        validate(self)
        m = self.model
        if m.family != "transformer":
            return self
        n_ctx, d_vocab, d_vocab_out = self.task.dims()
        return replace(
            self,
            model=replace(
                m,
                d_head=m.d_head if m.d_head is not None else m.d_model // m.n_heads,
                n_ctx=m.n_ctx if m.n_ctx is not None else n_ctx,
                d_vocab=m.d_vocab if m.d_vocab is not None else d_vocab,
                d_vocab_out=m.d_vocab_out if m.d_vocab_out is not None else d_vocab_out,
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
        task, model = d.get("task"), d.get("model")
        if isinstance(task, dict) and "name" in task:  # the task first: it decides the task.* keys
            flat["task.name"] = task["name"]
        if isinstance(model, dict) and "family" in model:  # likewise model.family: the model.* keys
            flat["model.family"] = model["family"]
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


def _sections(cfg: Config | None) -> dict[str, type]:
    return {**SECTIONS, "task": type(cfg.task), "model": type(cfg.model)} if cfg is not None else SECTIONS


def model_config_class(family: str) -> type:
    """The config dataclass of ``model.family``. Raises ConfigError listing the families."""
    try:
        return MODEL_FAMILIES[family]
    except KeyError:
        raise ConfigError(f"model.family: {family!r} is not one of {', '.join(MODEL_FAMILIES)}") from None


def valid_keys(cfg: Config | None = None) -> list[str]:
    """All dotted keys of ``cfg``'s task (default: modular arithmetic), e.g. ``train.lr``."""
    return [f"{s}.{f.name}" for s, cls in _sections(cfg).items() for f in fields(cls)]


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


def parse_value(key: str, value: Any, from_string: bool = True, cfg: Config | None = None) -> Any:
    """Coerce one value for dotted ``key`` of ``cfg``'s task (default: modular arithmetic).

    Raises:
        ConfigError: an unknown key (the message lists the valid keys of the task) or a bad type.
    """
    section, _, name = key.partition(".")
    cls = _sections(cfg).get(section)
    if cls is None or name not in {f.name for f in fields(cls)}:
        task = f" of task {cfg.task.name!r}" if cfg is not None and section == "task" else ""
        if cfg is not None and section == "model":
            task = f" of model family {cfg.model.family!r}"
        raise ConfigError(
            f"unknown config key {key!r}{task}. Valid keys: {', '.join(valid_keys(cfg))} "
            f"(task.name is one of {', '.join(TASKS)}; model.family is one of {', '.join(MODEL_FAMILIES)})"
        )
    if key == "task.name":
        value = str(value)
        task_config_class(value)  # raises for an unknown task
        return value
    if key == "model.family":
        value = str(value)
        model_config_class(value)  # raises for an unknown family
        return value
    return _coerce(key, _field_type(cls, name), value, from_string)


def apply_overrides(cfg: Config, overrides: dict[str, Any], from_strings: bool = True) -> Config:
    """Return ``cfg`` with dotted overrides applied, e.g. ``{"train.lr": "3e-4"}``.

    Raises:
        ConfigError: unknown key (the message lists the valid keys) or a value of the wrong type.
    """
    if "task.name" in overrides:  # switching task starts from the new task's defaults
        name = parse_value("task.name", overrides["task.name"], from_strings, cfg)
        if name != cfg.task.name:  # the old task's sizes go too (set them again to keep them)
            model = cfg.model
            if model.family == "transformer":
                model = replace(model, n_ctx=None, d_vocab=None, d_vocab_out=None)
            cfg = replace(cfg, task=task_config_class(name)(), model=model)
        overrides = {k: v for k, v in overrides.items() if k != "task.name"}
    if "model.family" in overrides:  # switching family starts from the new family's defaults
        family = parse_value("model.family", overrides["model.family"], from_strings, cfg)
        if family != cfg.model.family:
            cfg = replace(cfg, model=model_config_class(family)())
        overrides = {k: v for k, v in overrides.items() if k != "model.family"}
    by_section: dict[str, dict[str, Any]] = {}
    for key, raw in overrides.items():
        value = parse_value(key, raw, from_strings, cfg)
        section, _, name = key.partition(".")
        by_section.setdefault(section, {})[name] = value
    return replace(
        cfg, **{s: replace(getattr(cfg, s), **kv) for s, kv in by_section.items()}
    )


def validate(cfg: Config) -> None:
    """Check values that types cannot express. Raises ConfigError naming the key."""
    t, m, tr = cfg.task, cfg.model, cfg.train
    t.validate()
    _validate_train(tr)
    if m.family == "mlp":
        _validate_mlp(t, m)
        return
    n_ctx, d_vocab, d_vocab_out = t.dims()
    n_classes = getattr(t, "n_classes", d_vocab_out)
    positive = {
        "model.n_layers": m.n_layers, "model.n_heads": m.n_heads, "model.d_model": m.d_model,
        "model.d_mlp": m.d_mlp,
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
    if m.n_ctx is not None and m.n_ctx != n_ctx:
        raise ConfigError(f"model.n_ctx: {m.n_ctx}; task {t.name!r} uses {n_ctx} tokens "
                          "(leave model.n_ctx unset)")
    if m.d_vocab is not None and m.d_vocab < d_vocab:
        raise ConfigError(f"model.d_vocab: {m.d_vocab} < the task's {d_vocab} input tokens")
    if m.d_vocab_out is not None and m.d_vocab_out < n_classes:
        raise ConfigError(f"model.d_vocab_out: {m.d_vocab_out} < the task's {n_classes} classes")
    if m.doubled_residual and not m.attn_only:
        raise ConfigError("model.doubled_residual: only defined for attention-only models "
                          "(the induction notebook's AttnOnlyTransformer); set model.attn_only true")
    if not 0.0 <= m.attn_coeff <= 1.0:
        raise ConfigError(f"model.attn_coeff: {m.attn_coeff} must be in [0, 1] (0: constant attention, "
                          "the pizza model; 1: softmax attention)")
    if m.init_range is not None and m.init_range <= 0:
        raise ConfigError(f"model.init_range: {m.init_range} must be > 0")


def _validate_mlp(t: Any, m: MLPConfig) -> None:
    io = getattr(t, "mlp_io", None)
    if io is None:
        raise ConfigError(f"model.family: mlp has no input for task {t.name!r}; it trains on task.name "
                          "modular or sparse_parity (use model.family transformer for the others)")
    for key, v in (("model.d_embed", m.d_embed), ("model.d_hidden", m.d_hidden)):
        if v < 1:
            raise ConfigError(f"{key}: {v} must be a positive integer")
    n_in, _, kind = io()
    if kind == "bits" and not (m.collapsed_in and m.collapsed_out):
        raise ConfigError(f"task {t.name!r} feeds the MLP a bit vector, which has no embedding: set "
                          "--model.collapsed_in true --model.collapsed_out true (mlp.W_in is "
                          f"[{n_in}, d_hidden], mlp.W_out [d_hidden, 1]); see the pair-parity preset")
    if m.embed == "circle":
        if m.d_embed != 2:
            raise ConfigError(f"model.d_embed: {m.d_embed}; the circle embedding has 2 columns "
                              "(cos, sin): set --model.d_embed 2")
        if m.collapsed_in or m.collapsed_out:
            raise ConfigError("model.embed: circle is a fixed embedding; it cannot be combined with "
                              "model.collapsed_in / collapsed_out")
        if not 1 <= m.circle_freq <= (t.p - 1) // 2:
            raise ConfigError(f"model.circle_freq: {m.circle_freq} must be in 1 .. {(t.p - 1) // 2}")


def _validate_train(tr: TrainConfig) -> None:
    positive = {"train.steps": tr.steps, "train.eval_every": tr.eval_every,
                "train.checkpoint_every": tr.checkpoint_every}
    for key, v in positive.items():
        if v < 1:
            raise ConfigError(f"{key}: {v} must be a positive integer")
    if tr.batch_size is not None and tr.batch_size < 1:
        raise ConfigError(f"train.batch_size: {tr.batch_size} must be >= 1, or null for full batch")
    if tr.lr <= 0:
        raise ConfigError(f"train.lr: {tr.lr} must be > 0")
    if tr.weight_decay < 0:
        raise ConfigError(f"train.weight_decay: {tr.weight_decay} must be >= 0")
    for key, b in (("train.beta1", tr.beta1), ("train.beta2", tr.beta2)):
        if not 0.0 <= b < 1.0:
            raise ConfigError(f"{key}: {b} must be in [0, 1)")
    if tr.warmup_steps < 0:
        raise ConfigError(f"train.warmup_steps: {tr.warmup_steps} must be >= 0")
    if not 0.0 <= tr.grad_filter_alpha < 1.0:
        raise ConfigError(f"train.grad_filter_alpha: {tr.grad_filter_alpha} must be in [0, 1)")
    if tr.grad_filter_window < 1:
        raise ConfigError(f"train.grad_filter_window: {tr.grad_filter_window} must be >= 1")
