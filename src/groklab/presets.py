"""Named recipes. Each preset is a full Config plus the source it reproduces."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .config import Config, ConfigError, MLPConfig, ModelConfig, TaskConfig, TrainConfig
from .tasks import DigitAdditionConfig, MaxElementConfig, RepeatedSubsequenceConfig, SparseParityConfig


@dataclass(frozen=True)
class Preset:
    name: str
    config: Config
    source: str  # where the recipe comes from
    summary: str  # one line for --list-presets


_NANDA = Config(
    task=TaskConfig(p=113, operation="add", frac_train=0.3, data_seed=0, split="python_shuffle"),
    model=ModelConfig(
        n_layers=1, n_heads=4, d_model=128, d_mlp=512, act_fn="relu",
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

# --- the phase-change zoo (Nanda & Lieberum 2022, "Phase Changes"; ../shared/reference/zoo.md) ---
_NB = "Nanda & Lieberum 2022, Non_Modular_Addition_Grokking_Tasks.ipynb"

_DIGITS5 = Config(
    task=DigitAdditionConfig(n_digits=5, n_train=750, n_test=64, test_fresh=True, data_seed=129000),
    model=ModelConfig(n_layers=1, n_heads=4, d_model=128, d_mlp=512, act_fn="relu", init="nanda"),
    train=TrainConfig(steps=6_000, lr=1e-3, weight_decay=1.0, beta1=0.9, beta2=0.98, warmup_steps=10,
                      seed=129000, eval_every=10, checkpoint_every=100),
    preset="digits5",
)
_DIGITS5_INF = replace(
    _DIGITS5, task=replace(_DIGITS5.task, n_train=None, n_test=512, test_fresh=False),
    train=replace(_DIGITS5.train, steps=6_000, batch_size=64, lr=3e-4, weight_decay=0.1),
    preset="digits5-infinite",
)
_INDUCTION = Config(
    task=RepeatedSubsequenceConfig(seq_len=85, subseq_len=16, num_repeats=3, vocab_size=128,
                                   n_train=512, n_test=640, test_fresh=False, data_seed=1,
                                   rng="notebook"),  # the saved run's draws: it replays it
    model=ModelConfig(n_layers=2, n_heads=4, d_model=48, d_head=12, attn_only=True, init="nanda",
                      init_qkv="d_head", doubled_residual=True),
    train=TrainConfig(steps=300_000, batch_size=128, lr=1e-3, weight_decay=1.0, beta1=0.9, beta2=0.999,
                      warmup_steps=100, seed=1, eval_every=100, checkpoint_every=2_000,
                      stop_test_loss=None),
    preset="induction",
)
_INDUCTION_INF = replace(  # groklab's own draws (measured so in the README)
    _INDUCTION, task=replace(_INDUCTION.task, n_train=None, rng="torch"),
    train=replace(_INDUCTION.train, steps=6_000, eval_every=10, checkpoint_every=100),
    preset="induction-infinite",
)
_MAX = Config(
    task=MaxElementConfig(rand_size=10, seq_len=40, n_train=36, n_test=256, test_fresh=True,
                          data_seed=6798),
    model=ModelConfig(n_layers=1, n_heads=1, d_model=32, d_head=8, attn_only=True, init="nanda"),
    train=TrainConfig(steps=5_000, lr=1e-3, weight_decay=0.1, beta1=0.9, beta2=0.98, warmup_steps=10,
                      seed=6798, eval_every=5, checkpoint_every=50),
    preset="max-element",
)
_MAX_INF = replace(
    _MAX, task=replace(_MAX.task, n_train=None, test_fresh=False),
    train=replace(_MAX.train, steps=3_000, batch_size=256, eval_every=5, checkpoint_every=50),
    preset="max-element-infinite",
)

# --- PAIR, "Do Machine Learning Models Memorize or Generalize?" (Pearce et al. 2023; pair.md) ---
_PAIR_NB = "PAIR-code/ai-explorables server-side/grokking/MLP_Modular_Addition.ipynb"
_PAIR = Config(
    task=TaskConfig(p=67, operation="add", frac_train=0.4, data_seed=165, split="numpy_permutation",
                    symmetric=True),
    model=MLPConfig(d_embed=500, d_hidden=24, act_fn="relu", embed="tied"),
    train=TrainConfig(steps=50_000, lr=1e-3, weight_decay=1.0, beta1=0.9, beta2=0.98, warmup_steps=0,
                      seed=165, eval_every=100, checkpoint_every=500, loss_reduction="class_mean"),
    preset="pair2023",
)
_PAIR_FIVE = Config(
    task=replace(_PAIR.task, frac_train=0.3, data_seed=86),
    model=MLPConfig(d_embed=2, d_hidden=5, act_fn="relu", embed="circle", circle_freq=1),
    train=replace(_PAIR.train, steps=15_000, lr=1e-2, weight_decay=1e-3, seed=86, eval_every=30,
                  checkpoint_every=30),
    preset="pair-five-neurons",
)
_PAIR_PARITY = Config(
    task=SparseParityConfig(n_bits=30, k=3, n_train=1200, n_test=5000, data_seed=0),
    model=MLPConfig(d_embed=1, d_hidden=64, act_fn="relu", collapsed_in=True, collapsed_out=True),
    train=TrainConfig(steps=5_000, lr=1e-3, weight_decay=1e-3, beta1=0.9, beta2=0.98, warmup_steps=0,
                      seed=0, eval_every=10, checkpoint_every=50, regularization="l1"),
    preset="pair-parity",
)
_PAIR_PARITY_SWEEP = replace(
    _PAIR_PARITY, task=replace(_PAIR_PARITY.task, n_train=1250),
    train=replace(_PAIR_PARITY.train, steps=10_000, lr=3e-3, weight_decay=0.1, regularization="l2",
                  beta1=0.99, beta2=0.98, eval_every=50, checkpoint_every=2_000),
    preset="pair-parity-sweep",
)
_PAIR_REVERSE = replace(
    _PAIR, task=replace(_PAIR.task, data_seed=68), model=MLPConfig(d_embed=5, d_hidden=10),
    train=replace(_PAIR.train, steps=20_000, weight_decay=0.0, seed=68, checkpoint_every=200),
    preset="pair-reverse-grokking",
)
_PAIR_GMG = replace(
    _PAIR, task=replace(_PAIR.task, frac_train=0.7, data_seed=78), model=MLPConfig(d_embed=8, d_hidden=16),
    train=replace(_PAIR.train, steps=80_000, weight_decay=0.05, seed=78, checkpoint_every=800),
    preset="pair-gen-mem-gen",
)

# --- clock vs pizza (Zhong, Liu, Tegmark & Andreas 2023; ../shared/reference/pair.md §5) ---
# code/train-main.py: a + b mod 59 over all 3,481 pairs, 80% train, full batch, 20k epochs, AdamW
# lr 1e-3, wd 2, betas (0.9, 0.98), 10-step warm-up, float64 CE; 1 layer, d_model 128, 4 heads,
# d_mlp 512, ReLU, MLP biases, no LayerNorm; attention alpha softmax + (1 - alpha). Differences,
# kept so that every groklab analysis applies: the input is ``a b =`` read at '=' (theirs is
# ``a b`` read at b, with no mask: the last query sees every key in both), and the split is
# torch_randperm with data seed 0 (theirs is an unseeded random_split).
_PIZZA = Config(
    task=TaskConfig(p=59, operation="add", frac_train=0.8, data_seed=0, split="torch_randperm"),
    model=replace(_NANDA.model, d_vocab_out=59, attn_coeff=0.0),
    train=replace(_NANDA.train, steps=20_000, weight_decay=2.0, checkpoint_every=500),
    preset="pizza2023",
)
_CLOCK = replace(_PIZZA, model=replace(_PIZZA.model, attn_coeff=1.0), preset="clock2023")

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
        Preset(
            "digits5", _DIGITS5, f"{_NB}, #5 Digit Addition (config cell, finite training cell)",
            "5-digit addition, 750 fixed sums, full batch: memorises, then groks digit by digit",
        ),
        Preset(
            "digits5-infinite", _DIGITS5_INF,
            f"{_NB}, #5 Digit Addition infinite cell; width of saved_runs/5_digit_addition_infinite.pth",
            "5-digit addition, a fresh batch of 64 every step: six separate per-digit phase changes",
        ),
        Preset(
            "induction", _INDUCTION,
            f"{_NB}, #Induction Heads (data_config, AttnOnlyTransformer, finite cell)",
            "repeated subsequences, 512 fixed sequences, 2-layer attention-only (saved run: groks at ~199k)",
        ),
        Preset(
            "induction-infinite", _INDUCTION_INF, f"{_NB}, #Induction Heads infinite cell",
            "repeated subsequences, fresh batches: one sharp drop as the induction circuit forms",
        ),
        Preset(
            "max-element", _MAX, f"{_NB}, #Skip Trigram (config cell DpP1873HPyz2, finite cell)",
            "max element, 36 fixed sequences: memorises by ~200 steps, test loss falls ~2.8k steps later",
        ),
        Preset(
            "max-element-infinite", _MAX_INF, f"{_NB}, #Skip Trigram infinite cell (ISBilcIVR9nM)",
            "max element, a fresh batch of 256 every step: a phase change at ~150 steps",
        ),
        Preset(
            "pair2023", _PAIR, f"{_PAIR_NB}, cell 9 (the main model used in the post)",
            "PAIR's MLP on a+b mod 67, a<=b pairs, 40% train, 24 neurons: memorises by ~500, groks ~30k",
        ),
        Preset(
            "pair-five-neurons", _PAIR_FIVE,
            "PAIR-code/ai-explorables server-side/grokking/MLP_Modular_Addition_Fixed_Embed.ipynb",
            "5 neurons on a fixed circle embedding, a+b mod 67: train and test rise together to 100%",
        ),
        Preset(
            "pair-parity", _PAIR_PARITY,
            "PAIR post, 'Generalizing With 1s and 0s' (n=30, k=3, 1,200 sequences, L1); notebook unavailable",
            "sparse parity, L1 weight decay: memorises, then generalises as distractor weights are pruned",
        ),
        Preset(
            "pair-parity-sweep", _PAIR_PARITY_SWEEP,
            "PAIR post, sparse-parity sweep (sweep-sparse-parity, data__hypers_sparse_parity_v4.csv: axes "
            "weight_decay, hidden_size, train_size); lr/optimiser/regulariser lost from the CSV, taken "
            "from the older sweep's hyper_shared.json (AdamW, L2, lr 3e-3, betas (0.99, 0.98))",
            "the member of PAIR's 1,125-run parity sweep: AdamW (decoupled L2), lr 3e-3, 10k steps; "
            "sweep weight_decay, d_hidden, n_train",
        ),
        Preset(
            "pair-reverse-grokking", _PAIR_REVERSE, f"{_PAIR_NB}, cell 11 (open question, init-0.js)",
            "open question: a small model with no weight decay generalises, then switches to memorising",
        ),
        Preset(
            "pizza2023", _PIZZA,
            "Zhong, Liu, Tegmark & Andreas, NeurIPS 2023 (arXiv 2306.17844), fjzzq2002/pizza "
            "code/train-main.py, Model A (attn_coeff 0)",
            "clock vs pizza: a+b mod 59, 80% train, wd 2, constant attention (alpha 0): learns pizza",
        ),
        Preset(
            "clock2023", _CLOCK,
            "Zhong et al. 2023, fjzzq2002/pizza code/train-main.py, Model B (attn_coeff 1)",
            "clock vs pizza: pizza2023 with ordinary softmax attention (alpha 1): learns the clock",
        ),
        Preset(
            "pair-gen-mem-gen", _PAIR_GMG, f"{_PAIR_NB}, cell 12 (open question, init-1.js)",
            "open question: 70% data, wd 0.05: generalise, memorise, generalise again",
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
