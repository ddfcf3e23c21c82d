"""Analysis of PAIR's one-layer MLPs (``act(W_input[a] + W_input[b]) @ W_output``).

Pure functions on state dicts and tensors, no plotting, no file I/O. Source: PAIR, "Do Machine
Learning Models Memorize or Generalize?" (2023), its ``MLP_Modular_Addition*.ipynb`` analysis cells
and the ``mod-bot`` charts (``../shared/reference/pair.md`` §1.1, §1.3, §1.4, §2).

State-dict contract (float32, no biases): ``embed.W_E`` [p, d_embed], ``mlp.W_in`` [d_embed, H]
(or [p, H] when collapsed_in), ``mlp.W_out`` [H, d_embed] (or [H, p] when collapsed_out), and for
an untied unembedding ``unembed.W_U`` [d_embed, p]. The collapsed views are ``W_input = W_E @ W_in``
[p, H] and ``W_output = W_out @ W_E.T`` (or ``W_out @ W_U``) [H, p]. Sparse parity (``W_in``
[n_bits + 1, H], ``W_out`` [H, 1]) has its own helpers in ``analysis.parity``; the run-level driver
is ``analysis.mlp_run``.

Fourier conventions are ``groklab.analysis.fourier``'s: rows ``Const, cos 1, sin 1, ...`` of an
orthonormal basis ``F``, row ``2k-1`` = cos k, row ``2k`` = sin k. Frequencies are reported
1-based, ``k`` in ``1..(p-1)/2``, as in the transformer analysis (PAIR stores ``k - 1``).
Angles are radians in ``(-pi, pi]`` (``atan2``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .fourier import component_norms, freq_norms
from .progress import gini

ACTIVATIONS = {"relu": torch.relu, "quadratic": lambda x: x * x}  # PAIR: ReLU; Gromov / §1.4: x^2
TWO_PI = 2 * math.pi


def _wrap(x: Tensor) -> Tensor:
    """Angles wrapped to ``(-pi, pi]``."""
    return math.pi - torch.remainder(math.pi - x, TWO_PI)


def _infer_collapsed(W: Tensor, W_E: Tensor | None, axis: int, name: str) -> bool:
    """Whether ``W`` (``mlp.W_in`` on axis 0, ``mlp.W_out`` on axis 1) is already [.., p]."""
    if W_E is None:
        return True
    p, d = W_E.shape
    if W.shape[axis] == d and d != p:
        return False
    if W.shape[axis] == p and d != p:
        return True
    if d == p:
        raise ValueError(f"{name} and embed.W_E are both {p} wide (d_embed == p): pass "
                         f"collapsed_in= / collapsed_out= to say whether {name} is collapsed")
    raise ValueError(f"{name} has shape {tuple(W.shape)} but embed.W_E is [{p}, {d}]; expected "
                     f"{d} (factored) or {p} (collapsed) on axis {axis}")


def collapsed(state: dict[str, Tensor], collapsed_in: bool | None = None,
              collapsed_out: bool | None = None
              ) -> tuple[Float[Tensor, "p H"], Float[Tensor, "H p"]]:
    """The collapsed input and output matrices of a modular MLP, in float64.

    Args:
        state: the model's state dict (keys ``embed.W_E``, ``mlp.W_in``, ``mlp.W_out``,
            optionally ``unembed.W_U``).
        collapsed_in, collapsed_out: whether ``mlp.W_in`` / ``mlp.W_out`` already act on tokens;
            ``None`` infers it from the shapes (needed only when ``d_embed == p``).

    Returns:
        ``(W_input, W_output)``: ``W_input`` [p, H] = ``W_E @ W_in`` (or ``W_in``),
        ``W_output`` [H, p] = ``W_out @ W_E.T``, ``W_out @ W_U`` (untied) or ``W_out``.

    Raises:
        ValueError: missing keys, ambiguous or inconsistent shapes, or a non-modular state.

    Source: PAIR ``MLP_Modular_Addition.ipynb`` analysis cells (``W_hidden_embed = embed @ hidden``,
    ``W_output_embed = out @ embed.T``); pair.md §1.1.
    """
    if "mlp.W_in" not in state or "mlp.W_out" not in state:
        raise ValueError(f"not an MLP state dict (keys {sorted(state)}): need mlp.W_in and mlp.W_out")
    f64 = lambda key: state[key].to(torch.float64) if key in state else None  # noqa: E731
    W_E, W_U, W_in, W_out = f64("embed.W_E"), f64("unembed.W_U"), f64("mlp.W_in"), f64("mlp.W_out")
    if collapsed_in is None:
        collapsed_in = _infer_collapsed(W_in, W_E, 0, "mlp.W_in")
    if not collapsed_in and W_E is None:
        raise ValueError("collapsed_in=False needs embed.W_E in the state")
    W_input = W_in if collapsed_in else W_E @ W_in  # (p, H)
    if W_U is not None:
        if collapsed_out:
            raise ValueError("the state has unembed.W_U, so mlp.W_out is not collapsed: drop collapsed_out")
        W_output = W_out @ W_U  # (H, p)
    else:
        if collapsed_out is None:
            collapsed_out = _infer_collapsed(W_out, W_E, 1, "mlp.W_out")
        if not collapsed_out and W_E is None:
            raise ValueError("collapsed_out=False needs embed.W_E (tied) or unembed.W_U in the state")
        W_output = W_out if collapsed_out else W_out @ W_E.T  # (H, p)
    p, H = W_input.shape
    if W_output.shape != (H, p) or p < 3:
        raise ValueError(f"W_input {tuple(W_input.shape)} and W_output {tuple(W_output.shape)} are not "
                         "[p, H] and [H, p] with p >= 3. Sparse-parity states: use "
                         "analysis.parity.parity_weights; the five-neuron model: put its fixed embedding "
                         "in the state as embed.W_E")
    return W_input, W_output


def dft(W_input: Float[Tensor, "p H"], F: Float[Tensor, "p p"]) -> Float[Tensor, "p H"]:
    """DFT of ``W_input`` over the input-token axis: ``F @ W_input``, rows = Fourier components.

    Source: PAIR ``dft_W_input`` (``fourier_basis @ W_hidden_embed``); the ``mod-bot-dft`` heatmap
    shows its transpose (rows = neurons).
    """
    return F.to(torch.float64) @ W_input.to(torch.float64)


def dft_out(W_output: Float[Tensor, "H p"], F: Float[Tensor, "p p"]) -> Float[Tensor, "H p"]:
    """DFT of ``W_output`` over the output-class axis: ``W_output @ F.T``, columns = components."""
    return W_output.to(torch.float64) @ F.to(torch.float64).T


@dataclass(frozen=True, eq=False)
class NeuronFreqs:
    """Each neuron's frequency and phase (all tensors ``[H]``; angles in radians, ``(-pi, pi]``).

    Attributes:
        k: int, 1-based frequency ``floor((argmax_row + 1) / 2)``; **0 means the Const row won**
            (a "constant" neuron); then the cos coefficients are the Const ones and sin is 0.
        argmax_row: int, the Fourier row of ``max |F @ W_input|``.
        max_dft: that ``|coefficient|`` (orthonormal-basis units; PAIR's ``max_val``).
        in_cos, in_sin / out_cos, out_sin: ``W_input`` / ``W_output`` DFT coefficients at k.
        in_angle, out_angle: ``atan2(sin, cos)`` of those. in_norm, out_norm: ``sqrt(cos^2 + sin^2)``.
        sort_order: int, neuron indices sorted by ``(k, in_angle)`` (PAIR's display order).
    """

    k: Tensor
    argmax_row: Tensor
    max_dft: Tensor
    in_cos: Tensor
    in_sin: Tensor
    out_cos: Tensor
    out_sin: Tensor
    in_angle: Tensor
    out_angle: Tensor
    in_norm: Tensor
    out_norm: Tensor
    sort_order: Tensor


def neuron_frequencies(W_input: Float[Tensor, "p H"], W_output: Float[Tensor, "H p"],
                       F: Float[Tensor, "p p"]) -> NeuronFreqs:
    """PAIR's per-neuron frequency (argmax of ``|DFT(W_input)|``) and phases at that frequency.

    The argmax runs over **all** p rows, Const included (PAIR's rule, nothing excluded): a neuron
    whose largest coefficient is Const gets ``k = 0``.

    Args:
        W_input: [p, H] collapsed input matrix. W_output: [H, p]. F: ``fourier_basis(p)[0]``.

    Returns:
        ``NeuronFreqs`` with ``[H]`` tensors.

    Source: PAIR ``save_web_model`` (freq = ``floor((argmax - 1) / 2)``, 0-indexed; the JS shows
    ``freq + 1``; angle = ``atan2(sin_h, cos_h)``; neurons sorted by (freq, angle)); pair.md §1.1.
    """
    D_in = dft(W_input, F)  # (p, H)
    D_out = dft_out(W_output, F)  # (H, p)
    mx, row = D_in.abs().max(dim=0)
    k = torch.div(row + 1, 2, rounding_mode="floor")
    H = W_input.shape[1]
    idx = torch.arange(H)
    c_row, s_row = (2 * k - 1).clamp(min=0), 2 * k  # k = 0: cos <- Const row, sin <- 0
    const = k == 0
    zero = torch.zeros(H, dtype=torch.float64)
    in_cos, out_cos = D_in[c_row, idx], D_out[idx, c_row]
    in_sin = torch.where(const, zero, D_in[s_row, idx])
    out_sin = torch.where(const, zero, D_out[idx, s_row])
    in_angle, out_angle = torch.atan2(in_sin, in_cos), torch.atan2(out_sin, out_cos)
    by_angle = torch.argsort(in_angle, stable=True)
    order = by_angle[torch.argsort(k[by_angle], stable=True)]
    return NeuronFreqs(k, row, mx, in_cos, in_sin, out_cos, out_sin, in_angle, out_angle,
                       torch.hypot(in_cos, in_sin), torch.hypot(out_cos, out_sin), order)


def neuron_clusters(nf: NeuronFreqs) -> dict[int, list[int]]:
    """``{k: [neuron indices, ascending]}`` for every k that has a neuron (k = 0: constant neurons)."""
    return {int(k): torch.nonzero(nf.k == k)[:, 0].tolist() for k in torch.unique(nf.k).tolist()}


def key_frequencies(nf: NeuronFreqs, min_neurons: int = 2, min_max_dft: float | None = None) -> list[int]:
    """Frequencies (ascending, k >= 1) with at least ``min_neurons`` neurons.

    Args:
        nf: from ``neuron_frequencies``.
        min_neurons: the default 2 drops a lone stray neuron: one neuron cannot make the star (the
            ``x^2`` construction needs >= 3 evenly spaced directions, ReLU 5; pair.md §1.4), and 2
            is what the transformer rule ``max(2, ceil(0.02 d_mlp))`` gives at PAIR's 24 neurons.
        min_max_dft: if set, only neurons with ``max_dft > min_max_dft`` count. PAIR's seed sweep
            (``mod-bot/seeds/parse.js``) counted a frequency for any neuron with ``max_val > 10``
            (its "TODO: what should cut off for max_val be?"): ``min_neurons=1, min_max_dft=10``
            reproduces it. The units are ``F``'s (orthonormal), as in PAIR; the cut depends on the
            weights' scale, so it is off by default.
    """
    live = nf.k > 0
    if min_max_dft is not None:
        live = live & (nf.max_dft > min_max_dft)
    ks, n = torch.unique(nf.k[live], return_counts=True)
    return [int(k) for k, c in zip(ks.tolist(), n.tolist(), strict=True) if c >= min_neurons]


@dataclass(frozen=True, eq=False)
class StarGeometry:
    """One frequency group's star (tensors ``[n]`` in in-angle order; radians).

    Attributes:
        k: the frequency. neurons: int neuron indices sorted by ``in_angle``.
        in_angle, out_angle, in_norm, out_norm: from ``NeuronFreqs``, in that order.
        spacing: gaps between consecutive in-angles, the last wrapping round (sums to 2 pi).
        spacing_deviation: ``max |spacing - 2 pi / n|`` (0 for evenly spaced directions).
        rotation_offset: circular mean of ``out_angle - 2 in_angle``. 0 when the group's logit wave
            peaks at ``c = a + b``; a constant offset d moves the peak by ``d p / (2 pi k)`` classes.
        rotation_residual: ``out_angle - 2 in_angle - rotation_offset`` wrapped to ``(-pi, pi]``.
        rotation_max_residual, rotation_rms_residual: ``max |r|`` and ``sqrt(mean r^2)``.
    """

    k: int
    neurons: Tensor
    in_angle: Tensor
    out_angle: Tensor
    in_norm: Tensor
    out_norm: Tensor
    spacing: Tensor
    spacing_deviation: float
    rotation_offset: float
    rotation_residual: Tensor
    rotation_max_residual: float
    rotation_rms_residual: float


def star_geometry(nf: NeuronFreqs, k: int) -> StarGeometry:
    """Spacing and doubled-rotation fit of the neurons of frequency ``k``.

    A perfect star (N evenly spaced input directions, output directions at twice the angle) has
    ``spacing_deviation = 0`` and zero residuals. Why doubling: with ``W_input[:, j] ~ cos(w a - al_j)``
    and ``W_output[j] ~ cos(w c - be_j)``, the product term of ``act(.)`` carries
    ``cos(w (a + b) - 2 al_j)``, and summed against ``W_output`` it gives
    ``cos(w (a + b - c) - 2 al_j + be_j)``: constructive for every neuron iff ``be_j - 2 al_j`` is
    one constant, and peaked at ``c = a + b`` iff that constant is 0.

    Raises:
        ValueError: no neuron has frequency k.

    Source: PAIR "Modular Addition With Five Neurons" and "It's Full of Stars" (``mod-bot-freqs``
    charts); pair.md §1.4, §2.7-8.
    """
    members = torch.nonzero(nf.k == k)[:, 0]
    if members.numel() == 0:
        raise ValueError(f"no neuron has frequency {k}; the groups are {sorted(neuron_clusters(nf))}")
    ang = nf.in_angle[members]
    srt = torch.argsort(ang, stable=True)
    members, ang = members[srt], ang[srt]
    out = nf.out_angle[members]
    n = members.numel()
    spacing = torch.cat([ang[1:] - ang[:-1], (ang[:1] + TWO_PI) - ang[-1:]])
    d = out - 2 * ang
    offset = math.atan2(float(torch.sin(d).mean()), float(torch.cos(d).mean()))
    r = _wrap(d - offset)
    return StarGeometry(
        k=k, neurons=members, in_angle=ang, out_angle=out, in_norm=nf.in_norm[members],
        out_norm=nf.out_norm[members], spacing=spacing,
        spacing_deviation=float((spacing - TWO_PI / n).abs().max()), rotation_offset=offset,
        rotation_residual=r, rotation_max_residual=float(r.abs().max()),
        rotation_rms_residual=float(r.pow(2).mean().sqrt()))


def _act(act: str):
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[act]


def _hidden(W_input: Float[Tensor, "p H"], act: str, a: Int[Tensor, " n"] | int,
            b: Int[Tensor, " n"] | int) -> Float[Tensor, "n H"]:
    """``act(W_input[a] + W_input[b])`` (= ``act(W_E[a] @ W_in + W_E[b] @ W_in)``) in float64."""
    a, b = torch.as_tensor(a).reshape(-1), torch.as_tensor(b).reshape(-1)
    return _act(act)(W_input[a] + W_input[b])  # (n, H)


def _mask(H: int, neurons: Sequence[int] | Tensor | None) -> Tensor:
    m = torch.zeros(H, dtype=torch.float64)
    m[torch.as_tensor(list(range(H)) if neurons is None else neurons, dtype=torch.long)] = 1.0
    return m


def group_logits(state: dict[str, Tensor], act: str, neurons: Sequence[int] | Tensor | None,
                 a: int, b: int, *, collapsed_in: bool | None = None, collapsed_out: bool | None = None
                 ) -> Float[Tensor, " p"]:
    """Logits over the p classes that only ``neurons`` produce for the pair (a, b).

    The hidden layer is masked to those neurons (``None``: all of them), then multiplied by
    ``W_output``. Logits of disjoint groups add up to the full model's. ``act``: ``"relu"`` or
    ``"quadratic"``. ``collapsed_in`` / ``collapsed_out``: as in ``collapsed`` (pass the run's
    ``model.collapsed_*`` flags; ``None`` infers them and fails when ``d_embed == p``).
    Source: PAIR ``mod-bot-logits`` (pair.md §2.8).
    """
    W_input, W_output = collapsed(state, collapsed_in, collapsed_out)
    h = _hidden(W_input, act, a, b)[0]  # (H,)
    return (h * _mask(h.numel(), neurons)) @ W_output


def group_logits_grid(state: dict[str, Tensor], act: str, neurons: Sequence[int] | Tensor | None = None,
                      *, collapsed_in: bool | None = None, collapsed_out: bool | None = None
                      ) -> Float[Tensor, "pairs p"]:
    """``group_logits`` for every pair: ``[p*p, p]`` float64, row ``a*p + b`` (lexicographic).
    ``collapsed_in`` / ``collapsed_out``: as in ``collapsed``."""
    W_input, W_output = collapsed(state, collapsed_in, collapsed_out)
    p = W_input.shape[0]
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    h = _hidden(W_input, act, a, b)  # (p*p, H)
    return (h * _mask(h.shape[1], neurons)) @ W_output


def group_fve(logits_grid: Float[Tensor, "pairs p"], p: int, k: int, *, phase_free: bool = False,
              per_pair: bool = True) -> float:
    """Fraction of variance of the per-pair-centred logits explained by a wave at frequency k.

    The regressors are ``cos(2 pi k (a + b - c) / p)`` (the issue's wave, and ``phase_free=True``
    adds ``sin(2 pi k (a + b - c) / p)``, which allows a shifted peak). Each pair's logits are
    centred over c first (a softmax-invariant shift the waves cannot express), then
    ``FVE = 1 - SSE / SST`` pooled over all pairs.

    ``per_pair=True`` (default) fits one coefficient per pair: the shape of each bar chart of
    PAIR's ``mod-bot-logits`` (one pair at a time). ``per_pair=False`` fits one coefficient for the
    whole grid, like the transformer ``logit_fit``; a perfect x^2 star then scores exactly 2/3, not
    1, because its wave's amplitude is ``cos^2(pi k (a - b) / p)`` (pair.md §1.4), which varies
    over pairs.

    Args:
        logits_grid: ``[p*p, p]``, row ``a*p + b`` (e.g. ``group_logits_grid``). k: 1..(p-1)/2.

    Returns:
        The FVE in [0, 1]; 0 for all-constant logits.
    """
    L = logits_grid.to(torch.float64)
    L = L - L.mean(dim=1, keepdim=True)  # (p*p, p)
    s = (torch.arange(p).repeat_interleave(p) + torch.arange(p).repeat(p))[:, None]  # (p*p, 1)
    arg = TWO_PI * k * (s - torch.arange(p)[None]).to(torch.float64) / p  # (p*p, p)
    sst = float(L.pow(2).sum())
    if sst == 0.0:
        return 0.0
    explained = 0.0
    for X in ([torch.cos(arg), torch.sin(arg)] if phase_free else [torch.cos(arg)]):
        # cos and sin of the same argument are orthogonal over c, so the fits separate
        if per_pair:
            explained += float(((L * X).sum(1) ** 2 / X.pow(2).sum(1)).sum())
        else:
            explained += float((L * X).sum() ** 2 / X.pow(2).sum())
    return explained / sst


def grid_accuracy(state: dict[str, Tensor], act: str, *, collapsed_in: bool | None = None,
                  collapsed_out: bool | None = None, labels: Int[Tensor, " pairs"] | None = None) -> float:
    """Accuracy of ``argmax`` over the full p^2 grid (all neurons; a tie goes to the lowest class).

    Args:
        state, act: as in ``group_logits_grid``. collapsed_in, collapsed_out: as in ``collapsed``.
        labels: ``[p*p]`` correct classes, row ``a*p + b``; default ``(a + b) mod p``.
    """
    L = group_logits_grid(state, act, collapsed_in=collapsed_in, collapsed_out=collapsed_out)
    p = L.shape[1]
    if labels is None:
        labels = (torch.arange(p).repeat_interleave(p) + torch.arange(p).repeat(p)) % p
    return float((L.argmax(1) == labels).to(torch.float64).mean())


def dft_gini(W_input: Float[Tensor, "p H"], F: Float[Tensor, "p p"]) -> float:
    """Gini coefficient of the per-frequency norms of ``F @ W_input`` (Const excluded).

    Norm of frequency k = ``sqrt(||row cos k||^2 + ||row sin k||^2)``, norms over neurons, for
    k = 1..(p-1)/2; then ``progress.gini`` (Hurley & Rickard). 0 = spread evenly, ``1 - 2/(p-1)``
    = one frequency. Const is left out as in the transformer ``gini_W_E`` (a token-independent
    offset). Source: Nanda et al. 2023 §5.1 (Gini of the Fourier norms); PAIR's post: weight decay
    makes the DFT "much sparser as the model generalizes".
    """
    return gini(freq_norms(component_norms(W_input.to(torch.float64), F)))


def weight_norms(state: dict[str, Tensor]) -> dict:
    """L2 and L1 norms of all tensors in the state, and per tensor (sorted names).

    Returns:
        ``{"l2": ||w||_2, "l1": ||w||_1, "l2_by_param": {name: ...}, "l1_by_param": {...}}`` over
        every tensor given (drop a fixed embedding first if it should not count). Source: PAIR's
        notebook logs the L2 and L1 norm of all parameters (pair.md §1.1).
    """
    names = sorted(state)
    sq = {n: float(state[n].to(torch.float64).pow(2).sum()) for n in names}
    l1 = {n: float(state[n].to(torch.float64).abs().sum()) for n in names}
    return {"l2": math.sqrt(sum(sq.values())), "l1": sum(l1.values()),
            "l2_by_param": {n: math.sqrt(v) for n, v in sq.items()}, "l1_by_param": l1}
