"""rms_norm against torch.nn.functional.rms_norm: forward, every gradient, gradcheck, eps, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from customnn import ops
from customnn_ref.oracle import check_layer

DTYPES = [torch.float64, torch.float32]


def ref_rms_norm(x, w=None, eps=None):
    return F.rms_norm(x, (x.shape[-1],), w, eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5,), (1, 7), (3, 8), (2, 3, 8), (12, 64, 128)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("eps", [None, 1e-6])
def test_rms_norm_matches_functional(dtype, shape, affine, eps):
    C = shape[-1]
    x = (torch.randn(shape, dtype=dtype) * 2 + 1).requires_grad_()
    w = torch.randn(C, dtype=dtype, requires_grad=True) if affine else None
    check_layer(ops.rms_norm, ref_rms_norm, [x, w], dict(eps=eps))


def test_rms_norm_non_contiguous_and_q_per_head():
    # (B, T, nh, hs) viewed as (B, nh, T, hs), as the GPT's QK-norm sees q and k
    base = torch.randn(2, 5, 3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    check_layer(lambda t, w: ops.rms_norm(t.transpose(1, 2), w), lambda t, w: ref_rms_norm(t.transpose(1, 2), w),
                [base, w])


def test_rms_norm_default_eps_is_the_dtypes_machine_epsilon():
    # A row of tiny values: eps dominates mean(x^2), so the default eps shows in the output.
    for dtype in DTYPES:
        x = torch.full((1, 4), 1e-5, dtype=dtype)
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(ops.rms_norm(x), x / torch.sqrt((x * x).mean() + eps))
        torch.testing.assert_close(ops.rms_norm(x), ref_rms_norm(x))


def test_rms_norm_zero_rows_and_scale_invariance():
    x = torch.zeros(2, 6, dtype=torch.float64, requires_grad=True)
    y = ops.rms_norm(x, None, 1e-6)
    y.sum().backward()
    assert torch.equal(y, torch.zeros_like(y)) and torch.isfinite(x.grad).all()
    z = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(ops.rms_norm(z * 1e3, None, 0.0), ops.rms_norm(z, None, 0.0), rtol=1e-12, atol=1e-12)


def test_rms_norm_gradcheck():
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.rms_norm, (x, w))
    assert torch.autograd.gradcheck(lambda t: ops.rms_norm(t, None, 1e-3), (x,))


def test_rms_norm_only_weight_needs_grad_and_no_grad_input():
    x = torch.randn(3, 4, dtype=torch.float64)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    check_layer(ops.rms_norm, ref_rms_norm, [x, w])
    assert not ops.rms_norm(x, w.detach()).requires_grad


def test_rms_norm_bfloat16():
    x, w = torch.randn(6, 32).bfloat16(), torch.randn(32).bfloat16()
    y = ops.rms_norm(x, w)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref_rms_norm(x.float(), w.float()), rtol=5e-2, atol=5e-2)


def test_rms_norm_errors():
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
        ops.rms_norm(torch.randn(2, 4), torch.randn(3))
    with pytest.raises(ValueError, match="at least 1"):
        ops.rms_norm(torch.tensor(1.0))
    with pytest.raises(ValueError, match="floating-point"):
        ops.rms_norm(torch.arange(4))
    with pytest.raises(ValueError, match="eps"):
        ops.rms_norm(torch.randn(2, 4), None, -1.0)
