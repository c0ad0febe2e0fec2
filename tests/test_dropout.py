"""dropout: exact mask consistency (forward = x * mask / (1 - p), backward uses the same mask),
statistics against F.dropout (whose random numbers differ), identity when off, gradcheck, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from customnn import ops


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_output_is_masked_and_scaled_and_backward_uses_the_same_mask(dtype, p):
    x = (torch.rand(40, 50, dtype=dtype) + 0.5).requires_grad_()  # no zeros: the mask is y != 0
    y = ops.dropout(x, p, True)
    mask = (y != 0).to(dtype)
    torch.testing.assert_close(y, x.detach() * mask / (1 - p), rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0)
    dout = torch.randn(40, 50, dtype=dtype)
    y.backward(dout)
    torch.testing.assert_close(x.grad, dout * mask / (1 - p), rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.7])
def test_fraction_dropped_and_mean_agree_with_pytorch(p):
    n = 200_000
    x = torch.ones(n)
    ours, ref = ops.dropout(x, p, True), F.dropout(x, p, True)
    sigma = math.sqrt(p * (1 - p) / n)  # standard deviation of the dropped fraction
    for y in (ours, ref):
        assert abs((y == 0).float().mean().item() - p) < 6 * sigma
        assert abs(y.mean().item() - 1.0) < 6 * sigma / (1 - p)  # inverted scaling keeps the mean
    assert set(ours.unique().tolist()) == set(ref.unique().tolist())  # {0, 1/(1-p)}


def test_identity_when_not_training_or_p_zero():
    x = torch.randn(3, 4, requires_grad=True)
    assert ops.dropout(x, 0.5, training=False) is x
    assert ops.dropout(x, 0.0, training=True) is x
    assert ops.dropout(x, 0, training=True) is x


def test_generator_makes_it_reproducible():
    x = torch.randn(100)
    a = ops.dropout(x, 0.5, True, generator=torch.Generator().manual_seed(3))
    b = ops.dropout(x, 0.5, True, generator=torch.Generator().manual_seed(3))
    c = ops.dropout(x, 0.5, True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_non_contiguous_input_and_3d():
    base = (torch.rand(6, 8, 5, dtype=torch.float64) + 0.5).requires_grad_()
    x = base.transpose(0, 2)[:, ::2]  # (5, 4, 6), strided
    y = ops.dropout(x, 0.25, True)
    assert y.shape == x.shape
    mask = (y != 0).double()
    torch.testing.assert_close(y, x.detach() * mask / 0.75, rtol=1e-12, atol=0)
    y.sum().backward()
    expected = torch.zeros_like(base)
    expected.transpose(0, 2)[:, ::2] = mask / 0.75
    torch.testing.assert_close(base.grad, expected, rtol=1e-12, atol=0)


def test_gradcheck_with_a_fixed_mask():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    fn = lambda t: ops.dropout(t, 0.4, True, generator=torch.Generator().manual_seed(0))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))


def test_input_without_grad_and_bfloat16():
    y = ops.dropout(torch.randn(10), 0.5, True)
    assert not y.requires_grad
    xb = torch.ones(1000, dtype=torch.bfloat16)
    yb = ops.dropout(xb, 0.2, True)
    assert yb.dtype == torch.bfloat16
    kept = yb[yb != 0]
    torch.testing.assert_close(kept.float(), torch.full_like(kept.float(), 1.25), rtol=1e-2, atol=0)


@pytest.mark.parametrize("p", [-0.1, 1.5, "0.5", None, True])
@pytest.mark.parametrize("training", [True, False])
def test_p_outside_range_is_rejected(p, training):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ops.dropout(torch.randn(3), p, training)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(), (5,), (4, 6), (2, 3, 4)])
def test_p_one_drops_everything_as_pytorch(dtype, shape):
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    state = torch.get_rng_state()
    y = ops.dropout(x, 1.0, True)
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn
    ref = F.dropout(x.detach(), 1.0, True)
    assert torch.equal(y, ref) and torch.equal(y, torch.zeros_like(y))
    y.backward(torch.randn(shape, dtype=dtype))
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert torch.equal(ops.dropout_reference(x, 1.0, True), y)
    nan = torch.tensor([float("nan"), 1.0], dtype=dtype)
    torch.testing.assert_close(ops.dropout(nan, 1.0, True), F.dropout(nan, 1.0, True), equal_nan=True)
    assert torch.autograd.gradcheck(lambda t: ops.dropout(t, 1.0, True), (torch.randn(3, dtype=torch.float64,
                                                                                    requires_grad=True),))


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_not_training_is_identity_for_every_p(p):
    x = torch.randn(4, 3, requires_grad=True)
    assert ops.dropout(x, p, training=False) is x
    assert ops.dropout_reference(x, p, training=False) is x
    torch.testing.assert_close(ops.dropout(x, p, False), F.dropout(x, p, False))


@pytest.mark.parametrize("rows", [slice(0, 2), slice(2, 5), slice(4, 5)])
def test_a_slice_of_the_batch_draws_its_rows_of_the_whole_batch_mask(rows):
    """``batch=(rows, total)`` (data-parallel training): dropout and attention's dropout, given
    rows ``rows`` of a batch of 5, drop exactly what they drop in those rows of the whole
    batch, with the same gradients, and leave the generator where the whole batch leaves it."""
    torch.manual_seed(0)
    x = torch.randn(5, 3, 7, dtype=torch.float64)
    q, k, v = (torch.randn(5, 2, 6, 3, dtype=torch.float64) for _ in range(3))
    dy = torch.randn(5, 3, 7, dtype=torch.float64)
    dz = torch.randn(5, 2, 6, 3, dtype=torch.float64)

    def run(sl, batch):
        g = torch.Generator().manual_seed(1)
        xs, qs, ks, vs = (t[sl].clone().requires_grad_() for t in (x, q, k, v))
        y = ops.dropout(xs, 0.3, True, generator=g, batch=batch)
        z = ops.attention(qs, ks, vs, causal=True, dropout_p=0.4, generator=g, batch=batch)
        torch.autograd.backward((y, z), (dy[sl], dz[sl]))
        return [y, z, xs.grad, qs.grad, ks.grad, vs.grad], g.get_state()

    whole, g_whole = run(slice(None), None)
    part, g_part = run(rows, (rows, 5))
    for a, b in zip(whole, part):
        assert torch.equal(a[rows], b)
    assert torch.equal(g_whole, g_part)
