"""``models.softmax_ce.softmax_ce_exact``: the compiled one-pass kernel (``attn_kernel.
softmax_ce_rows``) and the torch form it replaces, each against the float64 log-softmax, and
against each other."""

from __future__ import annotations

import pytest
import torch

from groklab.models import attn_kernel, softmax_ce
from groklab.models.softmax_ce import softmax_ce_exact, softmax_ce_exact_torch

needs_kernel = pytest.mark.skipif(not attn_kernel.available(),
                                  reason="the compiled kernel could not be built here")


def _float64_reference(lg, lab, N):
    logp = lg.double().log_softmax(-1)
    loss = -logp.gather(-1, lab).squeeze(-1)
    g = (logp.exp() - torch.zeros_like(logp).scatter_(-1, lab, 1.0)) / N
    return loss, g


@pytest.mark.parametrize("path", ["kernel", "torch"])
def test_exact_form_keeps_float64_precision(path, monkeypatch):
    """Sure rows (the label is the max by 22: losses ~1e-9, the log1p branch) and unsure rows
    (losses > 1e-3): loss and gradient equal the float64 log-softmax's to 1e-5 relative, with a
    class count that is not a multiple of 8 (the kernel's masked tail)."""
    if path == "kernel" and not attn_kernel.available():
        pytest.skip("the compiled kernel could not be built here")
    monkeypatch.setattr(softmax_ce, "USE_KERNEL", path == "kernel")
    g = torch.Generator().manual_seed(0)
    c, N, C = 3, 40, 67
    lab = torch.randint(0, C, (c, N, 1), generator=g)
    lg = torch.randn(c, N, C, generator=g) * 2
    lg.scatter_add_(-1, lab[:, :30], torch.full((c, 30, 1), 22.0))
    ref_loss, ref_g = _float64_reference(lg, lab, N)
    assert ref_loss[:, :30].max() < 1e-4 and ref_loss[:, 30:].min() > 1e-3
    loss, grad = softmax_ce_exact(lg, lab, N)
    assert loss.shape == (c, N) and grad.shape == (c, N, C) and grad.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad.double(), ref_g, rtol=1e-5, atol=1e-30)


@needs_kernel
@pytest.mark.parametrize("C", [1, 7, 8, 9, 128])
def test_kernel_equals_torch_form(C):
    g = torch.Generator().manual_seed(C)
    lg = torch.randn(2, 300, C, generator=g) * 4
    lab = torch.randint(0, C, (2, 300, 1), generator=g)
    loss, grad = attn_kernel.softmax_ce_rows(lg.reshape(-1, C), lab.reshape(-1), 300)
    ref_loss, ref_g = softmax_ce_exact_torch(lg, lab, 300)
    torch.testing.assert_close(loss.view(2, 300), ref_loss, rtol=3e-6, atol=1e-7)
    torch.testing.assert_close(grad.view(2, 300, C), ref_g, rtol=3e-6, atol=1e-10)
    # every row's gradient sums to zero (softmax minus one-hot)
    zero = torch.zeros(600, dtype=torch.float64)
    torch.testing.assert_close(grad.sum(-1).double(), zero, rtol=0, atol=1e-8)


@needs_kernel
def test_kernel_refuses_a_label_out_of_range():
    with pytest.raises(RuntimeError, match=r"outside \[0, 5\)"):
        attn_kernel.softmax_ce_rows(torch.zeros(4, 5), torch.tensor([0, 1, 5, 2]), 4)
    with pytest.raises(RuntimeError, match="float32"):
        attn_kernel.softmax_ce_rows(torch.zeros(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 2]), 4)
