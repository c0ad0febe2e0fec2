"""linear, flatten and embedding against torch.nn.functional: forward, every gradient, gradcheck, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from customnn import ops
from customnn_ref.oracle import check_layer

DTYPES = [torch.float64, torch.float32]


def ref_linear(x, w, b=None):
    return F.linear(x, w.T, b)  # our weight is (in, out); F's is (out, in)


@pytest.mark.parametrize("dtype", DTYPES)
# A few rows (at most 8: one product), a narrow output over more rows (the transposed product),
# wide outputs; 1-D, 2-D (no views) and 3-D x.
@pytest.mark.parametrize("x_shape,out_features", [((7,), 3), ((1, 5), 1), ((5, 7), 4), ((2, 3, 7), 5), ((32, 9), 10),
                                                  ((3, 4, 9), 10), ((12, 64, 16), 65)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_functional(dtype, x_shape, out_features, bias):
    C = x_shape[-1]
    x = torch.randn(x_shape, dtype=dtype, requires_grad=True)
    w = torch.randn(C, out_features, dtype=dtype, requires_grad=True)
    inputs = [x, w] + ([torch.randn(out_features, dtype=dtype, requires_grad=True)] if bias else [])
    check_layer(ops.linear, ref_linear, inputs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_non_contiguous_input_and_weight(dtype):
    # x a strided view of (B, C, T); weight the transpose of a (out, in) tensor, as weight tying gives
    def ours(xb, wb, b):
        return ops.linear(xb.transpose(1, 2)[:, ::2], wb.T, b)

    def ref(xb, wb, b):
        return F.linear(xb.transpose(1, 2)[:, ::2], wb, b)

    xb = torch.randn(3, 6, 9, dtype=dtype, requires_grad=True)
    wb = torch.randn(4, 6, dtype=dtype, requires_grad=True)
    b = torch.randn(4, dtype=dtype, requires_grad=True)
    check_layer(ours, ref, [xb, wb, b])


def test_linear_only_some_inputs_need_grad():
    x = torch.randn(4, 5, dtype=torch.float64)  # data: no grad
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64)
    check_layer(ops.linear, ref_linear, [x, w, b])
    y = ops.linear(x, w.detach(), b)
    assert not y.requires_grad


def test_linear_gradcheck():
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.linear, (x, w, b))
    assert torch.autograd.gradcheck(ops.linear, (x, w))


def test_linear_bfloat16():
    x, w, b = torch.randn(6, 8).bfloat16(), torch.randn(8, 4).bfloat16(), torch.randn(4).bfloat16()
    y = ops.linear(x, w, b)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref_linear(x, w, b).float(), rtol=2e-2, atol=5e-2)


def test_linear_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        ops.linear(torch.randn(2, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match="bias"):
        ops.linear(torch.randn(2, 4), torch.randn(4, 5), torch.randn(4))
    with pytest.raises(ValueError, match="weight must be 2-D"):
        ops.linear(torch.randn(2, 4), torch.randn(4))
    with pytest.raises(ValueError, match="dtype"):
        ops.linear(torch.randn(2, 4), torch.randn(4, 5, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4), (1, 2, 3, 5)])
def test_flatten(shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    check_layer(ops.flatten, lambda t: t.flatten(1), [x])
    y = ops.flatten(x)
    assert y.data_ptr() == x.data_ptr()  # a view, no copy
    assert torch.autograd.gradcheck(ops.flatten, (x,))


def test_flatten_non_contiguous():
    base = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    check_layer(lambda t: ops.flatten(t.permute(0, 2, 3, 1)), lambda t: t.permute(0, 2, 3, 1).flatten(1), [base])


def test_flatten_rejects_1d():
    with pytest.raises(ValueError, match="at least 2"):
        ops.flatten(torch.randn(5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("idx_shape", [(), (1,), (7,), (3, 4), (12, 64)])
def test_embedding_matches_functional(dtype, idx_shape):
    V, C = 11, 6
    idx = torch.randint(0, V, idx_shape)
    w = torch.randn(V, C, dtype=dtype, requires_grad=True)
    check_layer(ops.embedding, F.embedding, [idx, w])


def test_embedding_row_used_twice_gets_both_contributions():
    w = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[1, 2, 1], [1, 0, 3]])  # row 1 three times, row 2 once
    y = ops.embedding(idx, w)
    dout = torch.arange(18, dtype=torch.float64).view(2, 3, 3)
    y.backward(dout)
    expected = torch.zeros(4, 3, dtype=torch.float64)
    expected[1] = dout[0, 0] + dout[0, 2] + dout[1, 0]
    expected[2] = dout[0, 1]
    expected[0] = dout[1, 1]
    expected[3] = dout[1, 2]
    assert torch.equal(w.grad, expected)


def test_embedding_int32_and_non_contiguous_indices():
    w = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 9, (5, 6)).t()  # non-contiguous
    check_layer(ops.embedding, F.embedding, [idx, w])
    check_layer(ops.embedding, lambda i, t: F.embedding(i.long(), t), [idx.int(), w])


def test_embedding_gradcheck():
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[0, 4, 4], [2, 0, 1]])
    assert torch.autograd.gradcheck(lambda t: ops.embedding(idx, t), (w,))


def test_embedding_errors():
    w = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"\[0, 5\).*\[0, 5\]"):
        ops.embedding(torch.tensor([0, 5]), w)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        ops.embedding(torch.tensor([-1, 2]), w)
    with pytest.raises(ValueError, match="integer"):
        ops.embedding(torch.tensor([0.0, 1.0]), w)
    with pytest.raises(ValueError, match="2-D"):
        ops.embedding(torch.tensor([0]), torch.randn(5))
