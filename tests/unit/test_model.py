"""HookedTransformer: TransformerLens shapes and hook names, caching, and invariants."""

import math

import pytest
import torch

from groklab import build_model, get_preset
from groklab.config import apply_overrides

TL_SHAPES = {  # issue 2's table, for nanda2023 (d_vocab = d_vocab_out = 114)
    "embed.W_E": (114, 128), "pos_embed.W_pos": (3, 128),
    "blocks.0.attn.W_Q": (4, 128, 32), "blocks.0.attn.W_K": (4, 128, 32),
    "blocks.0.attn.W_V": (4, 128, 32), "blocks.0.attn.W_O": (4, 32, 128),
    "blocks.0.mlp.W_in": (128, 512), "blocks.0.mlp.b_in": (512,),
    "blocks.0.mlp.W_out": (512, 128), "blocks.0.mlp.b_out": (128,), "unembed.W_U": (128, 114),
}


@pytest.fixture
def nanda_model():
    return build_model(get_preset("nanda2023"))


def test_state_dict_shapes(nanda_model):
    assert {k: tuple(v.shape) for k, v in nanda_model.state_dict().items()} == TL_SHAPES
    assert sum(p.numel() for p in nanda_model.parameters()) == 226_816  # nanda.md §1a


def test_tl_demo_variant():
    m = build_model(get_preset("tl-demo"))
    assert m.unembed.W_U.shape == (128, 113)
    assert not m.blocks[0].mlp.b_in.requires_grad
    sigma = 0.8 / math.sqrt(128)
    torch.testing.assert_close(m.blocks[0].mlp.W_in.std().item(), sigma, rtol=0.03, atol=0)


def test_nanda_init_scale(nanda_model):
    # randn / sqrt(d_model), except W_U = randn / sqrt(114); std of 65k draws is within ~1%.
    std = lambda w: w.std().item()
    torch.testing.assert_close(std(nanda_model.blocks[0].mlp.W_in), 1 / math.sqrt(128), rtol=0.02, atol=0)
    torch.testing.assert_close(std(nanda_model.unembed.W_U), 1 / math.sqrt(114), rtol=0.03, atol=0)
    torch.testing.assert_close(nanda_model.blocks[0].mlp.b_in, torch.zeros(512))


def test_init_is_seeded():
    cfg = get_preset("nanda2023")
    a, b, c = build_model(cfg, 1), build_model(cfg, 1), build_model(cfg, 2)
    torch.testing.assert_close(a.embed.W_E, b.embed.W_E)
    assert not torch.equal(a.embed.W_E, c.embed.W_E)


def test_cache_hooks_and_residual_invariant(nanda_model):
    tokens = torch.tensor([[3, 5, 113], [100, 7, 113]])
    logits, cache = nanda_model.run_with_cache(tokens)
    assert logits.shape == (2, 3, 114)
    assert cache["blocks.0.attn.hook_pattern"].shape == (2, 4, 3, 3)
    assert cache["blocks.0.mlp.hook_post"].shape == (2, 3, 512)
    pat = cache["blocks.0.attn.hook_pattern"]
    torch.testing.assert_close(pat.sum(-1), torch.ones(2, 4, 3))
    assert (pat.triu(1) == 0).all()  # causal
    parts = ("blocks.0.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.0.hook_mlp_out")
    resid = sum(cache[k] for k in parts)
    torch.testing.assert_close(resid, cache["blocks.0.hook_resid_post"])
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"] @ nanda_model.unembed.W_U, logits)
    torch.testing.assert_close(torch.relu(cache["blocks.0.mlp.hook_pre"]), cache["blocks.0.mlp.hook_post"])


def test_hook_can_edit_activation(nanda_model):
    tokens = torch.tensor([[1, 2, 113]])
    with nanda_model.hooks([("blocks.0.hook_mlp_out", lambda x, name: torch.zeros_like(x))]):
        _, cache = nanda_model.run_with_cache(tokens)
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], cache["blocks.0.hook_resid_mid"])
    with pytest.raises(KeyError, match="hook points"):
        with nanda_model.hooks([("blocks.0.mlp.hook_nope", lambda x, n: x)]):
            pass


@pytest.mark.parametrize("over", [
    {"model.act_fn": "gelu"}, {"model.act_fn": "quadratic"}, {"model.attn_only": True},
    {"model.use_ln": True}, {"model.n_layers": 2, "model.attn_bias": True, "model.unembed_bias": True},
])
def test_variants_run(over):
    small = {"task.p": 7, "model.d_model": 16, "model.d_mlp": 32, **over}
    cfg = apply_overrides(get_preset("nanda2023"), small, from_strings=False)
    m = build_model(cfg)
    logits, cache = m.run_with_cache(torch.tensor([[1, 2, 7]]))
    assert logits.shape == (1, 3, 8)
    assert ("blocks.0.mlp.hook_post" in cache) != bool(over.get("model.attn_only"))
    if over.get("model.use_ln"):
        assert "blocks.0.ln1.hook_normalized" in cache and "ln_final.w" in m.state_dict()
