"""Named recipes. Each preset is a full Config plus the source it reproduces."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .config import Config, ConfigError, ModelConfig, TaskConfig, TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    config: Config
    source: str  # where the recipe comes from
    summary: str  # one line for --list-presets


_NANDA = Config(
    task=TaskConfig(p=113, operation="add", frac_train=0.3, data_seed=0, split="python_shuffle"),
    model=ModelConfig(
        n_layers=1, n_heads=4, d_model=128, d_mlp=512, act_fn="relu", n_ctx=3,
        attn_bias=False, unembed_bias=False, freeze_biases=False, init="nanda",
    ),
    train=TrainConfig(
        steps=40_000, lr=1e-3, weight_decay=1.0, beta1=0.9, beta2=0.98, warmup_steps=10,
        seed=0, loss_dtype="float64", eval_every=10, checkpoint_every=100,
    ),
    preset="nanda2023",
)

_TL_DEMO = Config(
    task=TaskConfig(p=113, operation="add", frac_train=0.3, data_seed=598, split="torch_randperm"),
    model=replace(
        _NANDA.model, d_vocab_out=113, freeze_biases=True, init="gpt2", init_range=None,
    ),
    train=replace(_NANDA.train, steps=25_000, warmup_steps=0, seed=999),
    preset="tl-demo",
)

_QUICKSTART = replace(
    _NANDA,
    task=replace(_NANDA.task, frac_train=0.4),
    train=replace(_NANDA.train, steps=6_000),
    preset="quickstart",
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "quickstart", _QUICKSTART,
            "nanda2023 with 40% data (Nanda et al. 2023, App. D data-fraction sweep)",
            "default: the paper's model at 40% data; groks in ~3.5k steps, a few minutes on a CPU",
        ),
        Preset(
            "nanda2023", _NANDA,
            "Nanda, Chan, Lieberum, Smith & Steinhardt, ICLR 2023 (arXiv 2301.05217), "
            "progress-measures-paper/transformers.py",
            "the paper's exact recipe: p=113, 30% data, 114-way output, wd 1, float64 loss",
        ),
        Preset(
            "tl-demo", _TL_DEMO,
            "TransformerLens demos/Grokking_Demo.ipynb",
            "TransformerLens demo: 113-way output, frozen zero biases, GPT-2 init, seeds 598/999",
        ),
    )
}

DEFAULT_PRESET = "quickstart"


def get_preset(name: str) -> Config:
    """Return the preset's config. Raises ConfigError listing the valid names."""
    try:
        return PRESETS[name].config
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r}. Valid presets: {', '.join(PRESETS)} "
            "(see `groklab train --list-presets`)"
        ) from None
