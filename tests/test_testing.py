"""customnn.testing: check_layer passes real layers and catches, by name, a wrong gradient, a wrong
forward, a layer that only works on contiguous inputs, and a PyTorch layer called in forward or
only in backward; the banned list is the one tests/test_purity.py enforces; misuse is a clear
error."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from customnn import ops
from customnn.testing import BANNED_NAMES, LayerCheck, banned_operator, check_layer

pytestmark = pytest.mark.usefixtures("one_thread")


def randn(*shape, scale=1.0):
    return torch.randn(*shape, dtype=torch.float64) * scale


def test_conv2d_with_stride_and_padding_passes_and_prints_one_line_per_check():
    result = check_layer(ops.conv2d, F.conv2d, randn(2, 3, 7, 6), randn(4, 3, 3, 3), randn(4), stride=2, padding=1)
    assert isinstance(result, LayerCheck) and result.ok
    lines = str(result).splitlines()
    labels = ["float64", "float64, non-contiguous", "float32", "float32, non-contiguous", "gradcheck", "one rule"]
    assert [line.split("  ")[1].strip() for line in lines[1:]] == labels, str(result)
    assert all(" OK " in line for line in lines[1:])
    assert "gradient of `weight`" in lines[1] and "gradient of `bias`" in lines[1]  # named from the signature


def test_layer_norm_and_cross_entropy_with_integer_targets_pass():
    ref = lambda x, weight, bias: F.layer_norm(x, x.shape[-1:], weight, bias)  # noqa: E731
    check_layer(ops.layer_norm, ref, randn(3, 4, 5, scale=2), randn(5), randn(5))
    target = torch.randint(0, 5, (7,))
    result = check_layer(ops.cross_entropy, F.cross_entropy, randn(7, 5, scale=3), target, label_smoothing=0.1)
    assert "gradient of `logits`" in str(result) and "target" not in str(result)  # integers: not differentiated


def test_only_the_inputs_that_require_grad_are_differentiated_when_some_do():
    x, w = randn(4, 3).requires_grad_(), randn(3)
    result = check_layer(lambda x, weight: x * weight, lambda x, weight: x * weight, x, w)
    assert "gradient of `x`" in str(result) and "gradient of `weight`" not in str(result)


class _ScaledWeightGrad(torch.autograd.Function):
    """x * weight, with weight's gradient 1% too large."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return x * weight

    @staticmethod
    def backward(ctx, dout):
        x, weight = ctx.saved_tensors
        return dout * weight, (dout * x).sum(0) * 1.01


def test_a_wrong_backward_is_caught_with_the_argument_named():
    def scale(x, weight):
        return _ScaledWeightGrad.apply(x, weight)

    with pytest.raises(AssertionError) as err:
        check_layer(scale, lambda x, weight: x * weight, randn(5, 3), randn(3))
    message = str(err.value)
    assert "gradient of `weight`: max abs diff" in message and "tolerance 1e-10" in message, message
    assert "gradient of `x`:" not in message  # x's gradient is right
    assert "gradcheck" in message and "with respect to `weight`" in message, message


def test_a_forward_off_by_a_little_is_caught():
    with pytest.raises(AssertionError, match=r"float64 +FAIL +output: max abs diff .* at \(\d+, \d+\)"):
        check_layer(lambda x: ops.gelu(x) * (1 + 1e-8), F.gelu, randn(4, 6))


def test_a_layer_that_assumes_contiguous_memory_fails_only_the_non_contiguous_checks():
    def rows_by_stride(x):  # reads memory as if x were contiguous
        return x.as_strided(x.shape, (x.shape[1], 1)) * 2

    result = check_layer(rows_by_stride, lambda x: x * 2, randn(3, 4), raises=False, gradcheck=False)
    failed = [c.label for c in result.checks if not c.ok]
    assert failed == ["float64, non-contiguous", "float32, non-contiguous"], str(result)


@pytest.mark.parametrize("call,name", [
    (lambda x: F.softmax(x, dim=-1), "torch.nn.functional.softmax"),
    (lambda x: torch.softmax(x, -1), "torch.softmax"),
    (lambda x: x.softmax(-1), "Tensor.softmax"),
    (lambda x: torch.ops.aten._softmax(x, -1, False), "torch.ops.aten._softmax"),
    (lambda x: F.scaled_dot_product_attention(x, x, x) * 0 + ops.softmax_reference(x, -1),
     "torch.nn.functional.scaled_dot_product_attention"),
], ids=["F.softmax", "torch.softmax", "Tensor.softmax", "aten._softmax", "F.sdpa"])
def test_a_pytorch_layer_called_in_forward_is_caught_by_name(call, name):
    def my_softmax(x):
        return call(x)

    with pytest.raises(AssertionError) as err:
        check_layer(my_softmax, lambda x: ops.softmax_reference(x, -1), randn(3, 5))
    message = str(err.value)
    assert "my_softmax" in message and f"{name} in forward (test_testing.py:" in message, message
    assert message.count("FAIL") == 1  # the numbers agree: only the one rule fails


def test_a_call_around_the_python_api_is_caught_at_the_operator_level():
    def hidden_softmax(x):
        with torch._C.DisableTorchFunction():  # no TorchFunctionMode sees this call
            return torch.softmax(x, -1)

    with pytest.raises(AssertionError, match=r"aten\._softmax in forward \(test_testing.py:\d+ in hidden_softmax\)"):
        check_layer(hidden_softmax, lambda x: ops.softmax_reference(x, -1), randn(3, 5))


@pytest.mark.parametrize("which", ["F.softmax", "torch.softmax", "Tensor.softmax"])
def test_a_pytorch_layer_called_only_in_backward_is_caught(which):
    calls = {"F.softmax": lambda t: F.softmax(t, -1), "torch.softmax": lambda t: torch.softmax(t, -1),
             "Tensor.softmax": lambda t: t.softmax(-1)}

    class SoftmaxInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * 3

        @staticmethod
        def backward(ctx, dout):
            (x,) = ctx.saved_tensors
            return dout * 3 + 0 * calls[which](x)  # the right gradient, by a PyTorch layer

    with pytest.raises(AssertionError) as err:
        check_layer(lambda x: SoftmaxInBackward.apply(x), lambda x: x * 3, randn(2, 4))
    message = str(err.value)
    expected = {"F.softmax": "torch.nn.functional.softmax"}.get(which, which)
    assert f"{expected} in backward (test_testing.py:" in message and "in forward" not in message, message


def test_no_customnn_layer_calls_a_pytorch_layer_at_run_time():
    """The runtime rule agrees with the static one on every layer and option of customnn check."""
    from customnn.testing.harness import _trace
    from customnn_ref import check

    gen = torch.Generator().manual_seed(0)
    make = lambda *s: torch.randn(s, generator=gen, dtype=torch.float64)  # noqa: E731
    integers = lambda lo, hi, s: torch.randint(lo, hi, s, generator=gen)  # noqa: E731
    bad = {}
    for row, (layer, trials) in check._configs(make, integers).items():
        for trial in trials(getattr(ops, layer), getattr(ops, f"{layer}_reference")):
            args = [t.detach().requires_grad_(w) if isinstance(t, torch.Tensor) else t for _, t, w in trial.inputs]
            found = _trace(trial.ours, args, trial.kwargs, 0)
            if not found.ok:
                bad[row] = found.detail
    assert not bad, bad


def test_the_banned_list_is_the_one_test_purity_enforces():
    import test_purity

    assert test_purity.BANNED_NAMES is BANNED_NAMES
    assert banned_operator("native_layer_norm_backward") and banned_operator("_softmax_backward_data")
    assert banned_operator("convolution") and banned_operator("_scaled_dot_product_flash_attention_for_cpu")
    assert not any(banned_operator(op) for op in ("mm", "addmm", "exp", "amax", "unfold", "as_strided", "index_add"))


def test_misuse_is_a_clear_error():
    with pytest.raises(ValueError, match="no floating-point tensor among the inputs"):
        check_layer(lambda i: i * 2, lambda i: i * 2, torch.arange(4), 3)
    with pytest.raises(ValueError, match=r"output: shape \(3, 4\) differs from the reference's \(4, 3\)"):
        check_layer(lambda x: x * 2, lambda x: (x * 2).T, randn(3, 4))


def test_raises_false_returns_the_failures_and_a_layer_error_propagates_by_default():
    result = check_layer(lambda x: x * 2.001, lambda x: x * 2, randn(3), raises=False, dtypes=(torch.float64,))
    assert not result.ok and "FAIL" in str(result)

    def broken(x):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        check_layer(broken, lambda x: x, randn(3))
