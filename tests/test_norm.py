"""layer_norm and batch_norm against torch.nn.functional: forward, every gradient, gradcheck in
both batch-norm modes, running statistics, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from customnn import ops
from customnn_ref.oracle import check_layer

DTYPES = [torch.float64, torch.float32]


def ref_layer_norm(x, w, b, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5,), (1, 7), (3, 8), (2, 3, 8), (12, 64, 128)])
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
def test_layer_norm_matches_functional(dtype, shape, affine):
    C = shape[-1]
    x = (torch.randn(shape, dtype=dtype) * 2 + 3).requires_grad_()
    w = torch.randn(C, dtype=dtype, requires_grad=True) if affine != "none" else None
    b = torch.randn(C, dtype=dtype, requires_grad=True) if affine == "both" else None
    check_layer(ops.layer_norm, ref_layer_norm, [x, w, b])


def test_layer_norm_non_contiguous_and_eps():
    base = torch.randn(6, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    view = lambda t: t.permute(1, 2, 0)  # noqa: E731  (4, 5, 6), strided
    check_layer(lambda t, w, b: ops.layer_norm(view(t), w, b, eps=1e-2),
                lambda t, w, b: ref_layer_norm(view(t), w, b, eps=1e-2), [base, w, b])


def test_layer_norm_large_offset():
    x = (torch.randn(4, 16, dtype=torch.float64) + 1e4).requires_grad_()  # mean far from 0
    check_layer(ops.layer_norm, ref_layer_norm, [x, None, None])


def test_layer_norm_gradcheck():
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.layer_norm, (x, w, b))
    assert torch.autograd.gradcheck(lambda t: ops.layer_norm(t, None, None), (x,))


def test_layer_norm_only_weight_needs_grad_and_no_grad_input():
    x = torch.randn(3, 4, dtype=torch.float64)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64)
    check_layer(ops.layer_norm, ref_layer_norm, [x, w, b])
    assert not ops.layer_norm(x, w.detach(), b).requires_grad


def test_layer_norm_bfloat16():
    x, w, b = torch.randn(6, 32).bfloat16(), torch.randn(32).bfloat16(), torch.randn(32).bfloat16()
    y = ops.layer_norm(x, w, b)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref_layer_norm(x.float(), w.float(), b.float()), rtol=5e-2, atol=5e-2)


def test_layer_norm_errors():
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
        ops.layer_norm(torch.randn(2, 4), torch.randn(3), None)
    with pytest.raises(ValueError, match="bias"):
        ops.layer_norm(torch.randn(2, 4), None, torch.randn(5))
    with pytest.raises(ValueError, match="at least 1"):
        ops.layer_norm(torch.tensor(1.0), None, None)


def _bn_inputs(shape, dtype, affine=True):
    C = shape[1]
    x = (torch.randn(shape, dtype=dtype) * 2 + 1).requires_grad_()
    w = torch.randn(C, dtype=dtype, requires_grad=True) if affine else None
    b = torch.randn(C, dtype=dtype, requires_grad=True) if affine else None
    return x, w, b


BN_SHAPES = [(2, 3), (7, 5), (1, 3, 2, 2), (2, 3, 5, 4), (4, 2, 7)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_training_matches_functional(dtype, shape, affine):
    x, w, b = _bn_inputs(shape, dtype, affine)
    C = shape[1]
    rm_o, rv_o = torch.randn(C, dtype=dtype), torch.rand(C, dtype=dtype) + 0.5
    rm_r, rv_r = rm_o.clone(), rv_o.clone()
    check_layer(lambda x, w, b: ops.batch_norm(x, w, b, rm_o, rv_o, True, 0.2),
                lambda x, w, b: F.batch_norm(x, rm_r, rv_r, w, b, True, 0.2), [x, w, b])
    torch.testing.assert_close(rm_o, rm_r, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0)
    torch.testing.assert_close(rv_o, rv_r, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_eval_matches_functional(dtype, shape):
    x, w, b = _bn_inputs(shape, dtype)
    C = shape[1]
    rm, rv = torch.randn(C, dtype=dtype), torch.rand(C, dtype=dtype) + 0.5
    rm0, rv0 = rm.clone(), rv.clone()
    check_layer(lambda x, w, b: ops.batch_norm(x, w, b, rm, rv, False),
                lambda x, w, b: F.batch_norm(x, rm, rv, w, b, False), [x, w, b])
    assert torch.equal(rm, rm0) and torch.equal(rv, rv0)  # eval mode leaves them alone


def test_batch_norm_running_stats_after_several_steps():
    C = 4
    rm_o, rv_o = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    rm_r, rv_r = rm_o.clone(), rv_o.clone()
    for step in range(4):
        x = torch.randn(8, C, 3, 3, dtype=torch.float64) * (step + 1) + step
        ops.batch_norm(x, None, None, rm_o, rv_o, True, momentum=0.1)
        F.batch_norm(x, rm_r, rv_r, None, None, True, momentum=0.1)
    torch.testing.assert_close(rm_o, rm_r, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(rv_o, rv_r, rtol=1e-12, atol=1e-14)
    # and eval mode then uses them
    x = torch.randn(5, C, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(ops.batch_norm(x, None, None, rm_o, rv_o, False),
                               F.batch_norm(x, rm_r, rv_r, None, None, False), rtol=1e-12, atol=1e-12)


def test_batch_norm_without_running_stats_in_training():
    x, w, b = _bn_inputs((6, 3, 2, 2), torch.float64)
    check_layer(lambda x, w, b: ops.batch_norm(x, w, b, None, None, True),
                lambda x, w, b: F.batch_norm(x, None, None, w, b, True), [x, w, b])


def test_batch_norm_channels_last_input():
    base = torch.randn(3, 4, 5, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    view = lambda t: t.permute(0, 3, 1, 2)  # noqa: E731  (3, 2, 4, 5), channels-last strides
    check_layer(lambda t, w, b: ops.batch_norm(view(t), w, b, None, None, True),
                lambda t, w, b: F.batch_norm(view(t), None, None, w, b, True), [base, w, b])


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 3, 2)])
def test_batch_norm_gradcheck(training, shape):
    x, w, b = _bn_inputs(shape, torch.float64)
    C = shape[1]
    rm, rv = torch.randn(C, dtype=torch.float64), torch.rand(C, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(lambda x, w, b: ops.batch_norm(x, w, b, rm.clone(), rv.clone(), training), (x, w, b))
    assert torch.autograd.gradcheck(lambda x: ops.batch_norm(x, None, None, rm.clone(), rv.clone(), training), (x,))


def test_batch_norm_errors():
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        ops.batch_norm(torch.randn(4, 3), torch.randn(4), None, None, None, True)
    with pytest.raises(ValueError, match=r"running_var must have shape \(3,\)"):
        ops.batch_norm(torch.randn(4, 3), None, None, torch.zeros(3), torch.ones(2), True)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        ops.batch_norm(torch.randn(4), None, None, None, None, True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ops.batch_norm(torch.randn(1, 3), None, None, None, None, True)
    with pytest.raises(ValueError, match="eval mode"):
        ops.batch_norm(torch.randn(4, 3), None, None, None, None, False)


# ----------------------------------------------------------------------------- layer_norm over several dims

def ref_layer_norm_shape(x, w, b, eps=1e-5, normalized_shape=None):
    shape = normalized_shape or (w.shape if w is not None else b.shape if b is not None else x.shape[-1:])
    return F.layer_norm(x, tuple(shape), w, b, eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,shape", [((2, 3, 4), (3, 4)), ((5, 2, 3), (5, 2, 3)), ((4, 3, 5), (5,)), ((2, 1, 6), (1, 6))])
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
def test_layer_norm_over_several_dims_matches_functional(dtype, xs, shape, affine):
    x = (torch.randn(xs, dtype=dtype) * 2 + 1).requires_grad_()
    w = torch.randn(shape, dtype=dtype, requires_grad=True) if affine in ("both", "weight") else None
    b = torch.randn(shape, dtype=dtype, requires_grad=True) if affine in ("both", "bias") else None
    check_layer(ops.layer_norm, ref_layer_norm_shape, [x, w, b], dict(normalized_shape=shape))
    if affine != "none":  # the weight's (or bias's) shape says which dims, without normalized_shape
        check_layer(ops.layer_norm, ref_layer_norm_shape, [x, w, b])
    if dtype == torch.float64:
        check_layer(ops.layer_norm_reference, ref_layer_norm_shape, [x, w, b], dict(normalized_shape=shape))


def test_layer_norm_over_several_dims_non_contiguous_and_gradcheck():
    base = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    view = lambda t: t.permute(2, 1, 0)  # noqa: E731  (3, 4, 5), strided
    check_layer(lambda t, w: ops.layer_norm(view(t), w, None), lambda t, w: F.layer_norm(view(t), (4, 5), w), [base, w])
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: ops.layer_norm(x, w.T, b), (x, w[:3, :4].detach().T.clone()
                                                                                .requires_grad_(), b))
    assert torch.autograd.gradcheck(lambda t: ops.layer_norm(t, None, None, normalized_shape=(3, 4)), (x,))


def test_layer_norm_normalized_shape_errors():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"normalized_shape \(2, 4\) must equal the last dims of x"):
        ops.layer_norm(x, None, None, normalized_shape=(2, 4))
    with pytest.raises(ValueError, match=r"weight must have shape \(3, 4\)"):
        ops.layer_norm(x, torch.randn(4), None, normalized_shape=(3, 4))
    with pytest.raises(ValueError, match=r"bias must have shape \(3, 4\)"):
        ops.layer_norm(x, torch.randn(3, 4), torch.randn(4, 3))
    with pytest.raises(ValueError, match="non-empty sequence of ints"):
        ops.layer_norm(x, None, None, normalized_shape=())
