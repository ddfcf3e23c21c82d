"""HookedTransformer and the fast training step against the naive reference (naive_transformer.py).

The step comparison runs in float64, so that "equal" can mean 1e-6 relative (here: 1e-10); in
float32 the two orders of summation already differ by ~1e-6.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from groklab.models.transformer import build_model
from groklab.presets import get_preset
from groklab.tasks import make_data
from groklab.train.step import cross_entropy, fast_last_logits, fast_loss, plan_tokens
from reference import naive_transformer as naive

VARIANTS = {
    "nanda2023": {},
    "biases_gelu": {"attn_bias": True, "unembed_bias": True, "act_fn": "gelu"},
    "quadratic_attn_only": {"attn_only": True, "act_fn": "quadratic", "attn_bias": True},
    "layernorm_2layers": {"use_ln": True, "n_layers": 2, "act_fn": "gelu"},
}


def _model(variant: str, p: int = 113, dtype=torch.float32, seed: int = 0):
    base = get_preset("nanda2023")
    model_cfg = replace(base.model, **VARIANTS[variant])
    cfg = replace(base, task=replace(base.task, p=p), model=model_cfg).resolved()
    model = build_model(cfg, seed=seed).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-zero biases and LayerNorm weights, so that every term is tested
        for name, prm in model.named_parameters():
            if not name.rsplit(".", 1)[-1].startswith("W_"):
                prm.add_(0.1 * torch.randn(prm.shape, generator=g, dtype=dtype))
    return cfg, model


def _naive_kw(cfg):
    m = cfg.model
    return {"n_layers": m.n_layers, "act_fn": m.act_fn, "use_ln": m.use_ln}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hooked_transformer_matches_naive(variant):
    cfg, model = _model(variant, p=113 if variant == "nanda2023" else 31)
    tokens = make_data(cfg.task).tokens[::7]
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), naive.naive_forward(sd, tokens, **_naive_kw(cfg)),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [False, True], ids=["logits", "fused_loss"])
@pytest.mark.parametrize("variant", ["nanda2023", "biases_gelu", "quadratic_attn_only"])
def test_fast_step_loss_and_gradients_match_naive(variant, fused):
    """Same weights: the fast path's loss and every gradient equal the naive version's (float64),
    both through ``fast_last_logits`` + ``cross_entropy`` and through the fused ``fast_loss``."""
    p = 113 if variant == "nanda2023" else 31
    cfg, model = _model(variant, p=p, dtype=torch.float64)
    data = make_data(cfg.task)
    tokens, labels = data.tokens[data.train_idx], data.labels[data.train_idx]

    sd = {k: v.detach().clone().requires_grad_() for k, v in model.state_dict().items()}
    ref = naive.naive_loss(sd, tokens, labels, **_naive_kw(cfg))
    ref.backward()

    params = {k: v.detach().clone().unsqueeze(0).requires_grad_() for k, v in model.state_dict().items()}
    plan = plan_tokens(tokens.unsqueeze(0), cfg.model.n_heads)
    if fused:
        loss, logits = fast_loss(cfg, params, tokens.unsqueeze(0), labels.unsqueeze(0), torch.float64, plan)
        with torch.no_grad():
            torch.testing.assert_close(logits[0], naive.naive_forward(sd, tokens, **_naive_kw(cfg))[:, -1],
                                       rtol=1e-10, atol=1e-10)
    else:
        loss = cross_entropy(fast_last_logits(cfg, params, tokens.unsqueeze(0), plan), labels.unsqueeze(0),
                             torch.float64)
    loss.sum().backward()
    torch.testing.assert_close(loss[0], ref.detach(), rtol=1e-10, atol=0)
    # atol only matters for b_K, whose true gradient is 0 (softmax ignores a shift shared by all keys)
    scale = max(float(t.grad.abs().max()) for t in sd.values())
    for k, v in params.items():
        torch.testing.assert_close(v.grad[0], sd[k].grad, rtol=1e-6, atol=1e-12 * scale, msg=k)


def test_fast_logits_any_last_token_float32():
    """The fast path is exact for any token at any position, not only '=' last (float32 here)."""
    cfg, model = _model("biases_gelu", p=31)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, cfg.model.d_vocab, (200, 3), generator=g)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    params = {k: v.unsqueeze(0) for k, v in sd.items()}
    with torch.no_grad():
        got = fast_last_logits(cfg, params, tokens.unsqueeze(0))[0]
    torch.testing.assert_close(got, naive.naive_forward(sd, tokens, **_naive_kw(cfg))[:, -1],
                               rtol=1e-5, atol=1e-5)
