"""Hand-written forward/backward of the per-example part of the fast step.

``out[n] = sum_k w[n, k] * T[bag[n, k]]`` (``A @ T`` with the sparse bag matrix ``A``,
``[E*N, E*rows]``, K entries per row) is ``F.embedding_bag``; its backward uses
``dT = A^T @ dout`` (CSR matmul, plus a dense GEMM for the last-position entries that every
example shares) and ``dw = (dout @ T^T)`` sampled on ``A``'s pattern (``sampled_addmm``).

``_BagMLPLoss`` runs everything after the tables in one autograd node: the bag sum (one
``[E*N, d_mlp + V]`` buffer), ``post = relu(pre)``, ``logits = direct + post @ W_L`` and the
mean cross-entropy with log-softmax in the loss dtype. Its backward builds ``d_logits =
(softmax - onehot) / N`` directly and writes ``d_pre`` and ``d_logits`` into the two column
blocks of one preallocated ``dout`` (no concatenation), then does the sparse backward.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.transformer import activation
from .tables import TokenPlan


def bag_backward(plan: TokenPlan, T: Tensor, w: Tensor, dout: Tensor, need_T: bool, need_w: bool
                 ) -> tuple[Tensor | None, Tensor | None]:
    """``(dT, dw)`` of ``out = A @ T`` for ``dout [E*N, C]`` (contiguous)."""
    n_rows, n_ex = T.shape[0], dout.shape[0]
    dT = dw = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        if need_T:
            ks = plan.k_sparse
            At = torch.sparse_csr_tensor(plan.t_crow, plan.t_col,
                                         w[:, :ks].flatten()[plan.t_order], (n_rows, n_ex))
            dT = At @ dout
            if plan.dense_rows is not None:
                E, N, n_last = plan.E, plan.N, plan.n_last
                w_d = w[:, ks:].reshape(E, N, -1).transpose(1, 2)  # (E, K - ks, N)
                W_d = w.new_zeros(E, n_last, N).scatter_(1, plan.dense_rows, w_d)
                dT.view(E, plan.rows, -1)[:, plan.rows - n_last:].baddbmm_(W_d, dout.view(E, N, -1))
        if need_w:
            A = torch.sparse_csr_tensor(plan.crow, plan.bag.flatten(), w.new_zeros(w.numel()),
                                        (n_ex, n_rows))
            dw = torch.sparse.sampled_addmm(A, dout, T.T, beta=0.0).values().view_as(w)
    return dT, dw


class TableBag(torch.autograd.Function):
    """``out = A @ T`` split into ``out[:, :split]`` and the rest (``TableBag.apply(T, w, plan,
    split)``)."""

    @staticmethod
    def forward(ctx, T: Tensor, w: Tensor, plan: TokenPlan, split: int):
        out = F.embedding_bag(plan.bag, T, per_sample_weights=w, mode="sum")
        ctx.save_for_backward(T, w)
        ctx.plan = plan
        return out[:, :split].contiguous(), out[:, split:].contiguous()

    @staticmethod
    def backward(ctx, d_a: Tensor, d_b: Tensor):
        T, w = ctx.saved_tensors
        dout = torch.cat([d_a, d_b], 1)  # (E*N, C)
        dT, dw = bag_backward(ctx.plan, T, w, dout, *ctx.needs_input_grad[:2])
        return dT, dw, None, None


class BagMLPLoss(torch.autograd.Function):
    """``BagMLPLoss.apply(T, w, W_L, labels, plan, loss_dtype, act_fn) -> (loss [E],
    logits [E, N, V])``.

    ``W_L`` is None for attention-only models (then ``logits = A @ T``). ``logits`` carries no
    gradient; ``loss[e]`` is member ``e``'s mean cross-entropy, log-softmax in ``loss_dtype``.
    """

    @staticmethod
    def forward(ctx, T: Tensor, w: Tensor, W_L: Tensor | None, labels: Tensor, plan: TokenPlan,
                loss_dtype: torch.dtype, act_fn: str):
        E, N = plan.E, plan.N
        out = F.embedding_bag(plan.bag, T, per_sample_weights=w, mode="sum").view(E, N, -1)
        if W_L is None:
            logits, post, pre = out, None, None
        else:
            M = W_L.shape[1]
            pre = None if act_fn == "relu" else out[..., :M].contiguous()
            post = out[..., :M].relu() if pre is None else activation(act_fn, pre)  # (E, N, M)
            logits = torch.baddbmm(out[..., M:], post, W_L)  # (E, N, V)
        # log-softmax in loss_dtype with one exp pass; the softmax is kept for the backward
        z = logits.to(loss_dtype)
        z = z - z.amax(-1, keepdim=True)
        prob = z.exp()
        lse = prob.sum(-1).log_()  # (E, N)
        loss = (lse - z.gather(-1, labels.unsqueeze(-1)).squeeze(-1)).mean(-1)
        prob.div_(prob.sum(-1, keepdim=True))
        ctx.save_for_backward(T, w, W_L, post, prob, labels, pre)
        ctx.plan, ctx.act_fn = plan, act_fn
        ctx.mark_non_differentiable(logits)
        ctx.set_materialize_grads(False)  # no zero-filled [E, N, C] gradient for the logits
        return loss, logits

    @staticmethod
    def backward(ctx, d_loss: Tensor, _d_logits):
        T, w, W_L, post, prob, labels, pre = ctx.saved_tensors  # prob: softmax in the loss dtype
        plan = ctx.plan
        E, N, V = prob.shape
        scale = (d_loss / N).view(E, 1, 1)
        g = prob * scale  # d_logits = (softmax - onehot) * d_loss / N
        g.scatter_add_(-1, labels.unsqueeze(-1), (-scale).expand(E, N, 1))
        C = T.shape[1]
        dout = T.new_empty(E, N, C)
        d_logits = dout[..., C - V:]
        d_logits.copy_(g)
        dW_L = None
        if W_L is not None:
            M = C - V
            d_pre = dout[..., :M]
            torch.bmm(d_logits, W_L.transpose(1, 2), out=d_pre)  # d_post, in place
            if pre is None:  # relu: d_pre = d_post * (post > 0), in place
                torch.ops.aten.threshold_backward.grad_input(d_pre, post, 0, grad_input=d_pre)
            else:
                with torch.enable_grad():
                    x = pre.detach().requires_grad_()
                    d_pre.copy_(torch.autograd.grad(activation(ctx.act_fn, x), x, d_pre)[0])
            if ctx.needs_input_grad[2]:
                dW_L = torch.bmm(post.transpose(1, 2), d_logits)
        dT, dw = bag_backward(plan, T, w, dout.view(E * N, C), *ctx.needs_input_grad[:2])
        return dT, dw, dW_L, None, None, None, None
