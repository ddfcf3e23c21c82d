"""Fourier bases and Fourier views (groklab.analysis.fourier) against hand cases and naive loops."""

import math

import pytest
import torch
from torch.testing import assert_close

from groklab.analysis import (
    component_norms,
    fft1d,
    fft2d,
    fourier_basis,
    fourier_basis_2d,
    fourier_labels,
    freq_norms,
    neuron_freq_fractions,
    sum_directions,
)
from reference import naive_analysis as naive


@pytest.mark.parametrize("p", [3, 7, 23, 113])
def test_basis_orthonormal(p):
    F, labels = fourier_basis(p)
    assert_close(F @ F.T, torch.eye(p, dtype=torch.float64), atol=1e-12, rtol=0)
    assert labels[:3] == ["Const", "cos 1", "sin 1"] and labels[-1] == f"sin {(p - 1) // 2}"
    assert len(labels) == p


def test_basis_matches_naive_loops():
    assert_close(fourier_basis(13)[0], torch.from_numpy(naive.naive_basis(13)), atol=1e-12, rtol=0)


def test_even_p_rejected():
    with pytest.raises(ValueError, match="odd"):
        fourier_basis(8)


@pytest.mark.parametrize("k", [1, 5, 11])
def test_pure_wave_lands_on_one_frequency(k):
    p = 23
    F, labels = fourier_basis(p)
    x = torch.arange(p, dtype=torch.float64)
    wave = 3.0 * torch.cos(2 * math.pi * k * x / p + 0.4)  # a cos k and sin k mix
    coef = fft1d(wave, F)
    expected = torch.zeros(p, dtype=torch.float64)
    amp = 3.0 * math.sqrt(p / 2)
    expected[2 * k - 1], expected[2 * k] = amp * math.cos(0.4), -amp * math.sin(0.4)
    assert_close(coef, expected, atol=1e-10, rtol=0)
    fn = freq_norms(coef.abs())
    onehot = torch.zeros((p - 1) // 2, dtype=torch.float64)
    onehot[k - 1] = amp
    assert_close(fn, onehot, atol=1e-10, rtol=0)


def test_pure_2d_wave_lands_on_one_block():
    p, k = 13, 4
    F, _ = fourier_basis(p)
    a = torch.arange(p, dtype=torch.float64).repeat_interleave(p)
    b = torch.arange(p, dtype=torch.float64).repeat(p)
    t = torch.cos(2 * math.pi * k * (a + b) / p)  # = cos a cos b - sin a sin b
    four = fft2d(t, F)
    expected = torch.zeros(p, p, dtype=torch.float64)
    expected[2 * k - 1, 2 * k - 1] = p / 2
    expected[2 * k, 2 * k] = -p / 2
    assert_close(four, expected, atol=1e-10, rtol=0)


def test_fft2d_equals_2d_basis():
    p = 7
    F, _ = fourier_basis(p)
    F2, labels = fourier_basis_2d(p)
    assert_close(F2 @ F2.T, torch.eye(p * p, dtype=torch.float64), atol=1e-12, rtol=0)
    t = torch.randn(p * p, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert_close(fft2d(t, F).reshape(p * p, 3), F2 @ t, atol=1e-12, rtol=0)
    assert labels[p + 2] == "cos 1 x sin 1"


def test_sum_directions_match_naive_and_notebook():
    p, key = 11, [2, 5]
    U = sum_directions(p, key)
    assert_close(U.T @ U, torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
    for i, k in enumerate(key):
        c, s = naive.sum_vectors(p, k)
        assert_close(U[:, 2 * i], torch.from_numpy(c), atol=1e-12, rtol=0)
        assert_close(U[:, 2 * i + 1], torch.from_numpy(s), atol=1e-12, rtol=0)
    F, _ = fourier_basis(p)  # the notebook's get_component_cos_xpy construction
    k = 5
    cos_nb = (torch.outer(F[2 * k - 1], F[2 * k - 1]) - torch.outer(F[2 * k], F[2 * k])).flatten()
    assert_close(U[:, 2], cos_nb / math.sqrt(2), atol=1e-12, rtol=0)


def test_neuron_fractions_match_naive():
    p = 7
    g = torch.Generator().manual_seed(1)
    acts = torch.relu(torch.randn(p * p, 3, generator=g, dtype=torch.float64))
    got = neuron_freq_fractions(acts, fourier_basis(p)[0])
    assert_close(got, torch.from_numpy(naive.naive_neuron_fve(acts.numpy(), p)), atol=1e-10, rtol=0)


def test_component_norms_of_embedding_wave():
    p = 11
    F, _ = fourier_basis(p)
    x = torch.arange(p, dtype=torch.float64)
    W = torch.stack([torch.cos(2 * math.pi * 3 * x / p), torch.zeros(p)], 1)  # [p, d=2]
    expected = torch.zeros(p, dtype=torch.float64)
    expected[5] = math.sqrt(p / 2)  # cos 3 is row 5
    assert_close(component_norms(W, F), expected, atol=1e-10, rtol=0)
    assert fourier_labels(p)[5] == "cos 3"
