"""The report's figures as functions of a loaded run, for showing any one of them inline::

    import groklab
    from groklab.report import figures

    run = groklab.load_run("runs/induction-infinite")
    figures.loss_parts_figure(run).show()           # loss by part, linear and log y
    figures.attention_figure(run, step=1000, layer=1)  # every head of layer 1 on the example sequence
    figures.induction_scores_figure(run)            # in Jupyter, the last expression is drawn

Every function takes a ``Run`` (``groklab.load_run``) or a run directory and returns a plain
``plotly.graph_objects.Figure`` (titled; its one-line caption is in ``fig.layout.meta["caption"]``).

* Any task: ``loss_parts_figure``, ``phase_changes_figure``, ``attention_figure``.
* Repeated subsequences: ``induction_scores_figure``. Max element: ``skip_trigram_figure``.
* Modular arithmetic (the Fourier circuit, Nanda et al. 2023): ``loss_figure``, ``progress_figure``,
  ``fourier_norms_figure``, ``circles_figure``, ``clusters_figure``, ``neurons_figure``,
  ``wl_figure``, ``attention_to_a_figure``, ``logits_figure``.
* The MLP family (PAIR, Pearce et al. 2023), any task: ``mlp_training_figure``. Modular addition:
  ``mlp_weights_figure``, ``mlp_waves_figure``, ``mlp_dft_figure``, ``mlp_stars_figure``,
  ``mlp_group_logits_figure``, ``mlp_progress_figure``, and ``mlp_five_neurons_figure`` (the
  circle-embedding model). Sparse parity: ``parity_weights_figure``, ``parity_trajectory_figure``,
  ``live_distractors_figure``.

The zoo figures read ``RUN/analysis.json`` / ``analysis.npz`` when they exist and never start the
analysis: without it the phase changes are not marked, and the induction and skip-trigram scores are
computed from the checkpoints on a few sequences. The modular and MLP figures need the analysis and
run ``groklab analyze`` first if it is missing (as ``groklab report`` does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..runs import Run
from . import zoo_figures as Z
from .base import Figure
from .zoo_data import ZooData, as_run, attention_patterns, load_zoo_data

__all__ = [
    "attention_figure", "attention_to_a_figure", "circles_figure", "clusters_figure",
    "fourier_norms_figure", "induction_scores_figure", "live_distractors_figure", "logits_figure",
    "loss_figure", "loss_parts_figure", "mlp_dft_figure", "mlp_five_neurons_figure",
    "mlp_group_logits_figure", "mlp_progress_figure", "mlp_stars_figure", "mlp_training_figure",
    "mlp_waves_figure", "mlp_weights_figure", "neurons_figure", "parity_trajectory_figure",
    "parity_weights_figure", "phase_changes_figure", "progress_figure", "skip_trigram_figure",
    "wl_figure",
]

RunLike = Run | str | Path


def _plain(f: Figure, title: str | None = None) -> Any:
    """The plotly figure of ``f``, with its title on it and its caption in ``layout.meta``."""
    fig = f.fig
    top = max(int(fig.layout.margin.t or 50), 90)
    fig.update_layout(title=dict(text=title or f.title, x=0.01, xanchor="left", y=0.995, yanchor="top"),
                      margin=dict(t=top), meta={"id": f.id, "caption": f.caption})
    return fig


def _zoo(run: RunLike) -> ZooData:
    return load_zoo_data(as_run(run), analyze=False)


def _need(d: ZooData, task: str, fn: str) -> None:
    if d.name != task:
        raise ValueError(f"{fn}: {d.run.path} is a {d.name} run; this figure is for {task} runs")


def loss_parts_figure(run: RunLike):
    """Loss of every part and the total through training, on linear and log y.

    Train solid, test dotted; a diamond marks each curve's phase change (the steepest step of its
    drop) when the analysis has found one. Parts: ``digit0`` (carry) … ``digit5`` (units),
    ``copy1``/``copy2``, ``label0`` … ``label9``; modular arithmetic has the one part ``answer``.
    """
    return _plain(Z.loss_parts_figure(_zoo(run)))


def phase_changes_figure(run: RunLike):
    """Each phase change the analysis found (``analysis.json`` ``phase_changes``): a bar from its
    start to its end step, a diamond at its steepest step, one row per part, train and test side by
    side. Without an analysis the figure says so."""
    return _plain(Z.phase_changes_figure(_zoo(run)))


def attention_figure(run: RunLike, step: int | None = None, layer: int = 0, tokens=None):
    """Attention pattern (query rows, key columns) of every head of ``layer`` at checkpoint ``step``.

    Args:
        step: a checkpoint step (default the last); ``run.steps`` lists them.
        layer: 0 .. n_layers - 1.
        tokens: a ``[n_ctx]`` tensor of token ids; default the page's example sequence, drawn from
            the task with a fixed seed. Axes are labelled with the tokens' display names.

    Sequences longer than 45 tokens get one large panel and buttons to switch the head.
    """
    d = _zoo(run)
    step = d.run.steps[-1] if step is None else int(step)
    if not 0 <= layer < d.n_layers:
        raise ValueError(f"attention_figure: layer {layer}: the model has layers 0 .. {d.n_layers - 1}")
    pats = attention_patterns(d, step, tokens)
    f = Z.attention_figure(d, pats[layer], layer, tokens, head=Z.default_head(d, layer, pats))
    return _plain(f, f"{f.title} (step {step:,})")


def induction_scores_figure(run: RunLike):
    """Repeated subsequences: the previous-token score of each layer-0 head and the induction score of
    each layer-1 head at every analysed checkpoint (Olsson et al. 2022); the heads the analysis
    names are thick, the step the circuit formed is dashed and the loss drop shaded."""
    d = _zoo(run)
    _need(d, "repeated_subsequence", "induction_scores_figure")
    return _plain(Z.induction_scores_figure(d))


def skip_trigram_figure(run: RunLike):
    """Max element: for each label, the END position's mean attention on the special token through
    training, with a diamond where the analysis says that skip trigram formed."""
    d = _zoo(run)
    _need(d, "max_element", "skip_trigram_figure")
    return _plain(Z.skip_trigram_figure(d))


# --- modular arithmetic: the page's Fourier-circuit figures -------------------------------------

def _modular(run: RunLike, fn: str):
    from .data import load_report_data

    r = as_run(run)
    if r.config.task.name != "modular" or r.config.model.family != "transformer":
        raise ValueError(f"{fn}: {r.path} is a {r.config.model.family} {r.config.task.name} run; this figure "
                         "is for modular arithmetic with a transformer (try loss_parts_figure, "
                         "attention_figure; the MLP family: mlp_training_figure, ...)")
    return load_report_data(r.path)


def loss_figure(run: RunLike):
    """Modular arithmetic: train and test loss (log y) and accuracy, phases shaded (paper Fig. 2)."""
    from .figures_training import loss_figure as f

    return _plain(f(_modular(run, "loss_figure")))


def progress_figure(run: RunLike):
    """Modular arithmetic: the progress measures (excluded and restricted loss, Gini, Σw², excluded
    loss per key frequency; paper §5.1, Fig. 6)."""
    from .figures_training import progress_figure as f

    return _plain(f(_modular(run, "progress_figure")))


def fourier_norms_figure(run: RunLike):
    """Modular arithmetic: ‖F W_E‖ and ‖F W_L‖ per Fourier component, key frequencies in red (Fig. 3)."""
    from .figures_circuit import fourier_norms_figure as f

    return _plain(f(_modular(run, "fourier_norms_figure")))


def circles_figure(run: RunLike):
    """Modular arithmetic: each token's embedding on every key frequency's (cos, sin) plane."""
    from .figures_circuit import circles_figure as f

    return _plain(f(_modular(run, "circles_figure")))


def clusters_figure(run: RunLike):
    """Modular arithmetic: neurons per frequency cluster and the histogram of their FVE (Fig. 5a)."""
    from .figures_circuit import clusters_figure as f

    return _plain(f(_modular(run, "clusters_figure")))


def neurons_figure(run: RunLike, per_cluster: int = 2, max_total: int = 12):
    """Modular arithmetic: activations of the best-explained neurons of each cluster over (a, b) at
    the final checkpoint (``blocks.0.mlp.hook_post`` at '='; Fig. 4b)."""
    from .figures_circuit import neuron_heatmaps_figure
    from .trajectory import activations_at, pick_neurons

    d = _modular(run, "neurons_figure")
    neurons = pick_neurons(d, per_cluster=per_cluster, max_total=max_total)
    idx = [n for n, _ in neurons]
    acts = activations_at(d, d.final_step, idx, fast=False)
    return _plain(neuron_heatmaps_figure(d, idx, acts, [lab for _, lab in neurons]))


def wl_figure(run: RunLike):
    """Modular arithmetic: W_L = W_U W_out in the Fourier basis, neurons grouped by cluster (Fig. 5b)."""
    from .figures_circuit import wl_figure as f

    return _plain(f(_modular(run, "wl_figure")))


def attention_to_a_figure(run: RunLike):
    """Modular arithmetic: attention from '=' to a, per head, over the (a, b) grid (Fig. 4a)."""
    from .figures_circuit import attention_figure as f

    return _plain(f(_modular(run, "attention_to_a_figure")))


def logits_figure(run: RunLike):
    """Modular arithmetic: norms of the logits in the 2D Fourier basis over (a, b) (Fig. 4c)."""
    from .figures_circuit import logits_figure as f

    return _plain(f(_modular(run, "logits_figure")))


# --- the MLP family (PAIR, Pearce et al. 2023): the figures of report/mlp.py --------------------

def _mlp(run: RunLike, fn: str, task: str | None = None):
    from .mlp_data import load_mlp_data

    r = as_run(run)
    if r.config.model.family != "mlp" or (task is not None and r.config.task.name != task):
        want = f"model.family mlp {task or ''} runs".replace("  ", " ")
        raise ValueError(f"{fn}: {r.path} is a {r.config.model.family} {r.config.task.name} run; this figure "
                         f"is for {want}")
    return load_mlp_data(r.path)


def _index(d, step: int | None, fn: str) -> int:
    """The analysed checkpoint index of ``step`` (default the last)."""
    steps = [int(s) for s in d.steps]
    if step is None:
        return len(steps) - 1
    if int(step) not in steps:
        raise ValueError(f"{fn}: step {step} was not analysed; the analysed steps are "
                         f"{steps[:3]} ... {steps[-3:]}")
    return steps.index(int(step))


def mlp_training_figure(run: RunLike):
    """MLP family: train / test accuracy and loss (log y) vs step in PAIR's colours, the grokking
    step (modular) or the prune step and accuracy jump (sparse parity) dashed."""
    from .mlp_figures import modular_training_figure
    from .mlp_parity_figures import parity_training_figure

    d = _mlp(run, "mlp_training_figure")
    return _plain(modular_training_figure(d) if d.task == "modular" else parity_training_figure(d))


def mlp_weights_figure(run: RunLike, step: int | None = None):
    """MLP, modular: W_input and W_output heatmaps at checkpoint ``step`` (default the last), rows
    sorted by (frequency, angle), RdBu clipped at ±5 (PAIR) or at a scale that fits the weights."""
    from .mlp_figures import weights_figure

    d = _mlp(run, "mlp_weights_figure", "modular")
    c = _index(d, step, "mlp_weights_figure")
    f = weights_figure(d, c)
    return _plain(f, f"{f.title} (step {int(d.steps[c]):,})")


def mlp_waves_figure(run: RunLike, step: int | None = None):
    """MLP, modular: per key-frequency group, every neuron's W_input column vs input number and
    W_output row vs output number at checkpoint ``step`` (default the last)."""
    from .mlp_figures import waves_figure

    d = _mlp(run, "mlp_waves_figure", "modular")
    c = _index(d, step, "mlp_waves_figure")
    f, _ = waves_figure(d, c)
    return _plain(f, f"{f.title} (step {int(d.steps[c]):,})")


def mlp_dft_figure(run: RunLike):
    """MLP, modular: DFT heatmaps of W_input and W_output (final checkpoint), columns Const, cos 1, ..."""
    from .mlp_figures import dft_figure

    return _plain(dft_figure(_mlp(run, "mlp_dft_figure", "modular")))


def mlp_stars_figure(run: RunLike):
    """MLP, modular: per key frequency, each neuron at (cos k, sin k) of its DFT coefficient, W_input
    and W_output, connected in W_input angle order (the star)."""
    from .mlp_star_figures import stars_figure

    return _plain(stars_figure(_mlp(run, "mlp_stars_figure", "modular")))


def mlp_group_logits_figure(run: RunLike, a: int | None = None, b: int | None = None):
    """MLP, modular: the logits each frequency group alone gives the pair (a, b) (default p//4,
    p//2), and all logits; the answer (a + b) mod p in pink. The page recomputes them on input."""
    from .mlp_figures import group_logits_figure

    return _plain(group_logits_figure(_mlp(run, "mlp_group_logits_figure", "modular"), a, b))


def mlp_five_neurons_figure(run: RunLike, step: int | None = None):
    """MLP with the fixed circle embedding (``model.embed: circle``): the neurons' W_in-proj and
    W_out-proj (cos, sin) pairs at checkpoint ``step``, connected in W_in-proj angle order."""
    from .mlp_star_figures import five_figure, five_projections

    d = _mlp(run, "mlp_five_neurons_figure", "modular")
    if not d.is_circle:
        raise ValueError(f"mlp_five_neurons_figure: {d.run.path} has model.embed "
                         f"{d.run.config.model.embed!r}; this figure is for the circle embedding "
                         "(preset pair-five-neurons)")
    c = _index(d, step, "mlp_five_neurons_figure")
    P_in, P_out = five_projections(d, [c])
    f = five_figure(d, P_in, P_out)
    return _plain(f, f"{f.title} (step {int(d.steps[c]):,})")


def mlp_progress_figure(run: RunLike):
    """MLP, modular: DFT Gini of W_input and the weight L2 norm per checkpoint."""
    from .mlp_figures import progress_figure as f

    return _plain(f(_mlp(run, "mlp_progress_figure", "modular")))


def parity_weights_figure(run: RunLike, step: int | None = None):
    """MLP, sparse parity: W_input (digits and Bias) and the W_output column at checkpoint ``step``."""
    from .mlp_parity_figures import parity_weights_figure as pw

    d = _mlp(run, "parity_weights_figure", "sparse_parity")
    c = _index(d, step, "parity_weights_figure")
    f = pw(d, c)
    return _plain(f, f"{f.title} (step {int(d.steps[c]):,})")


def parity_trajectory_figure(run: RunLike):
    """MLP, sparse parity: every W_input weight vs step; parity bits #b4cc16, distractors grey, bias pink."""
    from .mlp_parity_figures import parity_trajectory_figure as f

    return _plain(f(_mlp(run, "parity_trajectory_figure", "sparse_parity")))


def live_distractors_figure(run: RunLike):
    """MLP, sparse parity: live distractor weights per checkpoint, test accuracy, prune step and jump."""
    from .mlp_parity_figures import live_distractors_figure as f

    return _plain(f(_mlp(run, "live_distractors_figure", "sparse_parity")))
