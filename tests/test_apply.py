"""ops/_apply.py: every layer records its hand-written backward where a gradient may flow, and
runs its forward alone, with the same result, where none can (evaluation, generation)."""

from __future__ import annotations

import pytest
import torch

from customnn import ops
from customnn.ops import _apply

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = {  # name -> (layer call, its inputs)
    "linear": (lambda x, w: ops.linear(x, w), [(3, 5, 4), (4, 6)]),
    "layer_norm": (lambda x, w: ops.layer_norm(x, w, None), [(2, 3, 7), (7,)]),
    "attention": (lambda q, k: ops.attention(q, k, k, causal=True), [(2, 2, 5, 4), (2, 2, 5, 4)]),
    "max_pool2d with indices": (lambda x: ops.max_pool2d(x, 2, return_indices=True)[0], [(2, 3, 6, 6)]),
    "conv2d": (lambda x, w: ops.conv2d(x, w, padding=1), [(2, 3, 6, 5), (4, 3, 3, 3)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_no_grad_runs_the_forward_alone_with_the_same_result(name, monkeypatch):
    layer, shapes = CASES[name]
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    calls = []
    real = _apply.record
    monkeypatch.setattr(_apply, "record", lambda cls, *a: calls.append(cls) or real(cls, *a))
    with torch.no_grad():
        fast = layer(*[x.requires_grad_() for x in inputs])
    assert calls == [] and fast.grad_fn is None  # no autograd node: the forward alone
    recorded = layer(*inputs)
    assert calls and isinstance(recorded.grad_fn, torch.autograd.function.BackwardCFunction)
    assert type(recorded.grad_fn).__name__ == calls[-1].__name__ + "Backward"  # the hand-written backward
    assert torch.equal(fast, recorded.detach())


def test_inputs_that_need_no_gradient_skip_autograd_even_in_grad_mode():
    x, w = torch.randn(3, 4, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    assert ops.linear(x, w).grad_fn is None
    y = ops.linear(x, w.requires_grad_())
    assert y.grad_fn is not None and "Backward" in type(y.grad_fn).__name__
    y.sum().backward()
    torch.testing.assert_close(w.grad, x.sum(0)[:, None].expand(4, 2), rtol=1e-12, atol=1e-12)


def test_the_stand_in_context_keeps_nothing():
    ctx = _apply._NoGradContext(3)
    assert ctx.needs_input_grad == (False, False, False)
    t = torch.ones(2)
    ctx.save_for_backward(t)
    ctx.mark_non_differentiable(t)
    ctx.mark_dirty(t)
    ctx.set_materialize_grads(False)
    assert not hasattr(ctx, "saved_tensors")


def test_apply_is_public_for_a_layer_of_ones_own():
    class Double(torch.autograd.Function):  # a user's layer, as docs/api.md shows it
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, dout):
            return dout * 2

    assert ops.apply is _apply.apply and "apply" in ops.__all__
    x = torch.randn(3, dtype=torch.float64)
    assert ops.apply(Double, x).grad_fn is None  # no gradient can flow: the forward alone
    y = ops.apply(Double, x.requires_grad_())
    y.sum().backward()
    assert y.grad_fn is not None and torch.equal(x.grad, torch.full((3,), 2.0, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_scalar_as_a_0d_tensor_gives_the_same_bits_as_the_python_number(dtype):
    from customnn.ops._scalars import scalar

    x = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=dtype) * 3
    for value in (1e-5, 2 ** -0.5, 0.5, 0.25503486164919736, 128):
        s = scalar(value, x)
        assert s.shape == () and s.dtype == dtype and s is scalar(value, x)  # made once
        for op in (torch.mul, torch.add, torch.div):
            assert torch.equal(op(x, s), op(x, value)), (op, value)


def test_a_scalar_stays_a_python_number_in_half_precision_and_made_while_generating_serves_training():
    from customnn.ops import _scalars

    for dtype in (torch.bfloat16, torch.float16):  # a 0-d tensor there would be rounded first
        assert _scalars.scalar(0.1, torch.ones(2, dtype=dtype)) == 0.1
    with torch.inference_mode():
        s = _scalars.scalar(0.123456, torch.ones(2))
    assert not s.is_inference()
    w = torch.ones(3, requires_grad=True)
    (w * s).sum().backward()  # an inference tensor could not take part in a recorded product
    assert torch.equal(w.grad, torch.full((3,), 0.123456))
