"""PAIR's MLP family (``models.mlp``) against the plain PyTorch oracle (``naive_mlp.py``).

* forward: ``MLPModel`` and the ensemble path ``mlp_logits`` (collapsed table lookups) give the
  plain module's logits and hidden activations on the same weights, every variant (tied, untied,
  collapsed_in, collapsed_out, both collapsed, the fixed circle, x^2, sparse parity), in float64
  (``MLPModel`` on bits: float32, the dtype it feeds the bits in);
* training: the ``Trainer`` on a small config (p=11) gives the same loss at each of its first
  steps and the same weights after them as the plain loop with ``torch.optim.AdamW`` (L2) or
  ``grad += wd sign(w)`` + ``torch.optim.Adam`` (L1), with PAIR's CE / p or the batch mean;
* ensembles: 4 members trained as one batched run (``--seeds``, ``--sweep``) equal each member's
  solo ``Trainer`` run to 1e-5, weights and metrics.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from groklab import load_run
from groklab.cli import main
from groklab.config import Config, MLPConfig, TaskConfig, TrainConfig
from groklab.models.mlp import MLPModel, mlp_logits
from groklab.tasks import SparseParityConfig
from groklab.train.loop import Member, Trainer
from reference import naive_mlp as nm
from resume_helpers import assert_same_run, interrupt_and_resume

P = 11
VARIANTS = {
    "tied": {},
    "untied": {"embed": "untied"},
    "collapsed_in": {"collapsed_in": True},
    "collapsed_out": {"collapsed_out": True},
    "both": {"collapsed_in": True, "collapsed_out": True},
    "untied_collapsed_in": {"embed": "untied", "collapsed_in": True},
    "circle": {"embed": "circle", "d_embed": 2, "circle_freq": 2},
    "quadratic": {"act_fn": "quadratic"},
}


def _pair_config(variant: str = "tied", steps: int = 30, **train) -> Config:
    model = {"d_embed": 16, "d_hidden": 8, **VARIANTS[variant]}
    return Config(
        task=TaskConfig(p=P, frac_train=0.5, data_seed=3, split="numpy_permutation", symmetric=True),
        model=MLPConfig(**model),
        train=TrainConfig(**{"steps": steps, "lr": 1e-2, "weight_decay": 1.0, "warmup_steps": 0, "seed": 7,
                             "eval_every": 10, "checkpoint_every": steps, **train}),
    ).resolved()


def _parity_config(steps: int = 30, **train) -> Config:
    return Config(
        task=SparseParityConfig(n_bits=10, k=3, n_train=96, n_test=64, data_seed=2),
        model=MLPConfig(d_embed=1, d_hidden=16, collapsed_in=True, collapsed_out=True),
        train=TrainConfig(**{"steps": steps, "lr": 1e-2, "weight_decay": 1e-2, "warmup_steps": 0, "seed": 5,
                             "eval_every": 10, "checkpoint_every": steps, "regularization": "l1", **train}),
    ).resolved()


def _naive_pair(cfg: Config) -> nm.NaiveMLP:
    m = cfg.model
    return nm.NaiveMLP(cfg.task.p, m.d_embed, m.d_hidden, act=m.act_fn, embed=m.embed,
                       collapsed_in=m.collapsed_in, collapsed_out=m.collapsed_out, circle_freq=m.circle_freq)


def _loaded(naive, state, dtype):
    naive.load_state_dict({k: v.detach().clone() for k, v in state.items()})  # strict: same names
    return naive.to(dtype)


# --- forward -------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pair_forward_matches_naive(variant):
    cfg = _pair_config(variant)
    model = MLPModel(cfg).init_weights(11).double()
    naive = _naive_pair(cfg)
    if variant == "circle":  # groklab's fixed embedding is the oracle's gen_fixed_embed
        torch.testing.assert_close(model.embed.W_E.float(), naive.embed.W_E, rtol=0, atol=1e-7)
    naive = _loaded(naive, model.state_dict(), torch.float64)
    a, b = torch.arange(P).repeat_interleave(P), torch.arange(P).repeat(P)  # the whole grid
    tokens = torch.stack([a, b, torch.full_like(a, P)], 1)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, torch.full((P * P, 1), 2))
        ref = naive(a, b)
        hidden = naive.hidden(a, b)
    assert logits.shape == (P * P, 1, P)
    torch.testing.assert_close(logits[:, 0], ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cache["mlp.hook_post"], hidden, rtol=1e-12, atol=1e-12)


def _ensemble_state(cfg: Config, seeds: list[int], dtype=torch.float64) -> tuple[dict, list]:
    models = [MLPModel(cfg).init_weights(s).to(dtype) for s in seeds]
    params = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models])
              for k, _ in models[0].named_parameters()}
    return params, models


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pair_ensemble_logits_match_naive(variant):
    """``mlp_logits`` (collapsed tables, row lookups) on 3 members, each with its own pairs."""
    cfg = _pair_config(variant)
    params, models = _ensemble_state(cfg, [0, 1, 2])
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, P, (3, 40), generator=g), torch.randint(0, P, (3, 40), generator=g)
    tokens = torch.stack([a, b, torch.full_like(a, P)], -1)  # [E, N, 3]
    with torch.no_grad():
        logits = mlp_logits(cfg, params, tokens)
        assert logits.shape == (3, 40, 1, P)
        for e, mdl in enumerate(models):
            ref = _loaded(_naive_pair(cfg), mdl.state_dict(), torch.float64)(a[e], b[e])
            torch.testing.assert_close(logits[e, :, 0], ref, rtol=1e-12, atol=1e-12)


def test_parity_forward_matches_naive():
    """One logit z; groklab's class logits are ``(0, z)``, so its CE is the oracle's BCE."""
    cfg = _parity_config()
    g = torch.Generator().manual_seed(1)
    bits = torch.randint(0, 2, (64, 10), generator=g)
    labels = bits[:, :3].sum(1) % 2
    model = MLPModel(cfg).init_weights(3)  # float32: it feeds the bits in as float32
    naive = _loaded(nm.NaiveParityMLP(10, 16), model.state_dict(), torch.float32)
    with torch.no_grad():
        logits = model(bits, torch.full((64, 1), 9))[:, 0]
        z = naive(bits)
    torch.testing.assert_close(logits[:, 1], z, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits[:, 0], torch.zeros(64), rtol=0, atol=0)
    ce = torch.nn.functional.cross_entropy(logits.double(), labels)
    torch.testing.assert_close(ce, nm.parity_loss(z, labels), rtol=1e-7, atol=0)

    params, models = _ensemble_state(cfg, [3, 4])  # the ensemble path in float64
    ens = mlp_logits(cfg, params, torch.stack([bits, 1 - bits]))
    for e, bb in enumerate((bits, 1 - bits)):
        ref = _loaded(nm.NaiveParityMLP(10, 16), models[e].state_dict(), torch.float64)(bb)
        torch.testing.assert_close(ens[e, :, 0, 1], ref, rtol=1e-12, atol=1e-12)


# --- training ------------------------------------------------------------------------------------


def _trainer_run(cfg: Config, tmp_path) -> tuple[list[float], dict, dict, Trainer]:
    """(loss before each step, initial state, final state, the trainer) of a solo ``Trainer``
    stepped ``train.steps`` times (no run directory is written)."""
    tr = Trainer([Member(cfg, tmp_path / "run")], progress=False)
    init = {k: v.detach().clone() for k, v in tr.member_state(0).items()}
    losses = [tr.train_step(s)[0].item() for s in range(cfg.train.steps)]
    return losses, init, {k: v.detach() for k, v in tr.member_state(0).items()}, tr


TRAIN_CASES = [("tied", "l2", "class_mean"), ("tied", "l2", "mean"), ("tied", "l1", "class_mean"),
               ("tied", "l1", "mean"), ("untied", "l2", "class_mean"), ("collapsed_in", "l2", "class_mean"),
               ("circle", "l2", "class_mean"), ("quadratic", "l1", "mean")]


@pytest.mark.parametrize("variant,reg,reduction", TRAIN_CASES)
def test_pair_training_matches_naive_loop(variant, reg, reduction, tmp_path):
    wd = 1.0 if reg == "l2" else 1e-2
    cfg = _pair_config(variant, steps=30, regularization=reg, loss_reduction=reduction, weight_decay=wd)
    losses, init, final, tr = _trainer_run(cfg, tmp_path)
    train = tr.train_set
    a, b, y = train.tokens[0, :, 0], train.tokens[0, :, 1], train.labels[0, :, 0]
    assert len(a) == int(0.5 * P * (P + 1) / 2) and bool((a <= b).all())
    naive = _loaded(_naive_pair(cfg), init, torch.float32)
    ref = nm.train(naive, lambda m: nm.pair_loss(m(a, b), y, reduction), cfg.train.steps, cfg.train.lr, wd,
                   (cfg.train.beta1, cfg.train.beta2), cfg.train.eps, reg)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref), rtol=1e-5, atol=1e-7)
    if reduction == "class_mean":  # PAIR's initial loss is ~ ln p / p
        assert 0.5 * torch.log(torch.tensor(P)) / P < ref[0] < 3 * torch.log(torch.tensor(P)) / P
    moved = False
    for k, v in naive.state_dict().items():
        torch.testing.assert_close(final[k], v, rtol=1e-5, atol=1e-6, msg=k)
        moved |= not torch.allclose(v, init[k], rtol=0, atol=1e-3)
    assert moved


@pytest.mark.parametrize("reg", ["l1", "l2"])
def test_parity_training_matches_naive_loop(reg, tmp_path):
    wd = 1e-2 if reg == "l1" else 0.5
    cfg = _parity_config(steps=30, regularization=reg, weight_decay=wd)
    losses, init, final, tr = _trainer_run(cfg, tmp_path)
    bits, y = tr.train_set.tokens[0], tr.train_set.labels[0, :, 0]
    naive = _loaded(nm.NaiveParityMLP(10, 16), init, torch.float32)
    ref = nm.train(naive, lambda m: nm.parity_loss(m(bits), y), cfg.train.steps, cfg.train.lr, wd,
                   (cfg.train.beta1, cfg.train.beta2), cfg.train.eps, reg)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref), rtol=1e-5, atol=1e-7)
    for k, v in naive.state_dict().items():
        torch.testing.assert_close(final[k], v, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("task", ["pair", "parity"])
def test_float64_model_trains_like_the_naive_loop_in_float64(task, tmp_path):
    """``model.dtype: float64`` (PAIR's notebook computes in float64): the weights, the forward and
    the optimizer state are float64, the start is the float32 draw widened, and a solo run (the
    autograd path) and a 2-member ensemble (the fused loss of ``models.mlp_fused``) both follow
    the plain float64 loop to 1e-10, far inside float32's reach."""
    make = _pair_config if task == "pair" else _parity_config
    kw = {"loss_reduction": "class_mean"} if task == "pair" else {}
    cfg = make(steps=30, **kw)
    cfg64 = replace(cfg, model=replace(cfg.model, dtype="float64"))
    init32 = Trainer([Member(cfg, tmp_path / "f32")], progress=False).member_state(0)
    losses, init, final, tr = _trainer_run(cfg64, tmp_path / "f64")
    assert {v.dtype for v in init.values()} == {torch.float64}
    assert {v.dtype for v in tr.opt.state_tensors().values()} == {torch.float64}
    for k, v in init32.items():
        torch.testing.assert_close(init[k], v.detach().double(), rtol=0, atol=0, msg=k)
    train = tr.train_set
    if task == "pair":
        a, b, y = train.tokens[0, :, 0], train.tokens[0, :, 1], train.labels[0, :, 0]
        naive = _loaded(_naive_pair(cfg), init, torch.float64)
        loss_fn = lambda m: nm.pair_loss(m(a, b), y, "class_mean")  # noqa: E731
    else:
        bits, y = train.tokens[0], train.labels[0, :, 0]
        naive = _loaded(nm.NaiveParityMLP(10, 16), init, torch.float64)
        loss_fn = lambda m: nm.parity_loss(m(bits.double()), y)  # noqa: E731
    t = cfg.train
    ref = nm.train(naive, loss_fn, t.steps, t.lr, t.weight_decay, (t.beta1, t.beta2), t.eps, t.regularization)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref), rtol=1e-10, atol=1e-13)
    for k, v in naive.state_dict().items():
        torch.testing.assert_close(final[k], v, rtol=1e-10, atol=1e-12, msg=k)
    seeds = [replace(cfg64, train=replace(cfg64.train, seed=s)) for s in (cfg.train.seed, 99)]
    ens = Trainer([Member(c, tmp_path / f"e{i}") for i, c in enumerate(seeds)], progress=False)
    assert ens.fused_mlp
    for s in range(t.steps):
        ens.train_step(s)
    for k, v in naive.state_dict().items():
        torch.testing.assert_close(ens.member_state(0)[k].detach(), v, rtol=1e-10, atol=1e-12, msg=k)


# --- ensembles -----------------------------------------------------------------------------------

TINY_PAIR = ["--task.p", str(P), "--task.frac_train", "0.5", "--model.d_embed", "16", "--model.d_hidden", "8",
             "--train.lr", "1e-2"]
TINY_PARITY = ["--task.n_bits", "10", "--task.n_train", "96", "--task.n_test", "64", "--model.d_hidden", "16",
               "--train.lr", "1e-2"]
RUN = ["--train.steps", "40", "--train.eval_every", "5", "--train.checkpoint_every", "20", "--no-progress"]
ENSEMBLES = [
    ("pair2023", TINY_PAIR, ["--seeds", "0-3"]),
    ("pair2023", TINY_PAIR, ["--sweep", "train.weight_decay=0.1,0.3,1,3"]),
    ("pair-parity", TINY_PARITY, ["--sweep", "train.weight_decay=1e-4,1e-3,1e-2,3e-2"]),
]


@pytest.mark.parametrize("preset,tiny,axis", ENSEMBLES,
                         ids=["pair-seeds", "pair-sweep-wd", "parity-sweep-wd-l1"])
def test_ensemble_members_match_solo_runs(preset, tiny, axis, tmp_path):
    ens = tmp_path / "ens"
    assert main(["train", "--preset", preset, "--out", str(ens), *axis, *tiny, *RUN]) == 0
    runs = sorted(p for p in ens.iterdir() if p.is_dir())
    assert len(runs) == 4
    configs = [load_run(r).config for r in runs]
    assert len({(c.train.seed, c.train.weight_decay) for c in configs}) == 4
    for run, cfg in zip(runs, configs, strict=True):
        solo = Trainer([Member(cfg, tmp_path / "solo" / run.name)], progress=False)
        solo.run()
        member = load_run(run)
        assert [r["step"] for r in member.metrics] == [r["step"] for r in solo.metrics[0]]
        for rm, rs in zip(member.metrics, solo.metrics[0], strict=True):
            for key in ("train_loss", "test_loss", "train_acc", "test_acc", "sum_sq_weights"):
                torch.testing.assert_close(rm[key], rs[key], rtol=1e-5, atol=1e-7, msg=key)
        state = member.state_at(member.steps[-1])
        for k, v in solo.member_state(0).items():
            torch.testing.assert_close(state[k], v.detach(), rtol=1e-5, atol=1e-6, msg=k)


def test_ensemble_trainer_with_every_batchable_key(tmp_path):
    """One batched Trainer whose 4 members differ in seed, lr, weight decay and data seed."""
    base = _pair_config("tied", steps=25, loss_reduction="class_mean")
    settings = [(0, 1e-2, 1.0, 3), (1, 3e-3, 0.3, 3), (2, 1e-2, 3.0, 4), (3, 2e-2, 0.0, 5)]
    cfgs = [replace(base, task=replace(base.task, data_seed=d),
                    train=replace(base.train, seed=s, lr=lr, weight_decay=wd)) for s, lr, wd, d in settings]
    ens = Trainer([Member(c, tmp_path / f"e{i}") for i, c in enumerate(cfgs)], progress=False)
    losses = torch.stack([ens.train_step(s) for s in range(25)])  # [steps, E]
    for e, c in enumerate(cfgs):
        solo_losses, _, final, _ = _trainer_run(c, tmp_path / f"s{e}")
        torch.testing.assert_close(losses[:, e], torch.tensor(solo_losses, dtype=losses.dtype),
                                   rtol=1e-5, atol=1e-8)
        for k, v in final.items():
            torch.testing.assert_close(ens.member_state(e)[k].detach(), v, rtol=1e-5, atol=1e-6, msg=k)


# --- groklab bench --pair ------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["pair", "parity"])
def test_bench_plain_runs_train_the_same_model(which, tmp_path):
    """``groklab bench --pair``'s plain side (``bench_pair.PlainRuns``: one module and one
    ``torch.optim`` per run, written apart from this oracle) follows the Trainer, so the bench
    compares equal work."""
    from groklab.bench_pair import PlainRuns

    cfg = _pair_config("tied", steps=10, loss_reduction="class_mean") if which == "pair" else \
        _parity_config(steps=10)
    tr = Trainer([Member(replace(cfg, train=replace(cfg.train, seed=s)), tmp_path / f"m{s}") for s in (0, 1)],
                 progress=False)
    init = [{k: v.detach().clone() for k, v in tr.member_state(e).items()} for e in (0, 1)]
    plain = PlainRuns(cfg, init, tr.train_set.tokens[0], tr.train_set.labels[0, :, 0])
    for s in range(10):
        tr.train_step(s)
        plain()
    names = {"embed.W_E": "W_E", "mlp.W_in": "W_in", "mlp.W_out": "W_out"}
    for e, model in enumerate(plain.models):
        for k, v in tr.member_state(e).items():
            torch.testing.assert_close(getattr(model, names[k]).detach(), v.detach(), rtol=1e-5, atol=1e-6,
                                       msg=k)


def test_float64_run_resumes_exactly(tmp_path, monkeypatch):
    """A ``model.dtype: float64`` run killed mid-way resumes bit for bit from float64
    checkpoints (weights and Adam state are saved and loaded in float64)."""
    cfg = _pair_config(steps=40, checkpoint_every=10, loss_reduction="class_mean")
    cfg = replace(cfg, model=replace(cfg.model, dtype="float64"))
    full, killed = interrupt_and_resume(cfg, tmp_path, die_at=25, monkeypatch=monkeypatch)
    assert_same_run(full, killed, [0, 10, 20, 30, 40])
    assert {v.dtype for v in load_run(killed).state_at(40).values()} == {torch.float64}
