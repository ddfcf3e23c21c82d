"""Mechanistic analysis of modular-addition runs (Nanda et al. 2023, §4-5).

Pure functions on tensors (no plotting); ``analyze_run`` writes ``RUN/analysis.json`` and
``RUN/analysis.npz``. Conventions and the JSON/NPZ schema: ``docs/analysis.md``.
"""

from .circuit import (
    CosFitter,
    KeyFrequencies,
    LogitFit,
    NeuronClusters,
    WLStats,
    attention_fourier,
    cos_coeffs,
    embed_key_planes,
    embed_pca,
    key_frequencies,
    logit_fit,
    neuron_clusters,
    neuron_logit_map,
    sparse_freqs,
    wl_stats,
)
from .fourier import (
    component_norms,
    fft1d,
    fft2d,
    fourier_basis,
    fourier_basis_2d,
    fourier_labels,
    freq_norms,
    logit_fourier_norms,
    neuron_freq_fractions,
    sum_directions,
)
from .progress import (
    SplitScores,
    accuracy,
    cross_entropy64,
    excluded_logits,
    gini,
    phase_boundaries,
    restricted_logits,
    restricted_scores_fast,
    split_scores,
    sum_sq_weights,
)


def analyze_run(run_dir, progress: bool = True):
    """See ``groklab.analysis.pipeline.analyze_run`` (imported lazily)."""
    from .pipeline import analyze_run as _analyze_run

    return _analyze_run(run_dir, progress)


__all__ = [
    "CosFitter", "KeyFrequencies", "LogitFit", "NeuronClusters", "SplitScores", "WLStats", "accuracy",
    "analyze_run", "attention_fourier", "component_norms", "cos_coeffs", "cross_entropy64",
    "embed_key_planes", "embed_pca", "excluded_logits", "fft1d", "fft2d", "fourier_basis",
    "fourier_basis_2d", "fourier_labels", "freq_norms", "gini", "key_frequencies", "logit_fit",
    "logit_fourier_norms", "neuron_clusters", "neuron_freq_fractions", "neuron_logit_map",
    "phase_boundaries", "restricted_logits", "restricted_scores_fast", "sparse_freqs",
    "split_scores", "sum_directions", "sum_sq_weights", "wl_stats",
]
