"""The multi-position fast path (``models.multipos``) against the generic vmapped forward.

Logits and loss gradients of ``multipos_logits`` / ``multipos_loss`` must equal
``generic_logits`` + ``slot_nll`` (``HookedTransformer.forward(tokens, positions)`` per member)
in float64, for digits5-like, induction-like (doubled residual or not), max-element-like and
deeper models, single members and ensembles; and a Trainer step with the fast path must give
the weights of the same step with it disabled. Every test runs twice: attention by the fused
kernel (``models.attn_kernel``) and by the batched GEMMs it replaces.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from groklab.models import attn_kernel, multipos
from groklab.models.multipos import has_multipos_path, multipos_logits, multipos_loss
from groklab.models.transformer import build_model
from groklab.presets import get_preset
from groklab.tasks import Batch, build_task
from groklab.train.loop import Member, Trainer
from groklab.train.step import generic_logits, slot_nll


@pytest.fixture(autouse=True, params=["kernel", "gemm"])
def attention_path(request, monkeypatch):
    """Run each test with the fused attention kernel and with the batched-GEMM attention."""
    if request.param == "kernel" and not attn_kernel.available():
        pytest.skip("the fused attention kernel could not be built here (no C++ compiler?)")
    monkeypatch.setattr(multipos, "USE_KERNEL", request.param == "kernel")
    return request.param


def _setup(preset: str, E: int, N: int, biases: bool = False, **model):
    """Config, member-0 module, stacked float64 params and a stacked batch of N examples each."""
    cfg = get_preset(preset)
    if hasattr(cfg.task, "rng"):  # groklab's draws: any model shape (the notebook's need attention only)
        cfg = replace(cfg, task=replace(cfg.task, rng="torch"))
    cfg = replace(cfg, model=replace(cfg.model, **model)).resolved()
    models = [build_model(cfg, seed=s).double() for s in range(E)]
    if biases:  # non-zero biases, so that every bias path is exercised
        with torch.no_grad():
            for e, mm in enumerate(models):
                g = torch.Generator().manual_seed(e)
                for name, prm in mm.named_parameters():
                    if name.rsplit(".", 1)[-1].startswith("b_"):
                        prm.copy_(torch.randn(prm.shape, generator=g, dtype=prm.dtype) * 0.3)
    task = build_task(cfg.task)
    g = torch.Generator().manual_seed(1)
    batch = Batch.stack([task.sample(N, g) for _ in range(E)])
    params = {k: torch.stack([dict(mm.named_parameters())[k].detach() for mm in models])
              for k, _ in models[0].named_parameters()}
    return cfg, models[0], params, batch


CASES = {
    # name: (preset, E, N, biases, model overrides)
    "digits5": ("digits5", 1, 20, False, {}),
    "digits5-big-batch": ("digits5", 1, 80, False, {}),  # (position, token) tables at the slots too
    "digits5-bias-gelu-E3": ("digits5", 3, 30, True, {"attn_bias": True, "unembed_bias": True,
                                                       "act_fn": "gelu"}),
    "induction": ("induction", 1, 24, False, {}),
    "induction-standard": ("induction", 1, 24, False, {"doubled_residual": False}),
    "induction-E3-bias": ("induction", 3, 12, True, {"attn_bias": True, "unembed_bias": True}),
    "induction-3-layers": ("induction", 2, 10, False, {"n_layers": 3}),
    "max-element-E3": ("max-element", 3, 40, False, {}),
    "2-layer-mlp": ("digits5", 2, 16, True, {"n_layers": 2, "act_fn": "quadratic", "attn_bias": True,
                                              "d_model": 32, "d_mlp": 48, "n_heads": 2, "d_head": 8}),
    "induction-mlp": ("induction", 1, 8, True, {"attn_only": False, "doubled_residual": False,
                                                 "d_mlp": 24}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_loss_and_grads_match_generic(case):
    preset, E, N, biases, model = CASES[case]
    cfg, module, params, b = _setup(preset, E, N, biases, **model)
    assert has_multipos_path(cfg)
    ref_p = {k: v.clone().requires_grad_() for k, v in params.items()}
    fast_p = {k: v.clone().requires_grad_() for k, v in params.items()}
    upstream = torch.linspace(0.5, 2.0, E, dtype=torch.float64)  # per-member d(objective)/d(loss)

    ref_logits = generic_logits(module, ref_p, b.tokens, b.positions)
    ref_loss = slot_nll(ref_logits, b.labels, torch.float64).mean((1, 2))
    (ref_loss * upstream).sum().backward()
    loss, logits = multipos_loss(cfg, fast_p, b.tokens, b.positions, b.labels, torch.float64)
    (loss * upstream).sum().backward()

    torch.testing.assert_close(logits, ref_logits.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-12, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(multipos_logits(cfg, params, b.tokens, b.positions), logits)
    scale = max(float(p.grad.abs().max()) for p in ref_p.values())
    for k, p in fast_p.items():
        torch.testing.assert_close(p.grad, ref_p[k].grad, rtol=1e-9, atol=1e-12 * scale, msg=k)


def test_float32_logits_close():
    """The default float32 parameters: same logits to float32 rounding."""
    cfg, module, params, b = _setup("induction", 2, 16)
    params = {k: v.float() for k, v in params.items()}
    module = module.float()
    ref = generic_logits(module, params, b.tokens, b.positions)
    torch.testing.assert_close(multipos_logits(cfg, params, b.tokens, b.positions), ref,
                               rtol=1e-4, atol=1e-4)


def test_float64_loss_of_float32_logits_keeps_float64_precision():
    """The default float32 parameters with the float64 loss: the loss and d loss / d logits of
    ``multipos_loss``'s NLL node equal the float64 log-softmax of the same float32 logits to
    1e-5 relative, also where the model is sure (losses down to 1e-9)."""
    from groklab.models.multipos import _SlotNLL

    g = torch.Generator().manual_seed(1)
    E, N, K, V = 2, 8, 5, 23
    labels = torch.randint(0, V, (E, N, K), generator=g)
    logits = torch.randn(E, N, K, V, generator=g)
    margin = torch.linspace(0, 22, N * K).view(1, N, K, 1).expand(E, -1, -1, -1)  # unsure to sure
    logits.scatter_add_(-1, labels.unsqueeze(-1), margin)
    logits.requires_grad_(True)
    loss = _SlotNLL.apply(logits, labels, torch.float64)
    d_loss = torch.tensor([1.0, -3.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad(loss, logits, d_loss)
    x = logits.detach().double().requires_grad_(True)
    nll = -x.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert nll.min() < 1e-8
    ref = nll.mean((1, 2))
    (ref_grad,) = torch.autograd.grad(ref, x, d_loss)
    assert loss.dtype == torch.float64 and grad.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-30)
    # a float32 loss dtype keeps the plain float32 log-softmax (its rounding is what it asks for)
    loss32 = _SlotNLL.apply(logits, labels, torch.float32)
    ref32 = -logits.detach().log_softmax(-1).gather(-1, labels.unsqueeze(-1)).mean((1, 2, 3))
    assert loss32.dtype == torch.float32
    torch.testing.assert_close(loss32, ref32, rtol=1e-6, atol=1e-7)


def _trainer_pair(cfg, tmp_path):
    """Two identical float64 Trainers, the second with the fast path disabled."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # float64 parameters, so that one step compares tightly
    try:
        fast = Trainer([Member(cfg, tmp_path / "fast")], progress=False)
        slow = Trainer([Member(cfg, tmp_path / "slow")], progress=False)
    finally:
        torch.set_default_dtype(old)
    slow.multipos = False
    assert fast.multipos and not fast.fast
    return fast, slow


@pytest.mark.parametrize("preset, task, train", [
    ("digits5", {"n_train": 40}, {}),
    ("induction-infinite", {}, {"batch_size": 6}),
])
def test_trainer_step_same_weights(preset, task, train, tmp_path):
    cfg = get_preset(preset)
    cfg = replace(cfg, task=replace(cfg.task, **task), train=replace(cfg.train, warmup_steps=1, **train))
    fast, slow = _trainer_pair(cfg, tmp_path)
    for tr in (fast, slow):
        for step in (1, 2):  # full learning rate (warm-up of one step)
            tr.train_step(step)
    for k, p in fast.params.items():
        torch.testing.assert_close(p, slow.params[k], rtol=1e-9, atol=1e-12, msg=k)
    loss_f, stats_f = fast._backward(3, want_stats=True)
    loss_s, stats_s = slow._backward(3, want_stats=True)
    torch.testing.assert_close(loss_f, loss_s, rtol=1e-12, atol=0)
    for key in stats_s:
        torch.testing.assert_close(stats_f[key], stats_s[key], rtol=1e-10, atol=1e-12)
    test = fast.test_batch(3)
    torch.testing.assert_close(fast.logits(test), slow.logits(test), rtol=1e-10, atol=1e-12)
