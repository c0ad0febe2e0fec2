"""The readable loop references equal PyTorch's layers and our fast layers: forward and
autograd's gradients, in float64 (rel. err <= 1e-10) and float32 (<= 1e-5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from customnn import ops
from oracle import check_layer

DTYPES = [torch.float64, torch.float32]

CONV_CONFIGS = [
    ((2, 3, 7, 6), (4, 3, 3, 3), {}),
    ((1, 2, 9, 8), (3, 2, 3, 2), dict(stride=(2, 3), padding=(1, 2))),
    ((2, 2, 8, 8), (2, 2, 3, 3), dict(dilation=2, padding=1, stride=2)),
    ((1, 1, 6, 6), (2, 1, 5, 5), dict(padding=2)),
]

POOL_CONFIGS = [
    ((2, 3, 8, 8), dict(kernel_size=2)),
    ((1, 2, 9, 11), dict(kernel_size=3, stride=2, padding=1)),
    ((2, 2, 7, 6), dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0))),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,ws,kwargs", CONV_CONFIGS)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_reference_equals_torch_and_fast(xs, ws, kwargs, dtype, bias):
    x = torch.randn(xs, dtype=dtype, requires_grad=True)
    w = torch.randn(ws, dtype=dtype, requires_grad=True)
    b = torch.randn(ws[0], dtype=dtype, requires_grad=True) if bias else None
    check_layer(ops.conv2d_reference, F.conv2d, [x, w, b], kwargs)
    check_layer(ops.conv2d_reference, ops.conv2d, [x, w, b], kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,kwargs", POOL_CONFIGS)
def test_max_pool2d_reference_equals_torch_and_fast(xs, kwargs, dtype):
    for x in (torch.randn(xs, dtype=dtype), torch.randint(0, 3, xs).to(dtype), torch.zeros(xs, dtype=dtype)):
        x.requires_grad_(True)  # random values, then many ties, then all ties
        check_layer(ops.max_pool2d_reference, F.max_pool2d, [x], kwargs)
        check_layer(ops.max_pool2d_reference, ops.max_pool2d, [x], kwargs)


def sdpa(q, k, v, causal=True, dropout_p=0.0):
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shapes", [
    ((2, 3, 7, 8), (2, 3, 7, 8), (2, 3, 7, 8)),
    ((1, 1, 1, 4), (1, 1, 1, 4), (1, 1, 1, 4)),          # one position
    ((2, 2, 5, 4), (2, 2, 9, 4), (2, 2, 9, 6)),          # more keys than queries, other value size
    ((1, 2, 6, 4), (1, 2, 3, 4), (1, 2, 3, 4)),          # fewer keys than queries
])
def test_attention_reference_equals_torch(shapes, causal, dtype):
    q, k, v = (torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes)
    check_layer(ops.attention_reference, sdpa, [q, k, v], dict(causal=causal))


@pytest.mark.parametrize("causal", [True, False])
def test_attention_reference_equals_fast_attention(causal):
    q, k, v = (torch.randn(2, 4, 9, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    check_layer(ops.attention_reference, ops.attention, [q, k, v], dict(causal=causal))


def test_attention_reference_large_scores_are_stable():
    # Without subtracting the maximum, exp(1000) would overflow to inf and give nan.
    q = torch.full((1, 1, 3, 2), 30.0, dtype=torch.float64)
    k = torch.full((1, 1, 3, 2), 30.0, dtype=torch.float64)
    v = torch.randn(1, 1, 3, 2, dtype=torch.float64)
    y = ops.attention_reference(q, k, v, causal=False)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, sdpa(q, k, v, causal=False))


def test_references_gradcheck():
    # Small sizes: each gradcheck column reruns the Python loops.
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: ops.conv2d_reference(x, w, b, padding=1, stride=(1, 2)), (x, w, b))
    xp = (torch.randperm(12).to(torch.float64) / 7).view(1, 1, 3, 4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ops.max_pool2d_reference(x, 2, 1, 1), (xp,))
    q, k, v = (torch.randn(1, 1, 3, 2, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(ops.attention_reference, (q, k, v))


def test_reference_errors():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match=r"x has 3 channels but weight expects 2"):
        ops.conv2d_reference(x, torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match=r"kernel height 9"):
        ops.conv2d_reference(x, torch.randn(4, 3, 9, 9))
    with pytest.raises(ValueError, match=r"stride must be >= 1"):
        ops.conv2d_reference(x, w, stride=0)
    with pytest.raises(ValueError, match=r"padding \(2, 2\) must be at most half"):
        ops.max_pool2d_reference(x, 3, 1, 2)
    with pytest.raises(ValueError, match=r"x must be 4-D"):
        ops.max_pool2d_reference(x[0], 2)
    q = torch.randn(2, 2, 4, 8)
    with pytest.raises(ValueError, match=r"dropout_p=0 only"):
        ops.attention_reference(q, q, q, dropout_p=0.1)
    with pytest.raises(ValueError, match=r"q, k, v shapes do not match.*\(2, 2, 4, 8\).*\(2, 2, 4, 7\)"):
        ops.attention_reference(q, torch.randn(2, 2, 4, 7), q)
    with pytest.raises(ValueError, match=r"q, k, v shapes do not match"):
        ops.attention_reference(q, q, torch.randn(2, 2, 5, 8))
    with pytest.raises(ValueError, match=r"k must be 4-D"):
        ops.attention_reference(q, q[0], q)
