"""PAIR's star construction (pair.md §1.4) against naive loops written from the post's Appendix A,
the x^2 closed form, and the numerical check's accuracies."""

import math

import pytest
import torch
from torch.testing import assert_close

from groklab.constructions import grid_accuracy, grid_logits, star_weights


def naive_star_logits(p, n, act, freqs=(1,), phase=0.0):
    """Appendix A term by term: l_c = sum_k sum_j act(E_a . u_j + E_b . u_j) (v_j . E_c) with
    E_i = (cos i w, sin i w), u_j = (cos t_j, sin t_j), v_j = (cos 2t_j, sin 2t_j), t_j = 2 pi j/N + phase."""
    f = (lambda x: max(x, 0.0)) if act == "relu" else (lambda x: x * x)
    out = torch.zeros(p, p, p, dtype=torch.float64)
    for a in range(p):
        for b in range(p):
            for c in range(p):
                total = 0.0
                for k in freqs:
                    w = 2 * math.pi * k / p
                    for j in range(n):
                        t = 2 * math.pi * j / n + phase
                        pre = (math.cos(a * w) * math.cos(t) + math.sin(a * w) * math.sin(t)
                               + math.cos(b * w) * math.cos(t) + math.sin(b * w) * math.sin(t))
                        v_dot_e = math.cos(2 * t) * math.cos(c * w) + math.sin(2 * t) * math.sin(c * w)
                        total += f(pre) * v_dot_e
                out[a, b, c] = total
    return out


def naive_mlp_logits(state, p, act):
    """The MLP contract's forward, one pair and one class at a time, on any weights."""
    W_E, W_in, W_out = (state[k].double().tolist() for k in ("embed.W_E", "mlp.W_in", "mlp.W_out"))
    d_embed, d_hidden = len(W_in), len(W_in[0])
    f = (lambda x: max(x, 0.0)) if act == "relu" else (lambda x: x * x)
    out = torch.zeros(p, p, p, dtype=torch.float64)
    for a in range(p):
        for b in range(p):
            x = [W_E[a][e] + W_E[b][e] for e in range(d_embed)]
            h = [f(sum(x[e] * W_in[e][n] for e in range(d_embed))) for n in range(d_hidden)]
            r = [sum(h[n] * W_out[n][e] for n in range(d_hidden)) for e in range(d_embed)]
            for c in range(p):
                out[a, b, c] = sum(r[e] * W_E[c][e] for e in range(d_embed))
    return out


def test_state_dict_contract():
    s = star_weights(13, 5, freqs=(1, 4, 6))
    assert list(s) == ["embed.W_E", "mlp.W_in", "mlp.W_out"]
    assert [tuple(v.shape) for v in s.values()] == [(13, 6), (6, 15), (15, 6)]
    assert all(v.dtype == torch.float32 for v in s.values())
    # frequency group 1 (k=4) lives in embedding columns 2, 3 and hidden block 5..9 only
    assert_close(s["embed.W_E"][3, 2:4], torch.tensor([math.cos(2 * math.pi * 12 / 13),
                                                      math.sin(2 * math.pi * 12 / 13)]))
    assert s["mlp.W_in"][[0, 1, 4, 5]][:, 5:10].abs().max() == 0
    assert s["mlp.W_out"][5:10][:, [0, 1, 4, 5]].abs().max() == 0


def test_hand_worked_n4():
    """N=4, phase 0: directions (1,0), (0,1), (-1,0), (0,-1); doubled: (1,0), (-1,0), (1,0), (-1,0)."""
    s = star_weights(7, 4, act="quadratic")
    assert_close(s["mlp.W_in"], torch.tensor([[1.0, 0, -1, 0], [0, 1, 0, -1]]), atol=1e-7, rtol=0)
    assert_close(s["mlp.W_out"], torch.tensor([[1.0, 0], [-1, 0], [1, 0], [-1, 0]]), atol=1e-7, rtol=0)
    assert_close(s["embed.W_E"][0], torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize(("p", "n", "act", "freqs", "phase"), [
    (7, 5, "quadratic", (1,), 0.0),
    (7, 5, "relu", (1,), 0.0),
    (11, 3, "quadratic", (2, 3), 0.4),
    (11, 4, "relu", (5, 1), -1.1),
])
def test_grid_logits_match_appendix_loops(p, n, act, freqs, phase):
    s = star_weights(p, n, act=act, freqs=freqs, phase=phase)
    got = grid_logits(s, p, act)
    assert got.dtype == torch.float64 and got.shape == (p, p, p)
    # float32 weights vs float64 formulas: round-off of a few 1e-7 per weight
    assert_close(got, naive_star_logits(p, n, act, freqs, phase), atol=2e-6, rtol=1e-6)


@pytest.mark.parametrize("act", ["relu", "quadratic"])
def test_grid_logits_match_naive_forward_on_random_weights(act):
    g = torch.Generator().manual_seed(0)
    s = {"embed.W_E": torch.randn(7, 3, generator=g), "mlp.W_in": torch.randn(3, 4, generator=g),
         "mlp.W_out": torch.randn(4, 3, generator=g)}
    assert_close(grid_logits(s, 7, act), naive_mlp_logits(s, 7, act), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(("n", "k", "phase"), [(5, 1, 0.0), (7, 3, 0.3), (3, 1, 1.0)])
def test_quadratic_closed_form(n, k, phase):
    """pair.md §1.4: l_c ∝ cos^2((a-b)w/2) cos((a+b-c)w); expanding the square (module docstring)
    gives the constant N for the unit-circle embedding."""
    p = 67
    got = grid_logits(star_weights(p, n, "quadratic", (k,), phase), p, "quadratic")
    i = torch.arange(p, dtype=torch.float64)
    a, b, c = i[:, None, None], i[None, :, None], i[None, None, :]
    w = 2 * math.pi * k / p
    template = torch.cos((a - b) * w / 2) ** 2 * torch.cos((a + b - c) * w)  # (p, p, p)
    const = float((got * template).sum() / (template * template).sum())  # least-squares fit
    assert const == pytest.approx(n, rel=1e-6)
    assert_close(got, const * template, atol=1e-5, rtol=0)


@pytest.mark.parametrize("p", [67, 97, 113])
@pytest.mark.parametrize("n", [3, 5, 6, 7, 8, 10])
def test_quadratic_exact_for_odd_p(p, n):
    assert grid_accuracy(star_weights(p, n, "quadratic"), p, "quadratic") == 1.0


@pytest.mark.parametrize("p", [67, 113])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_quadratic_fails_when_n_divides_4(p, n):
    acc = grid_accuracy(star_weights(p, n, "quadratic"), p, "quadratic")
    assert 0.005 < acc < 0.05  # measured 1/p (0.0149 at 67, 0.0088 at 113)


def test_quadratic_even_p_ties():
    """p=64: the 64 pairs with a - b = 32 have cos^2(pi/2) = 0, all logits 0 (a tie); the rest win."""
    acc = grid_accuracy(star_weights(64, 5, "quadratic"), 64, "quadratic")
    assert acc == pytest.approx(1 - 1 / 64, abs=1e-12)


@pytest.mark.parametrize("p", [67, 113])
@pytest.mark.parametrize("n", [5, 7, 10])
def test_relu_exact(p, n):
    assert grid_accuracy(star_weights(p, n, "relu"), p, "relu") == 1.0


@pytest.mark.parametrize("p", [67, 113])
@pytest.mark.parametrize(("n", "lo", "hi"), [
    (3, 0.005, 0.05),  # measured 0.0225 (p=67), 0.0132 (p=113)
    (4, 0.005, 0.05),  # 0.0149, 0.0088
    (6, 0.08, 0.3),  # 0.194, 0.115
    (8, 0.2, 0.8),  # 0.642, 0.310
])
def test_relu_fails(p, n, lo, hi):
    acc = grid_accuracy(star_weights(p, n, "relu"), p, "relu")
    assert lo < acc < hi


def test_three_frequencies_in_one_model():
    s = star_weights(67, 5, "quadratic", freqs=(4, 5, 7))
    assert s["mlp.W_in"].shape == (6, 15)
    assert grid_accuracy(s, 67, "quadratic") == 1.0


def test_embedding_radius_does_not_matter():
    """PAIR's notebook L2-normalises each embedding column (radius sqrt(2/p)); ReLU is
    homogeneous, so the logits scale by r^2 (r in, r out through the tied embedding; r^3 for x^2)
    and the accuracy is unchanged."""
    p = 67
    s = star_weights(p, 5, "relu")
    r = math.sqrt(2 / p)
    scaled = dict(s, **{"embed.W_E": s["embed.W_E"] * r})
    for act, power in (("relu", 2), ("quadratic", 3)):
        assert_close(grid_logits(scaled, p, act), r**power * grid_logits(s, p, act), atol=1e-7, rtol=1e-5)
        assert grid_accuracy(scaled, p, act) == 1.0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"p": 2, "n_neurons": 5}, "p must be"),
    ({"p": 67, "n_neurons": 0}, "n_neurons must be"),
    ({"p": 67, "n_neurons": 5, "freqs": (0,)}, r"1\.\.33"),
    ({"p": 67, "n_neurons": 5, "freqs": (34,)}, "freqs must be"),
    ({"p": 67, "n_neurons": 5, "freqs": (2, 2)}, "distinct"),
    ({"p": 67, "n_neurons": 5, "freqs": ()}, "freqs must be"),
    ({"p": 67, "n_neurons": 5, "act": "gelu"}, "act='relu' or act='quadratic'"),
    ({"p": 67, "n_neurons": 5, "phase": math.nan}, "phase"),
])
def test_star_weights_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        star_weights(**kwargs)


def test_grid_rejects_bad_state():
    s = star_weights(7, 5)
    with pytest.raises(ValueError, match="lacks"):
        grid_logits({"embed.W_E": s["embed.W_E"]}, 7, "relu")
    with pytest.raises(ValueError, match="shapes do not fit p=8"):
        grid_accuracy(s, 8, "relu")
    with pytest.raises(ValueError, match="unknown act"):
        grid_logits(s, 7, "tanh")
