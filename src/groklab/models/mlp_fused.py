"""The MLP family's training loss in one autograd node (pair tasks: modular arithmetic).

``PairMLPLoss`` takes the collapsed tables ``W_input`` ``[E, p, H]`` and ``W_output^T``
``[E, C, H]`` and, a few members at a time (so that a chunk's ``[c, N, C]`` buffers stay in
cache), gathers ``pre = W_input[a] + W_input[b]``, applies the activation, forms the logits, and
takes the cross-entropy with one exp pass. Under a float64 loss dtype that pass runs in the logits'
dtype in a form without cancellation (``softmax_ce_exact``: ``log1p`` of the other classes' sum
where the label is the max, ``p_y - 1`` as minus that sum), which keeps the float64 log-softmax's
precision without its two casts and float64 passes (pair2023 at N = 256, one thread: 1.19x per
step); a float32 loss dtype keeps the plain float32 log-softmax. The table gradients are computed in the
same pass (``d_logits = (softmax - onehot) / N``; ``dW_output^T = d_logits^T post``; ``d_pre``
scattered back onto the rows of a and b with ``index_add_``), and the backward only scales them by
``d_loss``. The numbers are those of the plain autograd path (``mlp_logits`` + ``slot_nll``; tested
equal to 1e-5), with less memory traffic: no float64 copy of the logits kept for the backward, no one-hot
rows, no scatter of the gathers' gradients over the whole ensemble at once.

``BitsMLPLoss`` is the same for a bit-vector task (sparse parity): ``pre = x @ W_input`` with
``x`` the bits and the bias feature ``[E, N, n_bits + 1]``, one logit ``z = act(pre) @ W_output``,
class logits ``(0, z)``. ``z`` and ``d post = d_z w_out^T`` are a multiply-and-sum and a
broadcast product where autograd's are batched matmuls with an inner or outer dimension of 1,
and the ``[c, N, d_hidden]`` buffers are a chunk's, not the whole ensemble's: a 15-member
``pair-parity-sweep`` group (N 1,250, 64 neurons) steps in ~8 ms against autograd's ~13.5 ms on
one thread, the heap retained in both.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..config import Config
from .softmax_ce import softmax_ce

CHUNK = 4  # members per pass: pair2023's [4, 911, 67] softmax buffer is 1 MB in float32, 2 MB in
# float64 (2, 8, 16 were no faster, measured with the float64 buffer)


class _GradsInForward(torch.autograd.Function):
    """A loss whose forward also computes the weight gradients of ``loss.sum()``: ``_keep``
    saves them (the second output, logits or z, carries no gradient and none is materialised)
    and the backward only scales them by each member's ``d_loss``."""

    @staticmethod
    def _keep(ctx, dWi: Tensor, dWo: Tensor, out: Tensor) -> None:
        ctx.save_for_backward(dWi, dWo)
        ctx.mark_non_differentiable(out)
        ctx.set_materialize_grads(False)  # no zero-filled [E, N, C] gradient for ``out``

    @staticmethod
    def backward(ctx, d_loss: Tensor, _d_out):
        dWi, dWo = ctx.saved_tensors
        s = d_loss.to(dWi.dtype).view(-1, 1, 1)
        return dWi * s, dWo * s, None, None, None, None


def _pair_chunk(W_input: Float[Tensor, "c V H"], W_outT: Float[Tensor, "c C H"], tokens: Int[Tensor, "c N 3"],
                labels: Int[Tensor, "c N"], loss_dtype: torch.dtype, act_fn: str, logits: Tensor,
                dWi: Tensor, dWo: Tensor) -> Float[Tensor, " c"]:
    """One chunk of ``PairMLPLoss``: the members' mean cross-entropy; writes their logits
    ``[c, N, C]`` and the gradients of the summed loss for ``W_input`` and ``W_outT`` into
    ``logits``, ``dWi``, ``dWo`` (contiguous)."""
    c, V, H = W_input.shape
    N = labels.shape[1]
    Wi = W_input.contiguous().view(c * V, H)
    offs = (torch.arange(c, device=W_input.device) * V).view(c, 1)
    ia = (tokens[:, :, 0] + offs).reshape(-1)
    ib = (tokens[:, :, 1] + offs).reshape(-1)
    pre = (Wi.index_select(0, ia) + Wi.index_select(0, ib)).view(c, N, H)
    post = pre.relu() if act_fn == "relu" else pre * pre
    lg = torch.bmm(post, W_outT.transpose(1, 2), out=logits)  # (c, N, C)
    lab = labels.unsqueeze(-1)
    l_ex, g = softmax_ce(lg, lab, N, loss_dtype)
    torch.bmm(g.transpose(1, 2), post, out=dWo)
    d_pre = torch.bmm(g, W_outT)  # d post, (c, N, H)
    d_pre.mul_(pre > 0) if act_fn == "relu" else d_pre.mul_(2 * pre)
    acc = dWi.view(c * V, H).zero_()
    acc.index_add_(0, ia, d_pre.view(-1, H)).index_add_(0, ib, d_pre.view(-1, H))
    return l_ex.to(loss_dtype).mean(-1)


class PairMLPLoss(_GradsInForward):
    """``PairMLPLoss.apply(W_input, W_outT, tokens, labels, loss_dtype, act_fn) -> (loss [E],
    logits [E, N, C])``; ``loss[e]`` is member e's mean cross-entropy (log-softmax in
    ``loss_dtype``), ``logits`` carries no gradient."""

    @staticmethod
    def forward(ctx, W_input: Tensor, W_outT: Tensor, tokens: Tensor, labels: Tensor,
                loss_dtype: torch.dtype, act_fn: str):
        E, V, H = W_input.shape
        N, C = labels.shape[1], W_outT.shape[1]
        loss = torch.empty(E, dtype=loss_dtype, device=W_input.device)
        logits = W_input.new_empty(E, N, C)
        dWi, dWo = W_input.new_empty(E, V, H), W_outT.new_empty(E, C, H)
        for s in range(0, E, CHUNK):
            sl = slice(s, min(E, s + CHUNK))
            loss[sl] = _pair_chunk(W_input[sl], W_outT[sl], tokens[sl], labels[sl], loss_dtype, act_fn,
                                   logits[sl], dWi[sl], dWo[sl])
        _GradsInForward._keep(ctx, dWi, dWo, logits)
        return loss, logits


class BitsMLPLoss(_GradsInForward):
    """``BitsMLPLoss.apply(W_input, W_output, x, labels, loss_dtype, act_fn) -> (loss [E],
    z [E, N, 1])`` for a one-logit MLP: ``W_input`` ``[E, d_in, H]``, ``W_output`` ``[E, H, 1]``,
    ``x`` ``[E, N, d_in]`` (no gradient), ``labels`` ``[E, N]`` in {0, 1}. ``loss[e]`` is member
    e's mean cross-entropy over the class logits ``(0, z)`` (= binary cross-entropy on z), taken
    in ``loss_dtype`` as ``logaddexp(0, z) - y z``; ``z`` carries no gradient."""

    @staticmethod
    def forward(ctx, W_input: Tensor, W_output: Tensor, x: Tensor, labels: Tensor,
                loss_dtype: torch.dtype, act_fn: str):
        E, N = labels.shape
        dev = W_input.device
        loss = torch.empty(E, dtype=loss_dtype, device=dev)
        z = W_input.new_empty(E, N, 1)
        dWi = torch.empty_like(W_input)
        dWo = torch.empty_like(W_output)
        for s in range(0, E, CHUNK):
            sl = slice(s, min(E, s + CHUNK))
            xs, Wo = x[sl], W_output[sl]
            pre = torch.bmm(xs, W_input[sl])  # (c, N, H)
            post = pre.relu_() if act_fn == "relu" else pre * pre  # relu: pre is not needed again
            WoT = Wo.transpose(1, 2)  # (c, 1, H)
            # z as multiply-and-sum: a batched matmul with one output column is ~3x slower here
            torch.sum(post * WoT, -1, keepdim=True, out=z[sl])
            zz = z[sl].to(loss_dtype).squeeze(-1)  # (c, N)
            y = labels[sl].to(loss_dtype)
            loss[sl] = (torch.logaddexp(torch.zeros_like(zz), zz) - y * zz).mean(-1)  # log(e^0 + e^z) - z_y
            g = (torch.sigmoid(zz) - y).div_(N).to(W_input.dtype).unsqueeze(-1)  # d mean-loss / dz
            c, H = post.shape[0], post.shape[2]
            torch.bmm(g.transpose(1, 2), post, out=dWo[sl].view(c, 1, H))  # [c, H, 1] as [c, 1, H]
            d_pre = torch.mul(g, WoT, out=post if act_fn != "relu" else None)
            if act_fn == "relu":
                d_pre = torch.ops.aten.threshold_backward(d_pre, post, 0.0)
            else:
                d_pre.mul_(pre).mul_(2.0)
            torch.bmm(xs.transpose(1, 2), d_pre, out=dWi[sl])
        _GradsInForward._keep(ctx, dWi, dWo, z)
        return loss, z


def has_fused_mlp_loss(cfg: Config, n_members: int = 2) -> bool:
    """Whether the Trainer takes a fused loss: always for a pair task; for a bit-vector task
    only with two or more members: one model's step is not faster fused (0.9-1.3 ms either way on
    one thread at N 1,250, d_hidden 64; noisy), and a single run keeps its earlier numbers."""
    kind = cfg.task.mlp_io()[2] if cfg.model.family == "mlp" else None
    return kind == "pair" or (kind == "bits" and n_members >= 2)


def fused_mlp_loss(cfg: Config, params: dict[str, Tensor], tokens: Int[Tensor, "E N n_ctx"],
                   labels: Int[Tensor, "E N"], loss_dtype: torch.dtype,
                   inputs: Float[Tensor, "E N d_in"] | None = None
                   ) -> tuple[Float[Tensor, " E"], Float[Tensor, "E N 1 C"]]:
    """Per-member mean cross-entropy and the logits (``[E, N, 1, C]``, no gradient) of an MLP
    task; the tables come from ``models.mlp.ensemble_tables`` (autograd carries their gradients
    to the weights). ``inputs``: a bit-vector task's ``models.mlp.mlp_inputs`` rows, if already
    built (built from ``tokens`` otherwise); unused for a pair task."""
    from .mlp import _class_logits, ensemble_tables, mlp_inputs

    W_input, W_output = ensemble_tables(cfg, params)
    if cfg.task.mlp_io()[2] == "bits":
        x = mlp_inputs(cfg, tokens, W_input.dtype) if inputs is None else inputs
        loss, z = BitsMLPLoss.apply(W_input, W_output, x, labels, loss_dtype, cfg.model.act_fn)
        return loss, _class_logits(z).unsqueeze(2)
    loss, logits = PairMLPLoss.apply(W_input, W_output.transpose(1, 2), tokens, labels, loss_dtype,
                                     cfg.model.act_fn)
    return loss, logits.unsqueeze(2)
