"""max_pool2d and avg_pool2d against torch.nn.functional: forward and gradient on awkward
configurations, float64 (rel. err <= 1e-10) and float32 (<= 1e-5); ties in max pooling
broken as PyTorch does; gradcheck; bad arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from customnn import ops
from customnn_ref.oracle import check_layer

DTYPES = [torch.float64, torch.float32]
POOLS = [(ops.max_pool2d, F.max_pool2d), (ops.avg_pool2d, F.avg_pool2d)]

# (x shape, kwargs): tiling windows (the reshape path), overlapping windows, leftover rows,
# padding, rectangular kernels and strides, batch 1, a window as large as the input.
CONFIGS = [
    ((2, 3, 8, 8), dict(kernel_size=2)),
    ((1, 2, 12, 9), dict(kernel_size=3)),
    ((2, 3, 9, 11), dict(kernel_size=2)),                               # leftover row/column
    ((2, 3, 9, 11), dict(kernel_size=3, stride=2, padding=1)),
    ((1, 2, 7, 6), dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0))),
    ((2, 2, 10, 10), dict(kernel_size=3, stride=1)),
    ((2, 2, 13, 7), dict(kernel_size=2, stride=3)),                     # gaps between windows
    ((2, 1, 5, 5), dict(kernel_size=5)),
    ((2, 2, 6, 8), dict(kernel_size=(2, 4), stride=(2, 4))),
    ((1, 3, 5, 7), dict(kernel_size=4, stride=(2, 3), padding=2)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,kwargs", CONFIGS)
@pytest.mark.parametrize("ours,ref", POOLS, ids=["max", "avg"])
def test_pool_matches_torch(ours, ref, xs, kwargs, dtype):
    x = torch.randn(xs, dtype=dtype, requires_grad=True)
    check_layer(ours, ref, [x], kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,kwargs", CONFIGS)
def test_max_pool_ties_go_to_the_first_maximum(xs, kwargs, dtype):
    # Integers in a small range and all zeros: most windows hold several equal maxima.
    for x in (torch.randint(-1, 2, xs).to(dtype), torch.zeros(xs, dtype=dtype)):
        check_layer(ops.max_pool2d, F.max_pool2d, [x.requires_grad_(True)], kwargs)


def test_max_pool_tie_rule_explicitly():
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    ops.max_pool2d(x, 2).sum().backward()
    assert x.grad.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("ours,ref", POOLS, ids=["max", "avg"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_non_contiguous_input(ours, ref, dtype):
    x = torch.randn(2, 9, 8, 3, dtype=dtype).permute(0, 3, 1, 2).requires_grad_(True)  # channels-last
    assert not x.is_contiguous()
    for kwargs in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1)):
        check_layer(ours, ref, [x], kwargs)
    grads = []  # a strided slice of a bigger leaf, by hand (check_layer would clone it contiguous)
    for fn in (ours, ref):
        big = torch.arange(2 * 3 * 20 * 20, dtype=dtype).reshape(2, 3, 20, 20).remainder(7).requires_grad_(True)
        y = fn(big[:, :, 1:17:2, 2:18], 2)
        y.backward(torch.linspace(-1, 1, y.numel(), dtype=dtype).view(y.shape))
        grads.append((y, big.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("ours", [ops.max_pool2d, ops.avg_pool2d], ids=["max", "avg"])
@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                    dict(kernel_size=(2, 3), stride=1)])
def test_pool_gradcheck(ours, kwargs):
    # Distinct values (a permutation), so max pooling has no ties for finite differences to straddle.
    x = (torch.randperm(2 * 2 * 7 * 6).to(torch.float64) / 10).view(2, 2, 7, 6).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ours(x, **kwargs), (x,))


def test_max_pool_with_infinities_and_stride_default():
    x = torch.full((1, 2, 4, 4), float("-inf"), dtype=torch.float64)
    x[0, 0, 1, 1] = 3.0
    results = []
    for pool in (ops.max_pool2d, F.max_pool2d):  # by hand: the oracle's inf - inf would be nan
        leaf = x.clone().requires_grad_(True)
        y = pool(leaf, 2)
        y.backward(torch.arange(1.0, 9.0, dtype=torch.float64).view(y.shape))
        results.append((y, leaf.grad))
    assert results[0][0].shape == (1, 2, 2, 2)
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)  # all -inf windows: grad to the first


def test_max_pool_with_nans_matches_torch_forward_and_backward():
    """A window holding a NaN outputs NaN and, as PyTorch, sends its gradient to the window's
    last NaN; windows without one are unchanged."""
    g = torch.Generator().manual_seed(0)
    for k, s, p in [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0)]:
        x = torch.randn(2, 3, 7, 8, dtype=torch.float64, generator=g)
        x[torch.rand(x.shape, generator=g) < 0.15] = float("nan")
        ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        y, ty = ops.max_pool2d(ours, k, s, p), F.max_pool2d(theirs, k, s, p)
        torch.testing.assert_close(y, ty, equal_nan=True, rtol=0, atol=0)
        dout = torch.randn(y.shape, dtype=torch.float64, generator=g)
        y.backward(dout)
        ty.backward(dout)
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=0)
    x = torch.tensor([[[[float("nan"), 5.0], [float("nan"), 1.0]]]], requires_grad=True)
    ops.max_pool2d(x, 2).sum().backward()
    assert x.grad.tolist() == [[[[0.0, 0.0], [1.0, 0.0]]]]  # the last NaN in row-major order


@pytest.mark.parametrize("xs", [(2, 3, 7, 8), (16, 8, 24, 24)], ids=["small", "large"])
def test_max_pool_without_gradient_equals_torch(xs):
    """Without a gradient the forward takes the maximum alone (one reduction on small inputs, a
    running maximum on large ones): the same values as PyTorch's, NaN and -inf windows included,
    with padding, ceil mode and dilation."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(xs, generator=g)
    x[torch.rand(x.shape, generator=g) < 0.01] = float("nan")
    x[0, 0, :3, :3] = float("-inf")
    for kwargs in [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                   dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), dict(kernel_size=3, dilation=2, padding=1)]:
        with torch.no_grad():
            y, ty = ops.max_pool2d(x, **kwargs), F.max_pool2d(x, **kwargs)
        torch.testing.assert_close(y, ty, equal_nan=True, rtol=0, atol=0)
        assert y.isnan().any() and not y.requires_grad


# ----------------------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("pool", [ops.max_pool2d, ops.avg_pool2d], ids=["max", "avg"])
def test_pool_errors(pool):
    x = torch.randn(2, 3, 8, 8)

    def bad(match, *args, **kwargs):
        with pytest.raises(ValueError, match=match):
            pool(*args, **kwargs)

    bad(r"x must be 3-D or 4-D .*\(8, 8\)", x[0, 0], 2)
    bad(r"x must have C, H, W >= 1", x[:, :, :0], 2)
    bad(r"kernel_size must be >= 1", x, 0)
    bad(r"stride must be >= 1", x, 2, 0)
    bad(r"padding must be >= 0", x, 2, 2, -1)
    bad(r"padding \(2, 2\) must be at most half of kernel_size \(3, 3\)", x, 3, 1, 2)
    bad(r"padding \(0, 2\) must be at most half of kernel_size \(3, 3\)", x, 3, 1, (0, 2))
    bad(r"kernel_size \(9, 2\) is larger than the padded input \(8, 8\)", x, (9, 2))
    bad(r"x must be a floating-point tensor", x.long(), 2)
    bad(r"kernel_size must be an int or a pair", x, (2, 2, 2))


# ----------------------------------------------------------------------------- options

# (x shape, kwargs for both pools): ceil mode with partial last windows (with and without
# padding), rectangular everything, unbatched (C, H, W) inputs, a window larger than the input
# that ceil mode keeps.
OPTION_CONFIGS = [
    ((2, 3, 9, 11), dict(kernel_size=2, ceil_mode=True)),
    ((2, 3, 9, 11), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((1, 2, 7, 6), dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 0), ceil_mode=True)),
    ((3, 10, 9), dict(kernel_size=3, stride=2)),                                   # unbatched
    ((3, 10, 9), dict(kernel_size=(2, 3), stride=(3, 2), padding=1, ceil_mode=True)),
    ((1, 2, 3, 6), dict(kernel_size=3, stride=2, ceil_mode=True)),
]
MAX_ONLY = [  # dilation: max pooling only (F.avg_pool2d has none)
    ((2, 3, 9, 11), dict(kernel_size=3, dilation=2)),
    ((1, 2, 8, 9), dict(kernel_size=(2, 3), stride=2, padding=1, dilation=(2, 1), ceil_mode=True)),
    ((3, 7, 7), dict(kernel_size=2, stride=1, dilation=3, padding=1)),
    ((1, 2, 3, 6), dict(kernel_size=3, stride=2, padding=1, dilation=(1, 2), ceil_mode=True)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,kwargs", OPTION_CONFIGS + MAX_ONLY)
@pytest.mark.parametrize("return_indices", [False, True])
def test_max_pool_options_match_torch(xs, kwargs, dtype, return_indices):
    kwargs = dict(kwargs, return_indices=return_indices)
    for x in (torch.randn(xs, dtype=dtype), torch.randint(-1, 2, xs).to(dtype)):  # random, then ties
        check_layer(ops.max_pool2d, F.max_pool2d, [x.requires_grad_(True)], kwargs)
        if dtype == torch.float64:
            check_layer(ops.max_pool2d_reference, F.max_pool2d, [x], kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,kwargs", OPTION_CONFIGS)
@pytest.mark.parametrize("count_include_pad,divisor_override", [(True, None), (False, None), (True, 5), (False, -2)])
def test_avg_pool_options_match_torch(xs, kwargs, dtype, count_include_pad, divisor_override):
    kwargs = dict(kwargs, count_include_pad=count_include_pad, divisor_override=divisor_override)
    x = torch.randn(xs, dtype=dtype, requires_grad=True)
    check_layer(ops.avg_pool2d, F.avg_pool2d, [x], kwargs)
    if dtype == torch.float64:
        check_layer(ops.avg_pool2d_reference, F.avg_pool2d, [x], kwargs)


def test_max_pool_indices_are_pytorch_flat_indices():
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    y, idx = ops.max_pool2d(x, 3, 2, 1, dilation=(1, 2), ceil_mode=True, return_indices=True)
    ty, tidx = F.max_pool2d(x, 3, 2, 1, dilation=(1, 2), ceil_mode=True, return_indices=True)
    assert idx.dtype == torch.int64 and torch.equal(idx, tidx) and torch.equal(y, ty)
    assert torch.equal(x.flatten(2).gather(2, idx.flatten(2)).view(y.shape), y)  # each index holds its max
    assert not idx.requires_grad


def test_max_pool_all_minus_inf_window_with_padding_as_pytorch():
    # A window whose input values are all -inf: PyTorch points it at its first position inside x.
    x = torch.full((1, 1, 4, 4), float("-inf"), dtype=torch.float64)
    results = []
    for pool in (ops.max_pool2d, F.max_pool2d):
        leaf = x.clone().requires_grad_(True)
        y, idx = pool(leaf, 3, 2, 1, return_indices=True)
        y.backward(torch.arange(1.0, 1 + y.numel(), dtype=torch.float64).view(y.shape))
        results.append((y, idx, leaf.grad))
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
                                    dict(kernel_size=(2, 3), stride=(2, 1), dilation=(2, 1), ceil_mode=True)])
def test_max_pool_options_gradcheck(kwargs):
    x = (torch.randperm(2 * 7 * 6).to(torch.float64) / 10).view(2, 7, 6).requires_grad_(True)  # unbatched
    assert torch.autograd.gradcheck(lambda x: ops.max_pool2d(x, **kwargs), (x,))


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
                                    dict(kernel_size=2, ceil_mode=True, divisor_override=3)])
def test_avg_pool_options_gradcheck(kwargs):
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ops.avg_pool2d(x, **kwargs), (x,))


def test_pool_option_errors():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="dilation must be >= 1"):
        ops.max_pool2d(x, 2, dilation=0)
    with pytest.raises(ValueError, match=r"kernel_size \(3, 3\) \(dilation \(4, 4\)\) is larger"):
        ops.max_pool2d(x, 3, dilation=4)
    with pytest.raises(ValueError, match="divisor_override must be a non-zero int"):
        ops.avg_pool2d(x, 2, divisor_override=0)
    with pytest.raises(ValueError, match="x must have C, H, W >= 1"):
        ops.avg_pool2d(torch.randn(1, 0, 10), 1)
