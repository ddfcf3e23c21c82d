"""Mechanistic analysis of modular-addition runs (Nanda et al. 2023, §4-5).

Pure functions on tensors (no plotting); ``analyze_run`` writes ``RUN/analysis.json`` and
``RUN/analysis.npz``. Conventions and the JSON/NPZ schema: ``docs/analysis.md``. Loss spikes and
loss / weight-norm oscillations of any run: ``analysis.spikes``. PAIR's MLP family
(``analysis.mlp``, ``analysis.parity``, driver ``analyze_mlp``): ``docs/analysis_mlp.md``; its
``key_frequencies`` / ``neuron_clusters`` / ``grid_accuracy`` live in ``analysis.mlp`` (the names
here are the transformer's). Clock vs pizza (Zhong et al. 2023) of any modular-addition model:
``analysis.clock_pizza``.
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
from .clock_pizza import (
    circularity,
    clock_or_pizza,
    clock_pizza,
    distance_irrelevance,
    gradient_symmetricity,
    sample_triples,
    sum_diff_table,
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
from .mlp import (
    NeuronFreqs,
    StarGeometry,
    collapsed,
    dft_gini,
    group_fve,
    group_logits,
    group_logits_grid,
    neuron_frequencies,
    star_geometry,
    weight_norms,
)
from .parity import (
    PruningSteps,
    live_distractors,
    live_distractors_rel,
    parity_norms,
    parity_weights,
    pruning_step,
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
from .spikes import Cycle, Oscillations, Spike, detect_oscillations, detect_spikes


def analyze_run(run_dir, progress: bool = True):
    """See ``groklab.analysis.pipeline.analyze_run`` (imported lazily)."""
    from .pipeline import analyze_run as _analyze_run

    return _analyze_run(run_dir, progress)


def analyze_mlp(run, progress_bar=None):
    """See ``groklab.analysis.mlp_run.analyze_mlp`` (imported lazily)."""
    from .mlp_run import analyze_mlp as _analyze_mlp

    return _analyze_mlp(run, progress_bar)


__all__ = [
    "CosFitter", "Cycle", "KeyFrequencies", "LogitFit", "NeuronClusters", "NeuronFreqs", "Oscillations",
    "PruningSteps", "Spike", "SplitScores", "StarGeometry", "WLStats", "accuracy", "analyze_mlp",
    "analyze_run", "attention_fourier", "circularity", "clock_or_pizza", "clock_pizza", "collapsed",
    "component_norms", "cos_coeffs", "cross_entropy64", "detect_oscillations", "detect_spikes", "dft_gini",
    "distance_irrelevance", "embed_key_planes", "embed_pca", "excluded_logits", "fft1d", "fft2d",
    "fourier_basis", "fourier_basis_2d", "fourier_labels", "freq_norms", "gini", "gradient_symmetricity",
    "group_fve", "group_logits", "group_logits_grid", "key_frequencies", "live_distractors",
    "live_distractors_rel", "logit_fit", "logit_fourier_norms", "neuron_clusters", "neuron_freq_fractions",
    "neuron_frequencies", "neuron_logit_map", "parity_norms", "parity_weights", "phase_boundaries",
    "pruning_step", "restricted_logits", "restricted_scores_fast", "sample_triples", "sparse_freqs",
    "split_scores", "star_geometry", "sum_diff_table", "sum_directions", "sum_sq_weights", "weight_norms",
    "wl_stats",
]
