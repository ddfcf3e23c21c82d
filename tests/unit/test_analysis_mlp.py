"""PAIR MLP analysis (groklab.analysis.mlp) against hand-built stars and hand-worked cases."""

import math

import pytest
import torch
from torch.testing import assert_close

from groklab.analysis.fourier import fourier_basis
from groklab.analysis.mlp import (
    collapsed,
    dft,
    dft_gini,
    dft_out,
    grid_accuracy,
    group_fve,
    group_logits,
    group_logits_grid,
    key_frequencies,
    neuron_clusters,
    neuron_frequencies,
    star_geometry,
    weight_norms,
)
from groklab.analysis.parity import (
    live_distractors,
    live_distractors_rel,
    parity_norms,
    parity_weights,
    pruning_step,
)

P, FREQS, N = 67, (4, 5, 7), 5
SCALE = {4: 0.7, 5: 1.3, 7: 2.1}  # embedding scale s_f of the cos/sin columns of frequency f
PSI = {4: 0.3, 5: -1.1, 7: 2.5}  # embedding phase: columns cos(w_f i + psi_f), sin(w_f i + psi_f)
PHI = {4: 0.2, 5: 0.9, 7: -0.4}  # the group's rotation: theta_j = 2 pi j / N + phi_f
R_IN, U_OUT = 1.5, 0.8
PERM = torch.randperm(N * len(FREQS), generator=torch.Generator().manual_seed(0)).tolist()
ANG = dict(atol=2e-6, rtol=0)  # float32 weights, compared in float64


def wrap(x: float) -> float:
    return math.pi - (math.pi - x) % (2 * math.pi)


def theta(f: int, j: int) -> float:
    return 2 * math.pi * j / N + PHI[f]


def star_state() -> dict[str, torch.Tensor]:
    """PAIR's star construction (pair.md §1.4) for three frequencies, tied embedding, float32.

    Neuron ``PERM[g*N + j]`` is the j-th direction of group g: ``W_in`` column ``R (cos th, sin th)``
    on that group's two embedding columns, ``W_out`` row at the doubled angle minus the embedding
    phase, ``U (cos(2 th - psi), sin(2 th - psi))``, which makes the wave peak at c = a + b.
    """
    i = torch.arange(P, dtype=torch.float64)
    W_E = torch.zeros(P, 2 * len(FREQS), dtype=torch.float64)
    W_in = torch.zeros(2 * len(FREQS), N * len(FREQS), dtype=torch.float64)
    W_out = torch.zeros(N * len(FREQS), 2 * len(FREQS), dtype=torch.float64)
    for g, f in enumerate(FREQS):
        w = 2 * math.pi * f / P
        W_E[:, 2 * g] = SCALE[f] * torch.cos(w * i + PSI[f])
        W_E[:, 2 * g + 1] = SCALE[f] * torch.sin(w * i + PSI[f])
        for j in range(N):
            n, th = PERM[g * N + j], theta(f, j)
            W_in[2 * g:2 * g + 2, n] = torch.tensor([math.cos(th), math.sin(th)]) * R_IN
            W_out[n, 2 * g:2 * g + 2] = torch.tensor([math.cos(2 * th - PSI[f]),
                                                      math.sin(2 * th - PSI[f])]) * U_OUT
    return {"embed.W_E": W_E.float(), "mlp.W_in": W_in.float(), "mlp.W_out": W_out.float()}


@pytest.fixture
def star():
    return star_state()


@pytest.fixture
def F():
    return fourier_basis(P)[0]


def group(f: int) -> list[int]:
    g = FREQS.index(f)
    return sorted(PERM[g * N:(g + 1) * N])


# --- collapsed ---------------------------------------------------------------------------------

def _rand(*shape, seed=[0]):  # noqa: B006 (a counter)
    seed[0] += 1
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed[0]))


@pytest.mark.parametrize("variant", ["tied", "untied", "collapsed_in", "collapsed_out", "both",
                                     "collapsed_in_untied"])
def test_collapsed_variants_match_explicit_matmuls(variant):
    p, d, H = 7, 4, 3
    E, U = _rand(p, d), _rand(d, p)
    Wi = _rand(p, H) if variant in ("collapsed_in", "both", "collapsed_in_untied") else _rand(d, H)
    Wo = _rand(H, p) if variant in ("collapsed_out", "both") else _rand(H, d)
    state = {"mlp.W_in": Wi, "mlp.W_out": Wo}
    if variant not in ("both", "collapsed_in_untied"):
        state["embed.W_E"] = E
    if variant in ("untied", "collapsed_in_untied"):
        state["unembed.W_U"] = U
    E64, U64, Wi64, Wo64 = (t.double() for t in (E, U, Wi, Wo))
    want_in = Wi64 if variant in ("collapsed_in", "both", "collapsed_in_untied") else E64 @ Wi64
    if variant in ("collapsed_out", "both"):
        want_out = Wo64
    else:
        want_out = Wo64 @ (U64 if "untied" in variant else E64.T)
    W_input, W_output = collapsed(state)
    assert W_input.dtype == W_output.dtype == torch.float64
    assert_close(W_input, want_in)
    assert_close(W_output, want_out)


def test_collapsed_five_neuron_model():
    x = torch.arange(P, dtype=torch.float64)
    E = torch.stack([torch.cos(2 * math.pi * x / P), torch.sin(2 * math.pi * x / P)], 1)
    E = E / E.norm(dim=0)  # each column L2-normalised: radius sqrt(2/p)
    Wi, Wo = _rand(2, 5), _rand(5, 2)
    W_input, W_output = collapsed({"embed.W_E": E.float(), "mlp.W_in": Wi, "mlp.W_out": Wo})
    assert W_input.shape == (P, 5) and W_output.shape == (5, P)
    assert_close(W_input, E.float().double() @ Wi.double())
    assert_close(W_output, Wo.double() @ E.float().double().T)


def test_collapsed_ambiguous_and_bad_states():
    p, H = 7, 3
    E, Wi, Wo = _rand(p, p), _rand(p, H), _rand(H, p)
    state = {"embed.W_E": E, "mlp.W_in": Wi, "mlp.W_out": Wo}
    with pytest.raises(ValueError, match="collapsed_in="):
        collapsed(state)
    W_input, W_output = collapsed(state, collapsed_in=True, collapsed_out=False)
    assert_close(W_input, Wi.double())
    assert_close(W_output, Wo.double() @ E.double().T)
    with pytest.raises(ValueError, match="parity_weights"):  # sparse parity: W_in [31, H], W_out [H, 1]
        collapsed({"mlp.W_in": _rand(31, 8), "mlp.W_out": _rand(8, 1)})
    with pytest.raises(ValueError, match="mlp.W_in"):
        collapsed({"embed.W_E": E})


# --- DFT and neuron frequencies ----------------------------------------------------------------

def test_pure_wave_lands_on_one_frequency(F):
    """A cos(2 pi k x / p + phi) has coefficients A sqrt(p/2) (cos phi, -sin phi) on (cos k, sin k)."""
    A, k, phi = 2.5, 9, 0.6
    x = torch.arange(P, dtype=torch.float64)
    W_input = torch.stack([A * torch.cos(2 * math.pi * k * x / P + phi),
                           torch.full((P,), -0.4, dtype=torch.float64)], 1)  # 2nd: constant
    D = dft(W_input, F)
    amp = A * math.sqrt(P / 2)
    want = torch.zeros(P, dtype=torch.float64)
    want[2 * k - 1], want[2 * k] = amp * math.cos(phi), -amp * math.sin(phi)
    assert_close(D[:, 0], want, atol=1e-12, rtol=0)
    want_c = torch.zeros(P, dtype=torch.float64)
    want_c[0] = -0.4 * math.sqrt(P)
    assert_close(D[:, 1], want_c, atol=1e-12, rtol=0)

    B, beta = 0.7, -2.0  # W_output row of neuron 0: B cos(2 pi k c / p - beta); neuron 1: constant 0.3
    W_output = torch.stack([B * torch.cos(2 * math.pi * k * x / P - beta),
                            torch.full((P,), 0.3, dtype=torch.float64)])
    nf = neuron_frequencies(W_input, W_output, F)
    assert nf.k.tolist() == [k, 0]
    assert nf.argmax_row.tolist() == [2 * k - 1, 0]  # cos 0.6 > sin 0.6
    assert_close(nf.in_angle, torch.tensor([-phi, math.pi], dtype=torch.float64))
    assert_close(nf.in_norm, torch.tensor([amp, 0.4 * math.sqrt(P)], dtype=torch.float64))
    assert_close(nf.max_dft, torch.tensor([amp * math.cos(phi), 0.4 * math.sqrt(P)], dtype=torch.float64))
    assert_close(nf.out_angle, torch.tensor([beta, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)
    assert_close(nf.out_norm, torch.tensor([B * math.sqrt(P / 2), 0.3 * math.sqrt(P)], dtype=torch.float64))
    assert nf.sort_order.tolist() == [1, 0]  # k = 0 first
    Dout = dft_out(W_output, F)
    want_o = torch.zeros(2, P, dtype=torch.float64)
    want_o[0, 2 * k - 1] = B * math.sqrt(P / 2) * math.cos(beta)
    want_o[0, 2 * k] = B * math.sqrt(P / 2) * math.sin(beta)
    want_o[1, 0] = 0.3 * math.sqrt(P)
    assert_close(Dout, want_o, atol=1e-12, rtol=0)


def test_star_neuron_frequencies(star, F):
    W_input, W_output = collapsed(star)
    nf = neuron_frequencies(W_input, W_output, F)
    assert neuron_clusters(nf) == {f: group(f) for f in FREQS}
    assert key_frequencies(nf) == list(FREQS)
    n_all = N * len(FREQS)
    in_angle, out_angle = torch.zeros(n_all, dtype=torch.float64), torch.zeros(n_all, dtype=torch.float64)
    in_norm, out_norm = torch.zeros(n_all, dtype=torch.float64), torch.zeros(n_all, dtype=torch.float64)
    for g, f in enumerate(FREQS):
        for j in range(N):
            n = PERM[g * N + j]
            # W_input[:, n] = s R cos(w a - (theta - psi)), W_output[n] = s U cos(w c - 2 (theta - psi))
            in_angle[n], out_angle[n] = wrap(theta(f, j) - PSI[f]), wrap(2 * theta(f, j) - 2 * PSI[f])
            in_norm[n] = SCALE[f] * R_IN * math.sqrt(P / 2)
            out_norm[n] = SCALE[f] * U_OUT * math.sqrt(P / 2)
    assert_close(nf.in_angle, in_angle, **ANG)
    assert_close(nf.out_angle, out_angle, **ANG)
    assert_close(nf.in_norm, in_norm, atol=0, rtol=1e-6)
    assert_close(nf.out_norm, out_norm, atol=0, rtol=1e-6)
    want_order = sorted(range(n_all), key=lambda n: (nf.k[n].item(), in_angle[n].item()))
    assert nf.sort_order.tolist() == want_order

    for f in FREQS:
        sg = star_geometry(nf, f)
        assert sorted(sg.neurons.tolist()) == group(f)
        assert sg.neurons.tolist() == [n for n in want_order if n in group(f)]
        assert_close(sg.spacing, torch.full((N,), 2 * math.pi / N, dtype=torch.float64), **ANG)
        assert sg.spacing_deviation == pytest.approx(0.0, abs=2e-6)
        assert sg.rotation_offset == pytest.approx(0.0, abs=2e-6)
        assert sg.rotation_max_residual == pytest.approx(0.0, abs=2e-6)
        assert sg.rotation_rms_residual == pytest.approx(0.0, abs=2e-6)
    with pytest.raises(ValueError, match="no neuron has frequency 11"):
        star_geometry(nf, 11)


def test_key_frequencies_thresholds(star, F):
    """A lone small neuron at k=11 is dropped by min_neurons=2, kept by 1, dropped by a max-DFT cut."""
    W_input, W_output = collapsed(star)
    x = torch.arange(P, dtype=torch.float64)
    stray = 0.1 * torch.cos(2 * math.pi * 11 * x / P)  # max |DFT| = 0.1 sqrt(p/2) = 0.58
    W_input = torch.cat([W_input, stray[:, None]], 1)
    W_output = torch.cat([W_output, torch.zeros(1, P, dtype=torch.float64)], 0)
    nf = neuron_frequencies(W_input, W_output, F)
    assert key_frequencies(nf) == [4, 5, 7]
    assert key_frequencies(nf, min_neurons=1) == [4, 5, 7, 11]
    assert key_frequencies(nf, min_neurons=1, min_max_dft=2.0) == [4, 5, 7]
    assert key_frequencies(nf, min_neurons=6) == []


def _wave_neurons(k, in_angles, out_angles):
    x = torch.arange(P, dtype=torch.float64)[:, None]
    w = 2 * math.pi * k / P
    W_input = torch.cos(w * x - torch.tensor(in_angles, dtype=torch.float64))  # (p, n)
    W_output = torch.cos(w * x - torch.tensor(out_angles, dtype=torch.float64)).T  # (n, p)
    return W_input, W_output


def test_star_geometry_perturbed_by_hand(F):
    """Move one in-angle by d: two gaps become 2pi/5 +- d. Move one out-angle by e: the
    circular mean of (0, 0, 0, 0, e) is atan2(sin e, 4 + cos e)."""
    d, e = 0.2, 0.5
    base = [2 * math.pi * j / 5 - 3.0 for j in range(5)]  # crosses -pi: the wrap is exercised
    ins = [wrap(a) for a in base]
    ins[2] = wrap(ins[2] + d)
    outs = [wrap(2 * a) for a in ins]
    outs[4] = wrap(outs[4] + e)
    sg = star_geometry(neuron_frequencies(*_wave_neurons(6, ins, outs), F), 6)
    assert sg.spacing_deviation == pytest.approx(d, abs=1e-9)
    assert_close(sg.spacing.sum(), torch.tensor(2 * math.pi, dtype=torch.float64))
    off = math.atan2(math.sin(e), 4 + math.cos(e))
    assert sg.rotation_offset == pytest.approx(off, abs=1e-9)
    want = torch.full((5,), -off, dtype=torch.float64)
    want[sg.neurons.tolist().index(4)] = e - off
    assert_close(sg.rotation_residual, want, atol=1e-9, rtol=0)
    assert sg.rotation_max_residual == pytest.approx(e - off, abs=1e-9)
    assert sg.rotation_rms_residual == pytest.approx(math.sqrt((4 * off**2 + (e - off) ** 2) / 5), abs=1e-9)


# --- group logits, FVE, accuracy ---------------------------------------------------------------

def test_group_logits_of_the_quadratic_star(star):
    """Group f alone gives N (sR)^2 (sU) cos^2(pi f (a-b)/p) cos(2 pi f (a+b-c)/p) (pair.md §1.4)."""
    c = torch.arange(P, dtype=torch.float64)
    full = group_logits_grid(star, "quadratic")
    parts = 0
    for f in FREQS:
        grid = group_logits_grid(star, "quadratic", group(f))
        parts = parts + grid
        for a, b in ((3, 40), (66, 66), (10, 0)):
            s = SCALE[f]
            want = (N * (s * R_IN) ** 2 * s * U_OUT * math.cos(math.pi * f * (a - b) / P) ** 2
                    * torch.cos(2 * math.pi * f * (a + b - c) / P))
            got = group_logits(star, "quadratic", group(f), a, b)
            assert_close(got, want, atol=2e-5, rtol=0)
            assert_close(grid[a * P + b], got)
        assert group_fve(grid, P, f) == pytest.approx(1.0, abs=1e-9)
        assert group_fve(grid, P, f, phase_free=True) == pytest.approx(1.0, abs=1e-9)
        # one coefficient for the whole grid: E[m]^2 / E[m^2] with m = cos^2 = (1 + cos)/2 -> 2/3
        assert group_fve(grid, P, f, per_pair=False) == pytest.approx(2 / 3, abs=1e-9)
        other = FREQS[(FREQS.index(f) + 1) % len(FREQS)]
        assert group_fve(grid, P, other) == pytest.approx(0.0, abs=1e-9)
    assert_close(parts, full)


def test_group_fve_phase_free_vs_cos_only():
    """A wave shifted by a quarter period is all sin: cos-only FVE 0, phase-free FVE 1."""
    a = torch.arange(P).repeat_interleave(P)[:, None]
    b = torch.arange(P).repeat(P)[:, None]
    c = torch.arange(P)[None]
    L = torch.sin(2 * math.pi * 3 * (a + b - c).double() / P) + 5.0 + a  # per-pair offsets are centred away
    assert group_fve(L, P, 3) == pytest.approx(0.0, abs=1e-9)
    assert group_fve(L, P, 3, phase_free=True) == pytest.approx(1.0, abs=1e-9)
    assert group_fve(torch.zeros(P * P, P), P, 3) == 0.0


def test_grid_accuracy_star_and_random(star):
    assert grid_accuracy(star, "quadratic") == 1.0
    g = torch.Generator().manual_seed(1)
    rnd = {"embed.W_E": torch.randn(P, 32, generator=g), "mlp.W_in": torch.randn(32, 24, generator=g),
           "mlp.W_out": torch.randn(24, 32, generator=g)}
    for act in ("relu", "quadratic"):
        acc = grid_accuracy(rnd, act)
        assert 0.25 / P < acc < 3.0 / P  # chance is 1/p; a constant prediction scores exactly 1/p
    with pytest.raises(ValueError, match="relu"):
        grid_accuracy(star, "gelu")


# --- sparsity and norms ------------------------------------------------------------------------

def test_dft_gini_hand_worked():
    """p=7 (3 frequencies). Norms (1, 2, 3): G = 1 - (2/18)(1*2.5 + 2*1.5 + 3*0.5) = 2/9."""
    p = 7
    Fp = fourier_basis(p)[0]
    D = torch.zeros(p, 2, dtype=torch.float64)
    D[0, 0] = 100.0  # Const: excluded
    D[1, 0] = 1.0  # cos 1 -> |freq 1| = 1
    D[4, 1] = 2.0  # sin 2 -> |freq 2| = 2
    D[5, 0], D[6, 1] = 1.8, 2.4  # cos 3 (neuron 0), sin 3 (neuron 1) -> sqrt(1.8^2 + 2.4^2) = 3
    W_input = Fp.T @ D  # inverse DFT: F is orthonormal
    assert dft_gini(W_input, Fp) == pytest.approx(2 / 9, abs=1e-12)
    one = torch.zeros(p, 2, dtype=torch.float64)
    one[3, 0] = 1.0
    assert dft_gini(Fp.T @ one, Fp) == pytest.approx(1 - 1 / 3, abs=1e-12)
    flat = torch.zeros(p, 1, dtype=torch.float64)
    flat[[1, 4, 6], 0] = 1.0
    assert dft_gini(Fp.T @ flat, Fp) == pytest.approx(0.0, abs=1e-12)


def test_weight_norms_hand_worked():
    state = {"b": torch.tensor([[1.0, -2.0], [2.0, 0.0]]), "a": torch.tensor([3.0, -4.0])}
    wn = weight_norms(state)
    assert wn["l2"] == pytest.approx(math.sqrt(34), abs=1e-12)
    assert wn["l1"] == pytest.approx(12.0, abs=1e-12)
    assert wn["l2_by_param"] == pytest.approx({"a": 5.0, "b": 3.0})
    assert wn["l1_by_param"] == pytest.approx({"a": 7.0, "b": 5.0})
    assert list(wn["l2_by_param"]) == ["a", "b"]


# --- sparse parity -----------------------------------------------------------------------------

def test_parity_helpers_hand_made():
    n_bits, k = 6, 3
    W_in = torch.tensor([[2.0, -1.5], [1.0, 1.0], [-3.0, 0.5],  # parity bits 0-2
                         [0.05, -0.2], [0.0, 0.3], [-0.01, 0.0],  # distractors 3-5
                         [1.0, 1.0]])  # bias row (index n_bits)
    parts = parity_weights(W_in, k)
    assert_close(parts["parity"], W_in[:3])
    assert_close(parts["distractor"], W_in[3:6])
    assert_close(parts["bias"], torch.tensor([1.0, 1.0]))
    assert live_distractors(W_in, k, 0.1) == 2  # -0.2 and 0.3
    assert live_distractors(W_in, k, 0.04) == 3
    assert live_distractors(W_in, k, 1.0) == 0
    with pytest.raises(ValueError, match="k=7"):
        parity_weights(W_in, n_bits + 1)


def test_pruning_step_hand_made():
    steps, live = [0, 100, 200, 300, 400], [5, 0, 2, 0, 0]
    acc_steps, acc = [0, 50, 100, 150, 200], [0.5, 0.6, 0.95, 0.8, 0.99]
    r = pruning_step(steps, live, acc_steps, acc)
    assert (r.prune_step, r.acc_step) == (300, 100)  # the blip at 100 does not count: it came back
    r = pruning_step(steps, live, acc_steps, acc, acc_level=0.99, max_live=2)
    assert (r.prune_step, r.acc_step) == (100, 200)
    r = pruning_step(steps, [5, 0, 0, 0, 1], acc_steps, [0.5] * 5)
    assert (r.prune_step, r.acc_step) == (None, None)
    with pytest.raises(ValueError, match="same lengths"):
        pruning_step(steps, live[:-1], acc_steps, acc)


def test_live_distractors_rel_and_parity_norms_hand_made():
    k = 3
    W_in = torch.tensor([[2.0, -1.5], [1.0, 1.0], [-3.0, 0.5],  # parity bits: max |w| = 3
                         [0.05, -0.2], [0.0, 0.31], [-0.29, 0.0],  # distractors
                         [1.0, -2.0]])  # bias row
    assert live_distractors_rel(W_in, k) == 1  # only 0.31 > 0.1 * 3
    assert live_distractors_rel(W_in, k, frac=0.01) == 4  # > 0.03: 0.05, -0.2, 0.31, -0.29
    assert live_distractors_rel(10.0 * W_in, k) == 1  # scale-free, unlike live_distractors
    assert live_distractors(10.0 * W_in, k, 0.1) == 4
    zero = torch.zeros(7, 2)
    zero[4, 1] = 1e-6
    assert live_distractors_rel(zero, k) == 1  # all parity weights 0: any non-zero distractor counts
    n = parity_norms(W_in, k)
    assert n["parity_weight_norm"] == pytest.approx(math.sqrt(4 + 2.25 + 1 + 1 + 9 + 0.25), abs=1e-6)
    assert n["distractor_weight_norm"] == pytest.approx(math.sqrt(0.0025 + 0.04 + 0.0961 + 0.0841), abs=1e-6)
    assert n["bias_weight_norm"] == pytest.approx(math.sqrt(5), abs=1e-6)
    assert n["parity_weight_max"] == pytest.approx(3.0, abs=1e-7)
    assert n["distractor_weight_max"] == pytest.approx(0.31, abs=1e-7)
    assert parity_norms(W_in[[0, 1, 2, 6]], k)["distractor_weight_max"] == 0.0  # k == n_bits


def test_grid_functions_take_the_collapse_flags_when_d_embed_is_p(star):
    """d_embed == p is ambiguous for shape inference; the flags decide it (a run passes its config's)."""
    W_input, W_output = collapsed(star)  # the star, re-expressed with W_in [p, H] and a [p, p] W_E
    E = torch.eye(P)
    state = {"embed.W_E": E, "mlp.W_in": W_input.float(), "mlp.W_out": (W_output.float() @ E)}
    with pytest.raises(ValueError, match="collapsed_in="):
        grid_accuracy(state, "quadratic")
    flags = dict(collapsed_in=True, collapsed_out=False)
    assert grid_accuracy(state, "quadratic", **flags) == 1.0
    assert_close(group_logits_grid(state, "quadratic", group(5), **flags),
                 group_logits_grid(star, "quadratic", group(5)), atol=1e-5, rtol=1e-6)
    assert_close(group_logits(state, "quadratic", None, 3, 9, **flags),
                 group_logits(star, "quadratic", None, 3, 9), atol=1e-5, rtol=1e-6)
    a, b = torch.arange(P).repeat_interleave(P), torch.arange(P).repeat(P)
    assert grid_accuracy(star, "quadratic", labels=(a + b) % P) == 1.0
    assert grid_accuracy(star, "quadratic", labels=(a + b + 1) % P) == 0.0
