"""The fast last-position path against HookedTransformer, for ensembles (float64)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from groklab.models.transformer import build_model
from groklab.presets import get_preset
from groklab.tasks import make_data
from groklab.train.step import cross_entropy, fast_last_logits, fast_loss, generic_last_logits, plan_tokens


def _ensemble(act_fn: str = "relu"):
    base = get_preset("nanda2023")
    cfg = replace(base, task=replace(base.task, p=13),
                  model=replace(base.model, d_model=32, d_mlp=64, attn_bias=True, act_fn=act_fn)).resolved()
    models = [build_model(cfg, seed=s).double() for s in range(3)]
    with torch.no_grad():
        for i, m in enumerate(models):
            for name, prm in m.named_parameters():
                if name.rsplit(".", 1)[-1].startswith("b_"):
                    prm.normal_(0, 0.1, generator=torch.Generator().manual_seed(i))
    data = make_data(cfg.task)
    g = torch.Generator().manual_seed(0)
    tokens = torch.stack([data.tokens[torch.randperm(len(data.tokens), generator=g)[:60]] for _ in models])
    labels = torch.randint(0, cfg.model.d_vocab_out, (len(models), 60), generator=g)
    return cfg, models, tokens, labels


@pytest.fixture
def ensemble():
    return _ensemble()


@pytest.mark.parametrize("fused", [False, True], ids=["logits", "fused_loss"])
@pytest.mark.parametrize("act_fn", ["relu", "gelu"])
def test_fast_logits_and_grads_match_per_member_model(fused, act_fn):
    cfg, models, tokens, labels = _ensemble(act_fn)
    ref_loss = torch.stack([cross_entropy(m(tokens[e])[None, :, -1], labels[e:e + 1], torch.float64)[0]
                            for e, m in enumerate(models)])
    upstream = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)  # per-member d(objective)/d(loss)
    (ref_loss * upstream).sum().backward()
    params = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models]).requires_grad_()
              for k, _ in models[0].named_parameters()}
    plan = plan_tokens(tokens, cfg.model.n_heads)
    if fused:
        loss = fast_loss(cfg, params, tokens, labels, torch.float64, plan)[0]
    else:
        loss = cross_entropy(fast_last_logits(cfg, params, tokens, plan), labels, torch.float64)
    (loss * upstream).sum().backward()
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-12, atol=0)
    scale = max(float(p.grad.abs().max()) for p in params.values())
    for k, p in params.items():
        ref = torch.stack([dict(m.named_parameters())[k].grad for m in models])
        torch.testing.assert_close(p.grad, ref, rtol=1e-8, atol=1e-12 * scale)


def test_fast_equals_generic_vmapped_forward(ensemble):
    cfg, models, tokens, _ = ensemble
    params = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models])
              for k, _ in models[0].named_parameters()}
    with torch.no_grad():
        torch.testing.assert_close(fast_last_logits(cfg, params, tokens),
                                   generic_last_logits(models[0], params, tokens), rtol=1e-12, atol=1e-12)


def test_plan_has_one_table_row_per_used_token_and_head():
    tokens = torch.tensor([[[0, 1, 5], [2, 1, 5], [0, 3, 5]]])
    plan = plan_tokens(tokens, n_heads=2)
    assert [v.tolist() for v in plan.vocab] == [[0, 2], [1, 3], [5]]
    assert plan.rows == 2 * (2 + 2 + 1) + 1
    assert plan.bag.tolist()[1] == [2, 3, 4, 5, 8, 9, 10]
