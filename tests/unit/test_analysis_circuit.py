"""The circuit analysis on a hand-built Fourier model, and the fast grid forward."""

import math

import pytest
import torch
from torch.testing import assert_close

from groklab import Config, HookedTransformer, build_model, make_data
from groklab.analysis import (
    component_norms,
    embed_key_planes,
    embed_pca,
    excluded_logits,
    fourier_basis,
    key_frequencies,
    neuron_clusters,
    neuron_logit_map,
    restricted_logits,
    split_scores,
    sum_directions,
    wl_stats,
)
from groklab.analysis.forward import GridEvaluator, fast_path_ok
from groklab.config import apply_overrides
from reference import naive_analysis as naive

P, FREQS, N_PER = 31, [3, 7, 11], 12


@pytest.fixture(scope="module")
def handbuilt():
    """A 1-layer model that adds mod 31 with frequencies 3, 7, 11 (weights set by hand)."""
    sd, ov = naive.fourier_model_state(P, FREQS, N_PER, seed=0, scale=6.0)
    cfg = apply_overrides(Config(), {**ov, "task.frac_train": 0.5}, from_strings=False).resolved()
    model = HookedTransformer(cfg)
    model.load_state_dict(sd)
    model.eval()
    data = make_data(cfg.task)
    with torch.no_grad():
        logits, cache = model.run_with_cache(data.tokens, names=["blocks.0.mlp.hook_post"])
    return {"sd": sd, "cfg": cfg, "data": data, "logits": logits[:, -1, :P].double(),
            "post": cache["blocks.0.mlp.hook_post"][:, -1]}


def test_handbuilt_clusters_and_key_frequencies(handbuilt):
    F, _ = fourier_basis(P)
    cl = neuron_clusters(handbuilt["post"], F)
    truth = torch.tensor(FREQS).repeat_interleave(N_PER)
    assert_close(cl.freq, truth, atol=0, rtol=0)
    assert cl.counts == {-1: 0, **{k: N_PER for k in FREQS}}
    sd = handbuilt["sd"]
    W_L = neuron_logit_map(sd["blocks.0.mlp.W_out"], sd["unembed.W_U"], P)
    kf = key_frequencies(cl, component_norms(W_L, F), component_norms(sd["embed.W_E"][:P].double(), F))
    assert kf.freqs == FREQS and kf.rule == "neuron_clusters"
    assert kf.W_L_freqs == FREQS and kf.W_E_freqs == FREQS and kf.agree_W_L
    st = wl_stats(W_L, F, FREQS)
    assert_close(st.residual_frac, 0.0, atol=1e-6, rtol=0)  # W_L lives on the 6 key directions
    assert st.rank_99 == 2 * len(FREQS)


def test_handbuilt_restricted_and_excluded_loss(handbuilt):
    L, data = handbuilt["logits"], handbuilt["data"]
    U = sum_directions(P, FREQS)
    full = split_scores(L, data.labels, data.is_train)
    res = split_scores(restricted_logits(L, U), data.labels, data.is_train)
    exc = split_scores(excluded_logits(L, U), data.labels, data.is_train)
    assert full.all_acc == 1.0 and res.all_acc == 1.0
    assert res.all_loss <= full.all_loss  # the key components alone do the task, without the junk
    assert exc.train_loss > 2 * math.log(P)  # without them the model is worse than uniform


def test_handbuilt_embedding_circles(handbuilt):
    W_E = handbuilt["sd"]["embed.W_E"][:P].double()
    F, _ = fourier_basis(P)
    planes = embed_key_planes(W_E, F, FREQS)  # [K, p, 2]
    t = torch.arange(P, dtype=torch.float64)
    for i, k in enumerate(FREQS):  # W_E u_cos = cos(w t) * |cos(w .)| / ... up to the norm of the row
        expected = torch.stack([torch.cos(2 * math.pi * k * t / P), torch.sin(2 * math.pi * k * t / P)], 1)
        assert_close(planes[i], expected, atol=1e-5, rtol=0)
    coords, var = embed_pca(W_E)
    assert_close(var[:6].sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-6, rtol=0)
    assert coords.shape == (P, 2)


@pytest.mark.parametrize("overrides", [
    {},
    {"model.attn_bias": True, "model.unembed_bias": True, "model.act_fn": "gelu"},
    {"model.d_vocab_out": 13, "model.n_heads": 2},
])
def test_fast_grid_forward_matches_model(overrides):
    base = {"task.p": 13, "model.d_model": 32, "model.d_mlp": 64, **overrides}
    cfg = apply_overrides(Config(), base, from_strings=False).resolved()
    model = build_model(cfg, seed=1)
    with torch.no_grad():  # random biases so that every bias path is exercised
        for name, prm in model.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("b_"):
                prm.normal_(0, 0.5)
    data = make_data(cfg.task)
    with torch.no_grad():
        ref = model(data.tokens)[:, -1, :13]
    ev = GridEvaluator(cfg, data.tokens)
    assert ev.fast and fast_path_ok(cfg)
    assert_close(ev.logits(model.state_dict()), ref, atol=2e-5, rtol=1e-5)


def test_fallback_forward_for_two_layers():
    cfg = apply_overrides(Config(), {"task.p": 7, "model.d_model": 16, "model.d_mlp": 32,
                                     "model.n_layers": 2}, from_strings=False).resolved()
    model = build_model(cfg, seed=0)
    data = make_data(cfg.task)
    ev = GridEvaluator(cfg, data.tokens, chunk=10)
    assert not ev.fast
    with torch.no_grad():
        ref = model(data.tokens)[:, -1, :7]
    assert_close(ev.logits(model.state_dict()), ref, atol=1e-6, rtol=1e-6)
