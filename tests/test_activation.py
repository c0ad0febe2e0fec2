"""relu, gelu (exact and tanh) and silu against torch.nn.functional: forward, gradient, gradcheck, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from customnn import ops
from customnn_ref.oracle import check_layer

DTYPES = [torch.float64, torch.float32]
SHAPES = [(1,), (7,), (3, 5), (2, 3, 7), (12, 64, 33)]
LAYERS = [
    ("relu", ops.relu, F.relu, {}),
    ("gelu", ops.gelu, F.gelu, {}),
    ("gelu_tanh", ops.gelu, F.gelu, {"approximate": "tanh"}),
    ("silu", ops.silu, F.silu, {}),
]


@pytest.mark.parametrize("name,ours,ref,kwargs", LAYERS, ids=[l[0] for l in LAYERS])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_functional(name, ours, ref, kwargs, dtype, shape):
    x = (torch.randn(shape, dtype=dtype) * 3).requires_grad_()
    check_layer(ours, ref, [x], kwargs)


@pytest.mark.parametrize("name,ours,ref,kwargs", LAYERS, ids=[l[0] for l in LAYERS])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_input(name, ours, ref, kwargs, dtype):
    # The layer sees a strided view; check_layer's leaf is the base, so the view is not copied.
    def view(t):
        x = t.permute(2, 0, 1)[:, ::2]  # (4, 3, 9) from (6, 9, 4)
        assert not x.is_contiguous()
        return x

    base = (torch.randn(6, 9, 4, dtype=dtype) * 2).requires_grad_()
    check_layer(lambda t, **kw: ours(view(t), **kw), lambda t, **kw: ref(view(t), **kw), [base], kwargs)


@pytest.mark.parametrize("name,ours,ref,kwargs", LAYERS, ids=[l[0] for l in LAYERS])
def test_special_points(name, ours, ref, kwargs):
    # 0 (where gelu reads Phi back as 0/0), signed zero, large magnitudes, tiny values
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-8, -3.0, 3.0, -10.0, 10.0, -40.0, 40.0],
                     dtype=torch.float64, requires_grad=True)
    check_layer(ours, ref, [x], kwargs)
    check_layer(ours, ref, [x.detach().float().requires_grad_()], kwargs)


@pytest.mark.parametrize("name,ours,ref,kwargs", LAYERS, ids=[l[0] for l in LAYERS])
def test_gradcheck(name, ours, ref, kwargs):
    x = torch.randn(4, 6, dtype=torch.float64)
    if name == "relu":  # keep away from the kink at 0, where the finite difference is undefined
        x = x + 0.1 * x.sign()
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ours(t, **kwargs), (x,))


def test_gelu_keeps_its_slope_for_backward_not_its_input_or_output():
    # gelu'(x) is formed in forward: x is freed with the forward and y once the next layer's
    # backward has run, so gelu's own backward holds gelu'(x), dout and dx, as PyTorch's does.
    x = torch.randn(4, 6, requires_grad=True)
    y = ops.gelu(x)
    (slope,) = y.grad_fn.saved_tensors
    assert slope.shape == x.shape
    assert slope.untyped_storage().data_ptr() not in (x.untyped_storage().data_ptr(), y.untyped_storage().data_ptr())


@pytest.mark.parametrize("name,ours,ref,kwargs", LAYERS, ids=[l[0] for l in LAYERS])
def test_input_without_grad(name, ours, ref, kwargs):
    x = torch.randn(3, 4)
    y = ours(x, **kwargs)
    assert not y.requires_grad
    torch.testing.assert_close(y, ref(x, **kwargs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,ours,ref,kwargs", LAYERS, ids=[l[0] for l in LAYERS])
def test_bfloat16(name, ours, ref, kwargs):
    x = torch.randn(8, 16).bfloat16().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = ours(x, **kwargs), ref(x_ref, **kwargs)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=2e-2, atol=2e-2)
    g = torch.randn(8, 16).bfloat16()
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad.float(), x_ref.grad.float(), rtol=3e-2, atol=3e-2)


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError, match="approximate"):
        ops.gelu(torch.randn(3), approximate="sigmoid")


@pytest.mark.parametrize("fn", [ops.relu, ops.gelu, ops.silu])
def test_rejects_integer_input(fn):
    with pytest.raises(ValueError, match="floating-point"):
        fn(torch.arange(5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gelu_half_precision_close_to_float32(dtype):
    # phi's exponent uses a 0-d constant of x's dtype; half inputs must work and stay close.
    x = torch.randn(4, 33, dtype=torch.float32)
    xh = x.to(dtype).requires_grad_()
    y = ops.gelu(xh)
    y.backward(torch.ones_like(y))
    xf = xh.detach().float().requires_grad_()
    yf = F.gelu(xf)
    yf.backward(torch.ones_like(yf))
    assert y.dtype == dtype and xh.grad.dtype == dtype
    torch.testing.assert_close(y.float(), yf, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(xh.grad.float(), xf.grad, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gelu_gradient_at_zero_and_non_finite_inputs_matches_torch(approximate, dtype):
    """At 0 the exact backward's y / x is 0/0 (the gradient is 0.5); a NaN or infinite input
    gives a NaN gradient, as PyTorch's (not a patched 0.5)."""
    x = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-30, 40.0, -40.0, 3.0], dtype=dtype)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    ops.gelu(ours, approximate=approximate).sum().backward()
    F.gelu(theirs, approximate=approximate).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, equal_nan=True, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_silu_at_extremes_and_non_finite_inputs_matches_torch(dtype):
    """Far out, sigmoid saturates to 0 or 1: silu's gradient goes to 0 (x -> -inf) or 1 (x -> inf)
    without a NaN; a NaN input gives a NaN gradient, as PyTorch's."""
    x = torch.tensor([0.0, -0.0, -200.0, 200.0, -1e4, 1e4, float("nan"), 1e-30], dtype=dtype)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    ops.silu(ours).sum().backward()
    F.silu(theirs).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, equal_nan=True, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(ops.silu(x), F.silu(x), equal_nan=True, rtol=1e-6, atol=1e-12)
