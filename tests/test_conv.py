"""conv2d and pad2d against torch.nn.functional: forward and every gradient, on awkward
configurations, in float64 (rel. err <= 1e-10) and float32 (<= 1e-5); gradcheck; bad arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from customnn import ops
from customnn_ref.oracle import check_layer

DTYPES = [torch.float64, torch.float32]

# (x shape, weight shape, kwargs): odd sizes, batch 1, strides 2 and 3, padding, dilation,
# rectangular kernels and pairs, 1x1 kernels, kernels as large as the padded input.
CONFIGS = [
    ((2, 3, 9, 11), (4, 3, 3, 3), {}),
    ((1, 1, 7, 7), (2, 1, 5, 5), {}),
    ((3, 2, 10, 9), (5, 2, 3, 3), dict(stride=2, padding=1)),
    ((2, 4, 13, 8), (3, 4, 3, 2), dict(stride=3)),
    ((2, 3, 12, 12), (4, 3, 3, 3), dict(dilation=2, padding=2)),
    ((2, 3, 11, 9), (2, 3, 2, 3), dict(stride=(2, 1), padding=(0, 2), dilation=(1, 2))),
    ((1, 2, 6, 5), (3, 2, 1, 1), dict(stride=(3, 2))),
    ((2, 2, 5, 4), (3, 2, 5, 4), {}),                      # kernel covers the whole input
    ((2, 2, 3, 3), (2, 2, 5, 5), dict(padding=1)),          # kernel covers the padded input
    ((1, 3, 8, 8), (2, 3, 3, 3), dict(stride=2, padding=3, dilation=3)),
    # "same"-size stride 1 with >= 16 input channels: dx as the convolution with the flipped weight
    ((2, 16, 7, 6), (5, 16, 3, 3), dict(padding=1)),
    ((2, 17, 6, 7), (4, 17, 5, 3), dict(padding=(2, 1))),
]


def inputs(xs, ws, dtype, bias=True, x_grad=True):
    x = torch.randn(xs, dtype=dtype, requires_grad=x_grad)
    w = torch.randn(ws, dtype=dtype, requires_grad=True)
    b = torch.randn(ws[0], dtype=dtype, requires_grad=True) if bias else None
    return x, w, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,ws,kwargs", CONFIGS)
def test_conv2d_matches_torch(xs, ws, kwargs, dtype):
    check_layer(ops.conv2d, F.conv2d, list(inputs(xs, ws, dtype)), kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_without_bias_and_without_input_grad(dtype):
    x, w, _ = inputs((2, 3, 9, 8), (4, 3, 3, 3), dtype, x_grad=False)
    errors = check_layer(ops.conv2d, F.conv2d, [x, w, None], dict(padding=1, stride=2))
    assert set(errors) == {"forward", "grad1"}
    y = ops.conv2d(x, w)
    y.sum().backward()
    assert x.grad is None and w.grad is not None


def test_conv2d_frozen_weight_and_bias_only():
    x, w, b = inputs((2, 3, 7, 6), (4, 3, 3, 2), torch.float64)
    w.requires_grad_(False)
    errors = check_layer(ops.conv2d, F.conv2d, [x, w, b], dict(stride=2, padding=(2, 1)))
    assert set(errors) == {"forward", "grad0", "grad2"}
    x.requires_grad_(False)
    errors = check_layer(ops.conv2d, F.conv2d, [x, w, b], dict(dilation=(2, 1)))
    assert set(errors) == {"forward", "grad2"}


def test_conv2d_inference_mode_then_training():
    x, w, b = inputs((2, 3, 8, 8), (4, 3, 3, 3), torch.float64)
    with torch.inference_mode():
        y = ops.conv2d(x, w, b, padding=1)
    assert not y.requires_grad
    check_layer(ops.conv2d, F.conv2d, [x, w, b], dict(padding=1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_non_contiguous_inputs(dtype):
    # x in channels-last memory, seen as (N, C, H, W); weight transposed in memory.
    x = torch.randn(2, 9, 7, 3, dtype=dtype).permute(0, 3, 1, 2).requires_grad_(True)
    w = torch.randn(4, 3, 3, 3, dtype=dtype).transpose(2, 3).requires_grad_(True)
    b = torch.randn(8, dtype=dtype)[::2].requires_grad_(True)  # every other element
    assert not x.is_contiguous() and not w.is_contiguous() and not b.is_contiguous()
    check_layer(ops.conv2d, F.conv2d, [x, w, b], dict(padding=(1, 2), stride=(1, 2)))
    # Strided views of bigger leaves (check_layer would clone them contiguous, so by hand).
    grads = []
    for conv in (ops.conv2d, F.conv2d):
        torch.manual_seed(1)
        big = torch.randn(2, 3, 20, 20, dtype=dtype, requires_grad=True)
        wb = torch.randn(4, 3, 6, 3, dtype=dtype, requires_grad=True)
        bb = torch.randn(8, dtype=dtype, requires_grad=True)
        y = conv(big[:, :, 1:18:2, 3:17], wb[:, :, ::2], bb[::2], dilation=2)
        y.backward(torch.randn(y.shape, dtype=dtype))
        grads.append((y, big.grad, wb.grad, bb.grad))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=tol, atol=tol * ref.abs().max().item())


def test_conv2d_non_contiguous_upstream_gradient():
    x, w, b = inputs((2, 3, 8, 8), (4, 3, 3, 3), torch.float64)
    y = ops.conv2d(x, w, b, padding=1)
    dout = torch.randn(2, 8, 8, 4, dtype=torch.float64).permute(0, 3, 1, 2)  # channels-last
    dx, dw, db = torch.autograd.grad(y, (x, w, b), dout)
    x2, w2, b2 = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    rx, rw, rb = torch.autograd.grad(F.conv2d(x2, w2, b2, padding=1), (x2, w2, b2), dout)
    for ours, ref in ((dx, rx), (dw, rw), (db, rb)):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("xs,ws,kwargs", [
    ((2, 2, 6, 5), (3, 2, 3, 2), dict(stride=(2, 1), padding=1)),
    ((1, 2, 7, 7), (2, 2, 3, 3), dict(dilation=2, padding=(2, 1), stride=3)),
])
def test_conv2d_gradcheck(xs, ws, kwargs):
    x, w, b = inputs(xs, ws, torch.float64)
    assert torch.autograd.gradcheck(lambda x, w, b: ops.conv2d(x, w, b, **kwargs), (x, w, b))


def test_conv2d_bfloat16_runs_close_to_float32():
    x, w, b = inputs((2, 3, 10, 10), (4, 3, 3, 3), torch.float32)
    ref = F.conv2d(x, w, b, padding=1)
    y = ops.conv2d(*(t.detach().bfloat16().requires_grad_(True) for t in (x, w, b)), padding=1)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert (y.float() - ref).abs().max() <= 0.05 * ref.abs().max()


# ----------------------------------------------------------------------------- pad2d

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding,value", [
    (1, 0.0), (2, -1.5), ((1, 2, 0, 3), 0.0), ((0, 0, 2, 1), 7.0), ((3, -1, -2, 1), 0.5), ((-1, -1, -1, -1), 0.0),
])
def test_pad2d_matches_f_pad(padding, value, dtype):
    x = torch.randn(2, 3, 5, 6, dtype=dtype, requires_grad=True)
    pad = (padding,) * 4 if isinstance(padding, int) else padding
    check_layer(ops.pad2d, F.pad, [x], dict(padding=padding, value=value), dict(pad=pad, value=value))


def test_pad2d_other_ranks_and_gradcheck():
    for shape in [(5, 6), (3, 5, 6), (2, 2, 2, 5, 6)]:
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        check_layer(ops.pad2d, F.pad, [x], dict(padding=(2, 1, 0, 3)), dict(pad=(2, 1, 0, 3)))
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ops.pad2d(x, (1, -2, 2, -1), 3.0), (x,))


def test_pad2d_zero_padding_is_identity():
    x = torch.randn(2, 3, 4, 4)
    assert ops.pad2d(x, 0) is x


# ----------------------------------------------------------------------------- bad arguments

def test_conv2d_keeps_only_x_and_weight_for_backward():
    """Peak memory: the im2col columns (kh*kw times x's size) are re-formed in backward, not
    kept from the forward; and the result still matches PyTorch's, batch and stride included."""
    x = torch.randn(5, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    y = ops.conv2d(x, w, None, stride=(2, 1), padding=1)
    kept = sum(t.numel() for t in y.grad_fn.saved_tensors)
    assert kept == x.numel() + w.numel()
    check_layer(ops.conv2d, F.conv2d, [x, w, torch.randn(4, dtype=torch.float64, requires_grad=True)],
                dict(stride=(2, 1), padding=1, dilation=(1, 2)))


def bad(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


def test_conv2d_errors():
    x, w, b = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4)
    bad(r"x must be 3-D or 4-D .*\(8, 8\)", ops.conv2d, x[0, 0], w, b)
    bad(r"weight must be 4-D .*\(4, 3, 9\)", ops.conv2d, x, w.view(4, 3, 9), b)
    bad(r"x has 3 channels but weight expects 2.*\(2, 3, 8, 8\).*\(4, 2, 3, 3\)", ops.conv2d, x, torch.randn(4, 2, 3, 3))
    bad(r"bias must have shape \(4,\).*\(5,\)", ops.conv2d, x, w, torch.randn(5))
    bad(r"bias must be 1-D", ops.conv2d, x, w, torch.randn(4, 1))
    bad(r"kernel height 9 .* padded input height 8", ops.conv2d, x, torch.randn(4, 3, 9, 3))
    bad(r"kernel width 3 \(dilation 4\) .* padded input width 8", ops.conv2d, x, w, dilation=(1, 4))
    bad(r"stride must be >= 1", ops.conv2d, x, w, stride=0)
    bad(r"stride must be >= 1", ops.conv2d, x, w, stride=(1, -1))
    bad(r"dilation must be >= 1", ops.conv2d, x, w, dilation=0)
    bad(r"padding must be >= 0", ops.conv2d, x, w, padding=-1)
    bad(r"stride must be an int or a pair", ops.conv2d, x, w, stride=(1, 2, 3))
    bad(r"x must be a floating-point tensor", ops.conv2d, x.long(), w)
    bad(r"same dtype", ops.conv2d, x.double(), w)
    bad(r"x must be a torch.Tensor", ops.conv2d, [[1.0]], w)


def test_pad2d_errors():
    x = torch.randn(2, 3, 4, 4)
    bad(r"padding must be an int or an even number of ints", ops.pad2d, x, (1, 2, 3))
    bad(r"padding must be an int or an even number of ints", ops.pad2d, x, (1.0, 2))
    bad(r"crops dim 2", ops.pad2d, x, (0, 0, -3, -2))
    bad(r"pads 5 dims but x has shape \(2, 3, 4, 4\)", ops.pad2d, x, (1,) * 10)
    bad(r"only mode='constant'", ops.pad2d, x, (1, 1), mode="reflect")
    bad(r"x must be .*-D", ops.pad2d, torch.randn(4), 1)


@pytest.mark.parametrize("cap_images", [1, 2, 3])
def test_conv2d_in_batch_chunks_equals_torch(monkeypatch, cap_images):
    """Columns formed a chunk of the batch at a time (forced small here) give the same
    output and gradients, and the chunks really are several."""
    from customnn.ops import conv as conv_mod

    x = torch.randn(7, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    Ho, Wo = (9 + 2 - 3) // 2 + 1, (8 + 2 - 2) // 2 + 1
    per_image = 3 * 3 * 2 * Ho * Wo * 8  # K * L * element size
    monkeypatch.setattr(conv_mod, "MAX_COLUMN_BYTES", cap_images * per_image)
    assert len(conv_mod._batch_chunks(7, per_image)) == -(-7 // cap_images)
    check_layer(lambda x, w, b: ops.conv2d(x, w, b, stride=2, padding=1),
                lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), [x, w, b])


# ----------------------------------------------------------------------------- options: groups, "same", unbatched

# (x shape, weight shape, kwargs): grouped, depthwise (with a channel multiplier), "same" with
# odd and even kernels and dilation (the asymmetric extra pixel), "valid", unbatched inputs.
OPTION_CONFIGS = [
    ((2, 4, 9, 8), (6, 2, 3, 3), dict(groups=2)),
    ((2, 4, 8, 8), (4, 1, 3, 3), dict(groups=4, padding=1)),                       # depthwise
    ((1, 3, 9, 7), (6, 1, 3, 2), dict(groups=3, stride=(2, 1), dilation=(1, 2))),  # depthwise x2
    ((2, 6, 7, 7), (6, 3, 2, 2), dict(groups=2, padding="same")),                  # even kernel: extra pixel
    ((2, 3, 8, 9), (4, 3, 4, 3), dict(padding="same", dilation=(1, 3))),
    ((1, 2, 6, 6), (3, 2, 5, 5), dict(padding="same")),
    ((2, 3, 8, 9), (4, 3, 3, 2), dict(padding="valid", stride=2)),
    ((4, 6, 5), (3, 4, 2, 3), dict(padding="same", dilation=3)),                   # unbatched (C, H, W)
    ((4, 8, 8), (8, 1, 3, 3), dict(groups=4, stride=2, padding=(2, 1))),           # unbatched depthwise
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,ws,kwargs", OPTION_CONFIGS)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_options_match_torch(xs, ws, kwargs, dtype, bias):
    x, w, b = inputs(xs, ws, dtype, bias=bias)
    check_layer(ops.conv2d, F.conv2d, [x, w, b], kwargs)
    if dtype == torch.float64:
        check_layer(ops.conv2d_reference, F.conv2d, [x, w, b], kwargs)


@pytest.mark.parametrize("xs,ws,kwargs", [
    ((2, 4, 5, 5), (4, 2, 3, 2), dict(groups=2, padding="same")),
    ((3, 5, 4), (6, 1, 2, 2), dict(groups=3, padding=1, stride=2)),
])
def test_conv2d_options_gradcheck(xs, ws, kwargs):
    x, w, b = inputs(xs, ws, torch.float64)
    assert torch.autograd.gradcheck(lambda x, w, b: ops.conv2d(x, w, b, **kwargs), (x, w, b))


def test_conv2d_groups_in_batch_chunks(monkeypatch):
    from customnn.ops import conv as conv_mod

    monkeypatch.setattr(conv_mod, "MAX_COLUMN_BYTES", 1)  # one image per chunk
    x, w, b = inputs((3, 4, 7, 6), (6, 2, 3, 3), torch.float64)
    check_layer(ops.conv2d, F.conv2d, [x, w, b], dict(groups=2, padding=1))


def test_conv2d_option_errors():
    x, w = torch.randn(2, 4, 8, 8), torch.randn(6, 2, 3, 3)
    bad(r"groups must be an int >= 1", ops.conv2d, x, w, groups=0)
    bad(r"out_channels 6 must be divisible by groups=4", ops.conv2d, x, torch.randn(6, 1, 3, 3), groups=4)
    bad(r"x has 4 channels but weight expects 6 \(2 per group, groups=3\)", ops.conv2d, x, w, groups=3)
    bad(r"padding='same' needs stride 1", ops.conv2d, x, torch.randn(6, 4, 3, 3), stride=2, padding="same")
    bad(r"padding must be an int, a pair, 'valid' or 'same'", ops.conv2d, x, torch.randn(6, 4, 3, 3), padding="full")
    bad(r"weight must be 4-D", ops.conv2d, x[0], torch.randn(6, 4, 3), padding="same")
