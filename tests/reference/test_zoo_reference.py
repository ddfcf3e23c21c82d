"""The phase-change models against their plain notebook-style versions (``naive_zoo.py``).

Same weights, same batch (groklab's task ``sample``): for 5-digit addition (small: d_model 32),
repeated subsequences (2 layers, the doubled residual) and max element,

* ``HookedTransformer.forward(tokens, positions)`` and the per-slot loss and every gradient
  equal the plain model's, in float64 (tight tolerances);
* the ``Trainer`` (whatever path it picks: the generic vmapped forward, the one-layer table trick
  for max element's full batch, or a faster multi-position path) gives the same loss at each of
  its first steps and the same weights after them as ``torch.optim.AdamW`` + ``LambdaLR`` on
  the plain model, in float32.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from groklab.models.transformer import build_model
from groklab.presets import get_preset
from groklab.tasks import build_task, generator
from groklab.train.loop import Member, Trainer
from groklab.train.step import slot_nll
from reference import naive_zoo as nz


def _config(preset: str, infinite: bool = False):
    cfg = get_preset(preset)
    if preset.startswith("digits5"):  # small, so that the float64 checks stay fast
        cfg = replace(cfg, model=replace(cfg.model, d_model=32, d_mlp=128))
    n_train = 48 if preset.startswith("induction") else 64
    task = replace(cfg.task, n_train=None if infinite else n_train)
    batch = 32 if (infinite or preset.startswith("induction")) else None
    return replace(cfg, task=task, train=replace(cfg.train, batch_size=batch)).resolved()


def _plain_loss(preset: str, logits, batch, dtype: torch.dtype):
    """The notebook's loss on the plain model's logits (the induction one: the true mean)."""
    if preset.startswith("digits5"):
        return nz.digits_loss(logits, batch.tokens)
    if preset.startswith("max"):
        return nz.max_element_loss(logits, batch.labels[:, 0])
    mask = nz.mask_from_positions(batch.positions, batch.tokens.shape[1])
    return nz.induction_loss(logits, batch.tokens, mask, dtype=dtype)


def _positive_biases(model, seed: int = 5):
    """Non-zero MLP biases, so that every term is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("b_"):
                prm.add_(0.1 * torch.randn(prm.shape, generator=g, dtype=prm.dtype))
    return model


PRESETS = ["digits5", "induction", "max-element"]


@pytest.mark.parametrize("preset", PRESETS)
def test_batch_matches_the_notebook_loss_positions(preset):
    """The task's loss slots are the notebook's: the answer tokens (digits), next tokens of the
    masked positions (induction), the last position (max element)."""
    cfg = _config(preset)
    b = build_task(cfg.task).sample(16, generator(0, 9))
    rows = torch.arange(16)[:, None]
    if preset == "digits5":
        torch.testing.assert_close(b.positions, torch.arange(11, 17).expand(16, 6))
        torch.testing.assert_close(b.labels, b.tokens[:, 12:18])
    elif preset == "induction":
        assert b.positions.shape == (16, 30)
        torch.testing.assert_close(b.labels, b.tokens[rows, b.positions + 1])
    else:
        torch.testing.assert_close(b.positions, torch.full((16, 1), cfg.model.n_ctx - 1))
        torch.testing.assert_close(b.labels[:, 0] + 12, b.tokens.max(1).values)


@pytest.mark.parametrize("preset", PRESETS)
def test_forward_loss_and_gradients_match_plain_float64(preset):
    cfg = _config(preset)
    model = _positive_biases(build_model(cfg)).double()
    batch = build_task(cfg.task).sample(32, generator(cfg.task.data_seed, 7))
    dtype = torch.float64

    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    plain = nz.from_groklab_state(sd, doubled_residual=cfg.model.doubled_residual)
    full = plain(batch.tokens)  # every position
    ref_loss = _plain_loss(preset, full, batch, dtype)
    ref_loss.backward()
    ref_grads = nz.to_groklab_state(plain, grads=True)
    # the state dict round-trips through the notebook layouts
    for k, v in nz.to_groklab_state(plain).items():
        torch.testing.assert_close(v, sd[k], rtol=0, atol=0, msg=k)

    logits = model(batch.tokens, batch.positions)  # [N, K, V]
    rows = torch.arange(len(batch))[:, None]
    torch.testing.assert_close(logits, full[rows, batch.positions].detach(), rtol=1e-10, atol=1e-10)
    loss = slot_nll(logits, batch.labels, dtype).mean()
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-10, atol=0)
    loss.backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    assert set(grads) == set(ref_grads)
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    for k, g in grads.items():
        torch.testing.assert_close(g, ref_grads[k], rtol=1e-8, atol=1e-12 * scale, msg=k)


def test_induction_scaled_loss_is_85_over_84_of_the_true_mean():
    cfg = _config("induction")
    model = build_model(cfg)
    batch = build_task(cfg.task).sample(8, generator(1, 3))
    plain = nz.from_groklab_state({k: v.detach() for k, v in model.state_dict().items()},
                                  doubled_residual=True)
    with torch.no_grad():
        logits = plain(batch.tokens)
    mask = nz.mask_from_positions(batch.positions, 85)
    assert float(mask.sum()) == 8 * 30 and float(mask[:, -1].sum()) == 0
    true = nz.induction_loss(logits, batch.tokens, mask, dtype=torch.float64)
    torch.testing.assert_close(nz.induction_loss_scaled(logits, batch.tokens, mask, dtype=torch.float64),
                               true * 85 / 84, rtol=1e-12, atol=0)
    # the true mean is the mean of the 30 per-slot NLLs
    nll = nz.per_token_nll(logits, batch.positions, batch.labels, torch.float64)
    torch.testing.assert_close(true, nll.mean(), rtol=1e-12, atol=0)


def test_doubled_residual_matters():
    """The plain induction model really doubles: without it the logits differ."""
    cfg = _config("induction")
    sd = {k: v.detach() for k, v in build_model(cfg).state_dict().items()}
    tokens = build_task(cfg.task).sample(4, generator(1, 4)).tokens
    with torch.no_grad():
        doubled = nz.from_groklab_state(sd, doubled_residual=True)(tokens)
        standard = nz.from_groklab_state(sd, doubled_residual=False)(tokens)
        x = sd["embed.W_E"][tokens] + sd["pos_embed.W_pos"]
        assert not torch.allclose(doubled, standard, atol=1e-3)
        model = build_model(cfg)
        torch.testing.assert_close(model(tokens), doubled, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.blocks[0](x), 2 * x + model.blocks[0].attn(x))


CASES = [("digits5", False), ("digits5", True), ("induction", False), ("induction", True),
         ("max-element", False), ("max-element", True)]


@pytest.mark.parametrize(("preset", "infinite"), CASES,
                         ids=[f"{p}{'-infinite' if i else ''}" for p, i in CASES])
def test_trainer_steps_match_plain_adamw(preset, infinite, tmp_path):
    """Trainer.train_step against AdamW + LambdaLR on the plain model: the loss at each step and
    the weights after them (float32). The steps cross the warm-up's lr = 0 first step."""
    cfg = _config(preset, infinite)
    t = cfg.train
    tr = Trainer([Member(cfg, tmp_path / "run")], progress=False)
    tr.start_fresh(record=False)
    plain = nz.from_groklab_state({k: v.detach().clone() for k, v in tr.member_state(0).items()},
                                  doubled_residual=cfg.model.doubled_residual)
    opt, sched = nz.notebook_optimizer(plain, t.lr, t.weight_decay, (t.beta1, t.beta2), t.warmup_steps)
    dtype = getattr(torch, t.loss_dtype)
    for step in range(4):
        batch = tr.train_batch(step)
        one = type(batch)(*(f[0] for f in (batch.tokens, batch.positions, batch.labels, batch.parts)))
        ref = nz.train_step(opt, sched, lambda b=one: _plain_loss(preset, plain(b.tokens), b, dtype))
        got = tr.train_step(step)
        torch.testing.assert_close(got[0].to(ref.dtype), ref, rtol=2e-6, atol=0, msg=f"loss, step {step}")
    ref_state = nz.to_groklab_state(plain)
    for k, v in tr.member_state(0).items():
        # the largest update is ~3 lr; float32 rounding of near-zero gradients moves Adam's
        # normalised step by far less than that
        torch.testing.assert_close(v.detach(), ref_state[k], rtol=1e-5, atol=1e-3 * t.lr, msg=k)


@pytest.mark.parametrize("preset", PRESETS)
def test_bench_plain_step_trains_the_same_model(preset, tmp_path):
    """``groklab bench``'s plain side (``bench._zoo_plain_step``) sees the Trainer's batches and
    weights: its losses equal the Trainer's step by step (float32; the induction loss of the plain
    side is float32 as in the notebook, the Trainer's float64)."""
    from groklab import bench

    cfg = _config(preset, infinite=True)
    tr = Trainer([Member(cfg, tmp_path / "run")], progress=False)
    plain = bench._zoo_plain_step(bench._naive("naive_zoo"), tr)
    for step in range(3):
        ref = plain(step)
        torch.testing.assert_close(tr.train_step(step)[0].to(ref.dtype), ref, rtol=1e-5, atol=0)
