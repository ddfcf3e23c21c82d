"""The grok-faster switches: Grokfast filters, StableMax, ⊥AdamW, Softmax Collapse, attn_coeff.

Oracles are hand-computed sequences and values, formulas evaluated with Python floats, and
invariants (orthogonality, norms, exact resume)."""

import math

import pytest
import torch
from torch.testing import assert_close

from groklab.cli import main
from groklab.config import Config, ConfigError, apply_overrides
from groklab.models.transformer import build_model
from groklab.train.grad_filter import EnsembleGradFilter
from groklab.train.loop import Member, Trainer
from groklab.train.losses import collapse_stats, collapsed, slot_loss, stablemax_s
from groklab.train.optim import EnsembleAdamW, orthogonal_gradients
from resume_helpers import assert_same_run, interrupt_and_resume


def _filtered(kind, grads, **kw):
    """Run the filter over a sequence of per-member gradient vectors ``[E, 2]``."""
    p = torch.zeros(grads[0].shape, requires_grad=True)
    f = EnsembleGradFilter({"w": p}, kind, **kw)
    out = []
    for g in grads:
        p.grad = g.clone()
        f.apply()
        out.append(p.grad.clone())
    return out


# --- Grokfast ---------------------------------------------------------------------------------
def test_ema_filter_matches_hand_computed_sequence():
    """alpha 0.5, lamb 2 on g = 4, 0, 8: h = 4, 2, 5 (h_1 = g_1), g + 2h = 12, 4, 18."""
    gs = [torch.tensor([[4.0, 1.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[8.0, 1.0]])]
    out = _filtered("ema", gs, alpha=0.5, lamb=2.0)
    assert_close(torch.stack(out)[:, 0, 0], torch.tensor([12.0, 4.0, 18.0]), rtol=0, atol=1e-6)
    assert_close(torch.stack(out)[:, 0, 1], torch.tensor([3.0, 3.0, 3.0]), rtol=0, atol=1e-6)


def test_ma_filter_matches_hand_computed_sequence_with_and_without_warmup():
    """window 2, lamb 1 on g = 1, 3, 5, 7: means of the last two (current included) 2, 4, 6."""
    gs = [torch.tensor([[v, 0.0]]) for v in (1.0, 3.0, 5.0, 7.0)]
    warm = torch.stack(_filtered("ma", gs, window=2, lamb=1.0, warmup=True))[:, 0, 0]
    assert_close(warm, torch.tensor([1.0, 3.0 + 2.0, 5.0 + 4.0, 7.0 + 6.0]), rtol=0, atol=1e-6)
    cold = torch.stack(_filtered("ma", gs, window=2, lamb=1.0, warmup=False))[:, 0, 0]
    assert_close(cold, torch.tensor([1.0 + 1.0, 3.0 + 2.0, 5.0 + 4.0, 7.0 + 6.0]), rtol=0, atol=1e-6)


def test_ma_filter_long_sequence_matches_a_deque_reference():
    """window 5 over 23 random gradients (the ring wraps four times) against the reference's
    ``deque(maxlen=w)`` mean, written out directly."""
    from collections import deque

    g = torch.Generator().manual_seed(0)
    gs = [torch.randn(1, 2, generator=g, dtype=torch.float64) for _ in range(23)]
    p = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    f = EnsembleGradFilter({"w": p}, "ma", window=5, lamb=5.0)
    dq = deque(maxlen=5)
    for x in gs:
        dq.append(x)
        want = x + 5.0 * sum(dq) / len(dq) if len(dq) == 5 else x
        p.grad = x.clone()
        f.apply()
        assert_close(p.grad, want, rtol=1e-12, atol=1e-12)


def test_filter_state_is_per_member():
    """Two members with different gradient streams: each matches its own one-member run."""
    a = [torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]]), torch.tensor([[0.5, 0.0]])]
    b = [torch.tensor([[-2.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[4.0, 2.0]])]
    for kind, kw in (("ema", {"alpha": 0.9}), ("ma", {"window": 2})):
        both = _filtered(kind, [torch.cat([x, y]) for x, y in zip(a, b, strict=True)], **kw)
        solo_a, solo_b = _filtered(kind, a, **kw), _filtered(kind, b, **kw)
        for t, (x, y) in enumerate(zip(solo_a, solo_b, strict=True)):
            assert_close(both[t], torch.cat([x, y]), rtol=0, atol=0)


def test_default_lamb_follows_grokfast_py():
    p = torch.zeros(1, 1, requires_grad=True)
    assert EnsembleGradFilter({"w": p}, "ema").lamb == 2.0
    assert EnsembleGradFilter({"w": p}, "ma").lamb == 5.0
    with pytest.raises(ValueError, match="not one of"):
        EnsembleGradFilter({"w": p}, "lowpass")


# --- StableMax ---------------------------------------------------------------------------------
def test_stablemax_s_is_the_formula():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.25, 2.0], dtype=torch.float64)
    want = torch.tensor([1 / 4, 1 / 1.5, 1.0, 1.25, 3.0], dtype=torch.float64)
    assert_close(stablemax_s(x), want, rtol=0, atol=1e-15)


def test_stablemax_loss_matches_hand_computed_value():
    """z = (1, -1, 0): s = (2, 0.5, 1), sum 3.5; the loss of class 0 is log(3.5 / 2)."""
    z = torch.tensor([[1.0, -1.0, 0.0]])
    loss = slot_loss(z, torch.tensor([0]), torch.float64, "stablemax")
    assert loss.dtype == torch.float64
    assert_close(loss, torch.tensor([math.log(1.75)], dtype=torch.float64), rtol=0, atol=1e-15)
    ce = slot_loss(z, torch.tensor([0]), torch.float64, "cross_entropy")
    want_ce = -1.0 + math.log(math.e + math.exp(-1.0) + 1.0)
    assert_close(ce, torch.tensor([want_ce], dtype=torch.float64), rtol=0, atol=1e-15)


def test_stablemax_log_is_taken_in_the_configured_precision():
    """z = (1e8, 0): the true loss log((1e8 + 2) / (1e8 + 1)) ~ 1e-8 survives in float64; in
    float32, 1e8 + 1 rounds to 1e8 and the loss is exactly 0."""
    z = torch.tensor([[1e8, 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    want = math.log1p(1 / (1e8 + 1))
    assert_close(slot_loss(z, y, torch.float64, "stablemax"), torch.tensor([want], dtype=torch.float64),
                 rtol=1e-6, atol=0)  # log(s) - log(sum s) cancels: ~1e-16 absolute error
    assert slot_loss(z, y, torch.float32, "stablemax").item() == 0.0


def test_stablemax_gradient_is_finite_and_matches_the_formula():
    """d/dz of -log p_0 for z = (0.5, -2): ds/dx is 1 (x >= 0) and 1/(1-x)^2 (x < 0)."""
    z = torch.tensor([[0.5, -2.0]], dtype=torch.float64, requires_grad=True)
    slot_loss(z, torch.tensor([0]), torch.float64, "stablemax").sum().backward()
    s0, s1 = 1.5, 1 / 3
    S = s0 + s1
    want = torch.tensor([[-1 / s0 + 1 / S, (1 / 9) / S]], dtype=torch.float64)
    assert_close(z.grad, want, rtol=0, atol=1e-14)
    z2 = torch.tensor([[1e30, 0.0, -1e30]], requires_grad=True)  # huge logits: no NaN from either branch
    slot_loss(z2, torch.tensor([1]), torch.float64, "stablemax").sum().backward()
    assert torch.isfinite(z2.grad).all()


# --- Softmax Collapse ----------------------------------------------------------------------------
def test_softmax_collapse_on_hand_made_logits():
    """exp(-20) = 2.1e-9 is absorbed by 1 in float32 (half-ulp 6e-8), not in float64 (1.1e-16);
    exp(-40) = 4.2e-18 is absorbed in both; exp(-10) = 4.5e-5 in neither."""
    z = torch.tensor([[0.0, -20.0], [0.0, -40.0], [0.0, -10.0], [3.0, 3.0]])
    assert collapsed(z, torch.float32).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert collapsed(z, torch.float64).tolist() == [0.0, 1.0, 0.0, 0.0]
    logits = z.view(1, 4, 1, 2)
    labels = torch.zeros(1, 4, 1, dtype=torch.long)
    nll = slot_loss(logits, labels, torch.float32)
    sc, zero = collapse_stats(logits, nll, torch.float32)
    assert_close(sc, torch.tensor([0.5]), rtol=0, atol=0)
    assert_close(zero, torch.tensor([0.5]), rtol=0, atol=0)  # the two collapsed slots have loss 0
    sc64, zero64 = collapse_stats(logits, slot_loss(logits, labels, torch.float64), torch.float64)
    assert_close(sc64, torch.tensor([0.25], dtype=torch.float64), rtol=0, atol=0)
    assert_close(zero64, torch.tensor([0.25], dtype=torch.float64), rtol=0, atol=0)


# --- ⊥AdamW ---------------------------------------------------------------------------------------
def test_orthogonal_gradient_is_orthogonal_with_the_same_norm():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 50, generator=g, dtype=torch.float64)
    grad = torch.randn(3, 50, generator=g, dtype=torch.float64) + 0.7 * w  # a real component along w
    (out,) = orthogonal_gradients([w], [grad])
    assert_close((out * w).sum(1), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)
    assert_close(out.norm(dim=1), grad.norm(dim=1), rtol=1e-12, atol=0)
    # hand case: w = (1, 0), g = (3, 4): g_perp = (0, 4), rescaled to |g| = 5
    (hand,) = orthogonal_gradients([torch.tensor([[1.0, 0.0]])], [torch.tensor([[3.0, 4.0]])])
    assert_close(hand, torch.tensor([[0.0, 5.0]]), rtol=0, atol=1e-6)


def test_perp_adamw_is_adamw_on_the_orthogonalised_gradient():
    g = torch.Generator().manual_seed(2)
    w0 = torch.randn(2, 4, 3, generator=g)
    grads = [torch.randn(2, 4, 3, generator=g) for _ in range(3)]
    kw = dict(lr=torch.tensor([1e-2, 3e-3]), weight_decay=torch.tensor([0.5, 0.0]), betas=(0.9, 0.98),
              eps=1e-8)
    p1, p2 = w0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
    perp, plain = EnsembleAdamW({"w": p1}, perp=True, **kw), EnsembleAdamW({"w": p2}, **kw)
    for gr in grads:
        p1.grad = gr.clone()
        (o,) = orthogonal_gradients([p2.detach().view(2, -1)], [gr.view(2, -1)])
        p2.grad = o.view_as(gr)
        perp.step(1.0)
        plain.step(1.0)
    assert_close(p1, p2, rtol=1e-6, atol=1e-7)


# --- the trainer ----------------------------------------------------------------------------------
TINY = {"task.p": "11", "model.d_model": "32", "model.d_mlp": "64", "train.steps": "30",
        "train.eval_every": "10", "train.checkpoint_every": "10"}
MLP_TINY = {"model.family": "mlp", "task.p": "11", "task.symmetric": "true", "task.frac_train": "0.5",
            "model.d_embed": "16", "model.d_hidden": "8", "train.steps": "30", "train.eval_every": "10",
            "train.checkpoint_every": "10"}

# the multi-position transformer (a phase-change task) and the single-logit parity MLP
ZOO_TINY = {"preset": "max-element", "train.steps": "30", "train.eval_every": "10",
            "train.checkpoint_every": "10"}
PARITY_TINY = {"preset": "pair-parity", "train.steps": "30", "train.eval_every": "10",
               "train.checkpoint_every": "10", "task.n_train": "200", "task.n_test": "200"}


def _cfg(base, **extra):
    return apply_overrides(Config(), {**base, **extra}).resolved()


SWITCHES = [{"train.grad_filter": "ema"}, {"train.grad_filter": "ma", "train.grad_filter_window": "4"},
            {"train.loss": "stablemax"}, {"train.optimizer": "perp_adamw"}]


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: "-".join(s.values()))
@pytest.mark.parametrize("base", [TINY, MLP_TINY, ZOO_TINY, PARITY_TINY],
                         ids=["transformer", "mlp", "multipos", "parity"])
def test_each_switch_trains_from_the_cli(tmp_path, base, switch):
    out = tmp_path / "run"
    args = [a for k, v in {**base, **switch}.items() for a in (f"--{k}", v)]
    assert main(["train", "--out", str(out), "--no-progress", *args]) == 0
    from groklab import load_run

    rows = load_run(out).metrics
    assert [r["step"] for r in rows] == [0, 10, 20, 30]
    for r in rows:
        assert 0.0 <= r["softmax_collapse"] <= 1.0 and 0.0 <= r["zero_loss_frac"] <= 1.0
        assert math.isfinite(r["train_loss"])
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_stablemax_training_loss_is_the_stablemax_of_the_logits(tmp_path):
    """The fast one-layer path with train.loss stablemax: the logged train loss equals StableMax
    CE recomputed from HookedTransformer.forward on the train split."""
    from groklab import load_run
    from groklab.tasks import make_data

    out = tmp_path / "run"
    cfg = _cfg(TINY, **{"train.loss": "stablemax"})
    Trainer([Member(cfg, out)], progress=False).run()
    run = load_run(out)
    data = make_data(run.config.task)
    with torch.no_grad():
        logits = run.model_at(30)(data.tokens[data.train_idx])[:, -1]
    want = slot_loss(logits, data.labels[data.train_idx], torch.float64, "stablemax").mean()
    assert_close(run.metrics[-1]["train_loss"], want.item(), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("switch", SWITCHES[:2], ids=["ema", "ma"])
def test_exact_resume_with_each_filter(tmp_path, monkeypatch, switch):
    """Killed at step 17, resumed from the step-10 checkpoint: bit-equal weights and metrics at
    step 30 to an uninterrupted run (the filter state travels in the optimizer checkpoint)."""
    from groklab import load_run

    cfg = _cfg(TINY, **switch)
    full, killed = interrupt_and_resume(cfg, tmp_path, 17, monkeypatch)
    assert_same_run(full, killed, [0, 10, 20, 30])
    a = load_run(full)
    # and the resumed filter really is the filter: without its state the run would differ
    no_filter = tmp_path / "plain"
    Trainer([Member(_cfg(TINY), no_filter)], progress=False).run()
    assert not torch.equal(load_run(no_filter).state_at(30)["embed.W_E"], a.state_at(30)["embed.W_E"])


def test_attn_coeff_zero_is_constant_attention_and_fast_path_agrees():
    """alpha = 0: every visible key gets weight 1 (the pizza repo's softmax * 0 + 1); the fast
    one-layer path gives the same logits as HookedTransformer.forward for alpha 0, 0.3 and 1."""
    from groklab.tasks import make_data
    from groklab.train.step import fast_last_logits

    for alpha in (0.0, 0.3, 1.0):
        cfg = _cfg(TINY, **{"model.attn_coeff": str(alpha)})
        model = build_model(cfg)
        tokens = make_data(cfg.task).tokens[:40]
        with torch.no_grad():
            out, cache = model.run_with_cache(tokens, names=["blocks.0.attn.hook_pattern"])
            pat = cache["blocks.0.attn.hook_pattern"]
            soft = torch.einsum("bqhe,bkhe->bhqk", *(model.run_with_cache(
                tokens, names=["blocks.0.attn.hook_q", "blocks.0.attn.hook_k"])[1][n]
                for n in ("blocks.0.attn.hook_q", "blocks.0.attn.hook_k"))) * model.blocks[0].attn.scale
            causal = torch.ones(3, 3, dtype=torch.bool).tril()
            want = alpha * soft.masked_fill(~causal, float("-inf")).softmax(-1) + (1 - alpha) * causal
            assert_close(pat, want, rtol=1e-5, atol=1e-6)
            params = {k: v.unsqueeze(0) for k, v in model.state_dict().items()}
            fast = fast_last_logits(cfg, params, tokens.unsqueeze(0))[0]
        assert_close(fast, out[:, -1], rtol=1e-4, atol=1e-4)


def test_bad_switch_values_are_refused():
    with pytest.raises(ConfigError, match="not one of"):
        apply_overrides(Config(), {"train.grad_filter": "lowpass"})
    with pytest.raises(ConfigError, match="attn_coeff"):
        _cfg(TINY, **{"model.attn_coeff": "1.5"})
    with pytest.raises(ConfigError, match="grad_filter_alpha"):
        _cfg(TINY, **{"train.grad_filter_alpha": "1.0"})


def test_stop_test_acc_stops_at_the_first_row_that_reaches_it(tmp_path):
    """train.stop_test_acc: the stopped run is the uninterrupted run's rows up to (and including)
    the first one with test_acc >= the threshold, checkpointed there."""
    from groklab import load_run

    full = tmp_path / "full"
    Trainer([Member(_cfg(TINY), full)], progress=False).run()
    rows = load_run(full).metrics
    thr = rows[2]["test_acc"]
    first = next(i for i, r in enumerate(rows) if r["test_acc"] >= thr)
    out = tmp_path / "stopped"
    Trainer([Member(_cfg(TINY, **{"train.stop_test_acc": str(thr)}), out)], progress=False).run()
    run = load_run(out)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rs]  # noqa: E731
    assert strip(run.metrics) == strip(rows[:first + 1])
    assert run.steps[-1] == rows[first]["step"]


def test_a_sweep_member_stopped_by_the_trainer_names_the_key_that_stopped_it():
    from groklab.sweep.worker import _early_stop_key

    acc = _cfg(TINY, **{"train.stop_test_acc": "0.99"}).train
    loss = _cfg(TINY, **{"train.stop_test_loss": "0.01"}).train
    assert _early_stop_key(acc, {"test_acc": 0.995, "test_loss": 0.5}) == "stop_test_acc"
    assert _early_stop_key(loss, {"test_acc": 0.5, "test_loss": 0.001}) == "stop_test_loss"
    assert _early_stop_key(acc, {"test_acc": 0.5, "test_loss": 0.001}) == "stop_test_loss"
