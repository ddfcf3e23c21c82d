"""Clock vs pizza (Zhong et al. 2023; ``analysis/clock_pizza.py``): each measure against a hand-worked
case and against the naive loops of ``tests/reference/naive_clock_pizza.py``; the wiring into
``groklab analyze`` and the report on tiny trained runs (p = 7, 20 steps)."""

from __future__ import annotations

import json
import math
import random
import warnings

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from groklab import Config, TaskConfig, TrainConfig, train
from groklab.analysis.clock_pizza import (
    THRESHOLDS,
    circularity,
    clock_or_pizza,
    clock_pizza,
    correct_logit_grid,
    distance_irrelevance,
    embedding_gradients,
    gradient_symmetricity,
    pca_frequency_shares,
    sample_triples,
    sum_diff_table,
)
from groklab.analysis.pipeline import analyze_run
from groklab.config import MLPConfig, ModelConfig
from groklab.models.transformer import build_model
from groklab.report import write_report
from reference import naive_clock_pizza as naive


def f64(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def waves(p: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(p, dtype=torch.float64)
    return torch.cos(2 * math.pi * k * t / p), torch.sin(2 * math.pi * k * t / p)


# --- sampling ------------------------------------------------------------------------------------
@pytest.mark.parametrize("p,n", [(3, 100), (5, 100), (7, 100), (7, 5)])
def test_sample_triples_is_the_shuffled_tuple_list(p, n):
    """Shuffling the p^3 indices draws the notebook's permutation of the explicit tuples."""
    want = naive.triples(p, n)
    got = sample_triples(p, n)
    assert got.dtype == torch.int64 and got.shape == (min(n, p ** 3), 3)
    assert [tuple(r) for r in got.tolist()] == want


def test_sample_triples_depends_on_the_seed():
    xs = [(a, b, c) for a in range(5) for b in range(5) for c in range(5)]
    random.Random(7).shuffle(xs)
    assert [tuple(r) for r in sample_triples(5, 10, seed=7).tolist()] == xs[:10]
    assert not torch.equal(sample_triples(5, 10, seed=7), sample_triples(5, 10))


# --- distance irrelevance ------------------------------------------------------------------------
def test_sum_diff_table_places_each_pair_at_its_sum_and_difference():
    correct = torch.zeros(3, 3, dtype=torch.float64)
    correct[1, 2] = 5.0  # (1 + 2) % 3 = 0, (1 - 2) % 3 = 2
    L = sum_diff_table(correct)
    want = torch.zeros(3, 3, dtype=torch.float64)
    want[0, 2] = 5.0
    assert_close(L, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="p odd"):
        sum_diff_table(torch.zeros(4, 4))


def test_distance_irrelevance_of_sum_only_is_one_and_of_difference_only_is_zero():
    p = 11
    a = torch.arange(p).view(-1, 1)
    b = torch.arange(p).view(1, -1)
    f = f64(torch.randn(p, generator=torch.Generator().manual_seed(0)))
    assert_close(distance_irrelevance(f[(a + b) % p]), 1.0, rtol=1e-12, atol=1e-12)
    assert_close(distance_irrelevance(f[(a - b) % p]), 0.0, rtol=0, atol=1e-12)


def test_distance_irrelevance_hand_case():
    """p = 3, one non-zero pair (0, 0): column 0 of L is [1, 0, 0] (std √2/3), the others 0, so
    the mean column std is √2/9; all of L: one 1 in nine, std √8/9. DI = 1/2."""
    correct = torch.zeros(3, 3)
    correct[0, 0] = 1.0
    assert_close(distance_irrelevance(correct), 0.5, rtol=1e-12, atol=1e-12)
    assert math.isnan(distance_irrelevance(torch.ones(5, 5)))


def test_distance_irrelevance_matches_the_naive_loops():
    correct = torch.randn(13, 13, generator=torch.Generator().manual_seed(1))
    assert_close(distance_irrelevance(correct), naive.distance_irrelevance(correct.numpy()),
                 rtol=1e-12, atol=1e-12)


# --- circularity ---------------------------------------------------------------------------------
def test_circularity_of_exact_waves_is_one():
    """Two frequencies at different amplitudes (so PCA separates them) plus a constant column."""
    p = 11
    c1, s1 = waves(p, 2)
    c3, s3 = waves(p, 5)
    W_E = torch.stack([3 * c1, 3 * s1, c3, s3, torch.full((p,), 7.0, dtype=torch.float64)], 1)
    shares, freqs = pca_frequency_shares(W_E)
    assert_close(shares, torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-12)
    assert freqs.tolist() == [2, 2, 5, 5]
    assert_close(circularity(W_E), 1.0, rtol=0, atol=1e-12)


def test_circularity_of_a_hand_made_mixture():
    """Orthogonal components (distinct scales, so they are the PCs): cos1 + 0.5 cos2 has 1/1.25 =
    0.8 of its energy on k = 1; sin1 and cos3 are pure; sin3 + sin2 has 0.5 on each. Mean 0.825."""
    p = 11
    c1, s1 = waves(p, 1)
    c2, s2 = waves(p, 2)
    c3, s3 = waves(p, 3)
    W_E = torch.stack([8 * (c1 + 0.5 * c2), 4 * s1, 2 * c3, s3 + s2], 1)
    shares, freqs = pca_frequency_shares(W_E)
    assert_close(shares, f64([0.8, 1.0, 1.0, 0.5]), rtol=0, atol=1e-12)
    assert freqs[:3].tolist() == [1, 1, 3]
    assert_close(circularity(W_E), 0.825, rtol=0, atol=1e-12)


def test_circularity_matches_the_naive_loops():
    W_E = torch.randn(13, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert_close(circularity(W_E), naive.circularity(W_E.numpy()), rtol=1e-10, atol=1e-12)


def test_circularity_uses_only_the_components_there_are():
    """A 2-column circle (PAIR's fixed embedding) has two components, both pure."""
    c, s = waves(7, 1)
    assert_close(circularity(torch.stack([c, s], 1).float()), 1.0, rtol=0, atol=1e-6)


# --- gradient symmetricity -----------------------------------------------------------------------
def _cfg(model, p=7) -> Config:
    return Config(task=TaskConfig(p=p, frac_train=0.5), model=model)


@pytest.fixture
def transformer():
    return build_model(_cfg(ModelConfig(d_model=16, d_mlp=32, n_heads=2)), seed=3)


@pytest.fixture
def mlp():
    return build_model(_cfg(MLPConfig(d_embed=8, d_hidden=12)), seed=4)


def test_gradient_symmetricity_matches_the_naive_loop(transformer):
    xs = naive.triples(7)
    g = embedding_gradients(transformer, sample_triples(7)).double()
    want = torch.stack([torch.stack([f64(v) for v in naive.transformer_gradients(transformer, *t)])
                        for t in xs])
    assert_close(g, want, rtol=1e-5, atol=1e-7)
    gs = gradient_symmetricity(transformer)
    assert_close(gs, naive.gradient_symmetricity(transformer, xs), rtol=1e-6, atol=1e-6)
    # at init attention is nearly uniform (grad-sym ~0.99), but the a and b gradients still differ
    assert float((g[:, 0] - g[:, 1]).abs().max()) > 1e-3 * float(g.abs().max()) and gs < 1 - 1e-4


def test_gradient_symmetricity_of_uniform_attention_is_one(transformer):
    """W_Q = 0: every score is 0, the '=' query averages a, b and '=' with equal weights, so the
    logits depend on W_E[a] + W_E[b] only."""
    with torch.no_grad():
        for block in transformer.blocks:
            block.attn.W_Q.zero_()
    assert_close(gradient_symmetricity(transformer), 1.0, rtol=0, atol=1e-12)


def test_gradient_symmetricity_of_the_mlp_is_one(mlp):
    """PAIR's MLP reads act((W_E[a] + W_E[b]) W_in): symmetric by construction."""
    xs = naive.triples(7, 20)
    g = embedding_gradients(mlp, sample_triples(7, 20)).double()
    want = torch.stack([torch.stack([f64(v) for v in naive.mlp_gradients(mlp, *t)]) for t in xs])
    assert_close(g, want, rtol=1e-5, atol=1e-7)
    assert_close(gradient_symmetricity(mlp, sample_triples(7, 20)), 1.0, rtol=0, atol=1e-12)


def test_no_input_embedding_means_none():
    model = build_model(_cfg(MLPConfig(d_embed=8, d_hidden=12, collapsed_in=True)), seed=0)
    assert gradient_symmetricity(model) is None
    out = clock_pizza(model)
    assert out["gradient_symmetricity"] is None and out["circularity"] is None
    assert out["reading"] == "unclear" and math.isfinite(out["distance_irrelevance"])


# --- the reading ---------------------------------------------------------------------------------
@pytest.mark.parametrize("gs,di,want", [
    (0.9937, 0.172, "pizza"),  # the paper's model A (attention rate 0)
    (0.992, 0.35, "pizza"),  # median of alpha 0-0.5 (pair.md §5)
    (0.48, 0.85, "clock"),  # median of alpha 0.9-1
    (0.3336, 0.848, "clock"),  # model B as measured here (alpha 1)
    (0.87, 0.62, "unclear"),  # median of alpha 0.6-0.7
    (0.99, 0.85, "unclear"),  # symmetric but distance-irrelevant
    (None, 0.2, "unclear"), (0.99, float("nan"), "unclear"),
])
def test_reading(gs, di, want):
    assert clock_or_pizza(gs, di) == want


# --- analyze and report --------------------------------------------------------------------------
def _train(cfg: Config, out) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch.searchsorted\(\): input value tensor")
        train(cfg, str(out))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("clock_pizza")
    tr = TrainConfig(steps=20, lr=3e-3, eval_every=10, checkpoint_every=10)
    cfgs = {
        "transformer": Config(task=TaskConfig(p=7, frac_train=0.5),
                              model=ModelConfig(d_model=16, d_mlp=32, n_heads=2), train=tr),
        "mlp": Config(task=TaskConfig(p=7, frac_train=0.5), model=MLPConfig(d_embed=8, d_hidden=12),
                      train=tr),
        "subtract": Config(task=TaskConfig(p=7, frac_train=0.5, operation="subtract"),
                           model=ModelConfig(d_model=16, d_mlp=32, n_heads=2), train=tr),
    }
    for name, cfg in cfgs.items():
        _train(cfg, root / name)
        analyze_run(root / name, progress=False)
    return {name: root / name for name in cfgs}


def _analysis(run):
    return json.loads((run / "analysis.json").read_text()), dict(np.load(run / "analysis.npz"))


@pytest.mark.parametrize("name", ["transformer", "mlp"])
def test_analysis_json_has_clock_pizza(runs, name):
    from groklab import load_run

    d, nz = _analysis(runs[name])
    cp = d["clock_pizza"]
    assert "clock_pizza" in d["analyses"]
    for key in ("gradient_symmetricity", "distance_irrelevance", "circularity"):
        assert isinstance(cp[key], float) and math.isfinite(cp[key]), key
    assert -1.0 <= cp["gradient_symmetricity"] <= 1.0 and 0.0 <= cp["circularity"] <= 1.0
    assert cp["reading"] == clock_or_pizza(cp["gradient_symmetricity"], cp["distance_irrelevance"])
    assert cp["thresholds"] == THRESHOLDS and cp["sampling"] == {"n_triples": 100, "seed": 42}
    run = load_run(runs[name])
    assert cp["checkpoint"] == run.steps[-1]
    again = clock_pizza(run)  # a Run: its last checkpoint
    assert again["checkpoint"] == cp["checkpoint"] and again["reading"] == cp["reading"]
    for key in ("gradient_symmetricity", "distance_irrelevance", "circularity"):
        assert_close(again[key], cp[key], rtol=1e-12, atol=1e-12)
    grid = correct_logit_grid(run.model_at(), 7)
    assert_close(f64(nz["clock_pizza_logits"]), sum_diff_table(grid), rtol=1e-6, atol=1e-6)
    assert_close(cp["distance_irrelevance"], distance_irrelevance(grid), rtol=1e-9, atol=1e-12)
    if name == "mlp":
        assert_close(cp["gradient_symmetricity"], 1.0, rtol=0, atol=1e-12)


def test_other_operations_have_no_clock_pizza(runs):
    d, nz = _analysis(runs["subtract"])
    assert "clock_pizza" not in d and "clock_pizza" not in d["analyses"]
    assert "clock_pizza_logits" not in nz


@pytest.mark.parametrize("name", ["transformer", "mlp"])
def test_report_shows_the_section_and_omits_it_for_old_analyses(runs, name):
    run = runs[name]
    page = write_report(run).read_text()
    assert page.count('id="fig-clock-pizza"') == 1 and 'id="clock-pizza-table"' in page
    assert '<section id="clock-pizza">' in page and 'href="#clock-pizza"' in page
    d = json.loads((run / "analysis.json").read_text())
    assert f"<td>{d['clock_pizza']['distance_irrelevance']:.3f}</td>" in page
    old = dict(d)
    del old["clock_pizza"]  # an analysis written before the measures existed
    (run / "analysis.json").write_text(json.dumps(old))
    try:
        page = write_report(run).read_text()
    finally:
        (run / "analysis.json").write_text(json.dumps(d))
    assert "fig-clock-pizza" not in page and 'id="clock-pizza"' not in page
