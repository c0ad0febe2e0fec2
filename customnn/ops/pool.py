"""2-D max pooling and average pooling, forward and hand-written backward.

    from customnn import ops
    y = ops.max_pool2d(x, 2)              # same as F.max_pool2d(x, 2)
    y = ops.avg_pool2d(x, 3, 2, 1)        # same as F.avg_pool2d (count_include_pad=True)

Both loop over the kh*kw positions inside a window (never over pixels): position (i, j) of
every window at once is a strided view of the (padded) input, and the windows are combined
elementwise, a running sum or a running maximum. Max pooling keeps, for each output, which
position of its window held the maximum: the *first* one in row-major order when several
are equal, as PyTorch breaks ties (and, as PyTorch, the last NaN when the window holds any).
Its backward sends each output gradient to that one input pixel, adding (windows may
overlap, so one pixel can be the maximum of several windows).
Average pooling's backward spreads each output gradient evenly over its window, again
adding; when the windows tile the input exactly (stride equal to the kernel, no padding)
that is just each gradient repeated kh x kw times.

The readable versions, ``max_pool2d_reference`` and ``avg_pool2d_reference``, sit above each
fast version: a loop over output pixels taking each window's max or mean, whose gradients
autograd derives (tests/test_reference.py compares them with the fast layers).

Dimension letters: N batch, C channels, H/W input height/width, kh/kw window size,
Ho/Wo output height/width, Hp/Wp padded input height/width.
"""

from __future__ import annotations

import functools

import torch

from customnn.ops._checks import check_float, check_non_negative, check_positive, check_rank, pair
from customnn.ops.conv import pad2d_reference, pad_constant


def pool_args(x, kernel_size, stride, padding, name):
    """Check a pooling layer's arguments (ValueError naming argument and shapes); return the
    pairs and the output size."""
    check_rank(x, "x", 4, "(N, C, H, W)")
    check_float(x, "x")
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else pair(stride, "stride")
    padding = pair(padding, "padding")
    check_positive(kernel, "kernel_size")
    check_positive(stride, "stride")
    check_non_negative(padding, "padding")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{name}: padding {padding} must be at most half of kernel_size {kernel}")
    H, W = x.shape[-2:]
    if H + 2 * padding[0] < kernel[0] or W + 2 * padding[1] < kernel[1]:
        raise ValueError(f"{name}: kernel_size {kernel} is larger than the padded input "
                         f"{(H + 2 * padding[0], W + 2 * padding[1])}: x {tuple(x.shape)}, padding {padding}")
    Ho = (H + 2 * padding[0] - kernel[0]) // stride[0] + 1
    Wo = (W + 2 * padding[1] - kernel[1]) // stride[1] + 1
    return kernel, stride, padding, (Ho, Wo)


def _offset_view(xp: torch.Tensor, i: int, j: int, stride, out_size) -> torch.Tensor:
    """Pixel (i, j) of every window, as a view: (N, C, Ho, Wo). Looping over the kh*kw kernel
    offsets and combining these views elementwise is much faster than reducing a window axis."""
    (sh, sw), (Ho, Wo) = stride, out_size
    return xp[:, :, i: i + sh * (Ho - 1) + 1: sh, j: j + sw * (Wo - 1) + 1: sw]


def _tiles(kernel, stride, padding, in_size) -> bool:
    """Do the windows tile the input exactly (stride == kernel, no padding, no remainder)?"""
    return (stride == kernel and padding == (0, 0)
            and in_size[0] % kernel[0] == 0 and in_size[1] % kernel[1] == 0)


@functools.lru_cache(maxsize=64)
def _window_base(Ho, Wo, Wp, stride, device) -> torch.Tensor:
    """Flat position, in the padded input, of each window's top-left pixel: (Ho*Wo,)."""
    rows = torch.arange(Ho, device=device) * (stride[0] * Wp)
    cols = torch.arange(Wo, device=device) * stride[1]
    return (rows.view(Ho, 1) + cols.view(1, Wo)).reshape(-1)


def _pool_reference(x: torch.Tensor, kernel, stride, padding, out_size, value: float, reduce) -> torch.Tensor:
    """One output pixel at a time: ``reduce`` (max or mean) over its window of x padded with ``value``."""
    (kh, kw), (sh, sw), (ph, pw), (Ho, Wo) = kernel, stride, padding, out_size
    N, C = x.shape[:2]
    xp = pad2d_reference(x, (pw, pw, ph, ph), value)  # (N, C, H + 2ph, W + 2pw)
    rows = []
    for i in range(Ho):
        row = []
        for j in range(Wo):
            window = xp[:, :, i * sh: i * sh + kh, j * sw: j * sw + kw]  # (N, C, kh, kw)
            row.append(reduce(window.reshape(N, C, kh * kw)))  # (N, C)
        rows.append(torch.stack(row, dim=-1))  # (N, C, Wo)
    return torch.stack(rows, dim=-2)  # (N, C, Ho, Wo)


# ----------------------------------------------------------------------------- max pooling

def max_pool2d_reference(x: torch.Tensor, kernel_size, stride=None, padding=0) -> torch.Tensor:
    """Max pooling, one output pixel at a time: the largest value in each window (padding
    counts as -inf). ``max`` over a dim sends the gradient to the first maximum, PyTorch's rule."""
    args = pool_args(x, kernel_size, stride, padding, "max_pool2d_reference")
    return _pool_reference(x, *args, float("-inf"), lambda w: w.max(dim=-1).values)


def _max_and_argmax(xp, kernel, stride, out_size, nan_moves: bool):
    """Maximum of every window of the padded input xp, and where it is: (N, C, Ho, Wo) each.

    Walk the window in row-major order keeping the running maximum and where it was, as a
    flat offset into the padded input (i * Wp + j for window pixel (i, j)). Only a strictly
    larger value moves it, so ties keep the first maximum (PyTorch's rule); as offsets only
    grow along the walk, "the last offset that moved it" is a running max of offset * moved,
    much cheaper than masked_fill. With ``nan_moves`` a NaN moves it too, as in PyTorch.
    """
    (kh, kw), Wp = kernel, xp.shape[-1]
    out = _offset_view(xp, 0, 0, stride, out_size).clone()  # (N, C, Ho, Wo)
    arg = torch.zeros(out.shape, dtype=torch.int32, device=xp.device)  # (N, C, Ho, Wo)
    for i in range(kh):
        for j in range(kw):
            if i == j == 0:
                continue
            value = _offset_view(xp, i, j, stride, out_size)  # (N, C, Ho, Wo)
            moved = torch.gt(value, out)
            if nan_moves:
                moved |= torch.isnan(value)
            moved = moved.to(torch.int32).mul_(i * Wp + j)
            torch.maximum(arg, moved, out=arg)
            torch.maximum(out, value, out=out)  # propagates NaN
    return out, arg


class MaxPool2d(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, out_size):
        xp = pad_constant(x, *padding, value=float("-inf"))  # (N, C, Hp, Wp)
        out, arg = _max_and_argmax(xp, kernel, stride, out_size, nan_moves=False)
        # A window holding a NaN outputs NaN (torch.maximum propagates it), and PyTorch then
        # points its gradient at the window's last NaN: walk again with that rule, only when
        # the output holds a NaN (its sum is NaN; one cheap reduction, not a pass of isnan).
        if torch.isnan(out.sum()):
            out, arg = _max_and_argmax(xp, kernel, stride, out_size, nan_moves=True)
        # Only the argmax (int32, an offset from its window's corner) is kept for backward.
        ctx.save_for_backward(arg)
        ctx.geometry = (x.shape, xp.shape, stride, padding)
        return out

    @staticmethod
    def backward(ctx, dout):
        (arg,) = ctx.saved_tensors
        x_shape, xp_shape, stride, (ph, pw) = ctx.geometry
        N, C, H, W = x_shape
        Hp, Wp = xp_shape[-2:]
        Ho, Wo = arg.shape[-2:]
        # Flat position of each argmax in the padded input (int64, as scatter wants).
        # Windows may overlap, so add; scatter_add_ is also the fastest way when they tile.
        where = _window_base(Ho, Wo, Wp, tuple(stride), arg.device) + arg.view(N * C, Ho * Wo)  # (N*C, Ho*Wo)
        dxp = dout.new_zeros((N * C, Hp * Wp))  # (N*C, Hp*Wp)
        dxp.scatter_add_(1, where, dout.reshape(N * C, Ho * Wo))
        dx = dxp.view(N, C, Hp, Wp)[:, :, ph: ph + H, pw: pw + W]  # un-pad: a view
        return dx, None, None, None, None


def max_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0) -> torch.Tensor:
    """Max pooling as ``F.max_pool2d``: x (N, C, H, W); stride defaults to kernel_size; padding
    (at most half the kernel) counts as -inf. Returns (N, C, Ho, Wo)."""
    kernel, stride, padding, out_size = pool_args(x, kernel_size, stride, padding, "max_pool2d")
    return MaxPool2d.apply(x, kernel, stride, padding, out_size)


# ----------------------------------------------------------------------------- average pooling

def avg_pool2d_reference(x: torch.Tensor, kernel_size, stride=None, padding=0) -> torch.Tensor:
    """Average pooling, one output pixel at a time: the mean of each window, padding counted
    as zeros (so every window divides by kh*kw, count_include_pad=True)."""
    args = pool_args(x, kernel_size, stride, padding, "avg_pool2d_reference")
    return _pool_reference(x, *args, 0.0, lambda w: w.mean(dim=-1))


class AvgPool2d(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, out_size):
        N, C, H, W = x.shape
        (kh, kw), (Ho, Wo) = kernel, out_size
        # count_include_pad=True: padding counts as zeros, so every window divides by kh*kw.
        xp = pad_constant(x, *padding)  # (N, C, Hp, Wp)
        out = _offset_view(xp, 0, 0, stride, out_size).clone()  # (N, C, Ho, Wo)
        for p in range(1, kh * kw):
            out += _offset_view(xp, p // kw, p % kw, stride, out_size)
        out /= kh * kw
        # Nothing but the geometry is needed for backward.
        ctx.geometry = (x.shape, xp.shape, kernel, stride, padding)
        return out

    @staticmethod
    def backward(ctx, dout):
        x_shape, xp_shape, (kh, kw), stride, (ph, pw) = ctx.geometry
        N, C, H, W = x_shape
        Ho, Wo = dout.shape[-2:]
        share = dout / (kh * kw)  # (N, C, Ho, Wo): what each pixel of a window receives
        if _tiles((kh, kw), stride, (ph, pw), (H, W)):
            dx = share.repeat_interleave(kh, dim=2).repeat_interleave(kw, dim=3)  # (N, C, H, W)
            return dx, None, None, None, None
        dxp = dout.new_zeros(xp_shape)  # (N, C, Hp, Wp)
        for i in range(kh):  # windows may overlap: add one kernel offset at a time
            for j in range(kw):
                _offset_view(dxp, i, j, stride, (Ho, Wo)).add_(share)
        dx = dxp[:, :, ph: ph + H, pw: pw + W]  # un-pad: a view
        return dx, None, None, None, None


def avg_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0) -> torch.Tensor:
    """Average pooling as ``F.avg_pool2d`` with its defaults (count_include_pad=True,
    ceil_mode=False): x (N, C, H, W); stride defaults to kernel_size. Returns (N, C, Ho, Wo)."""
    kernel, stride, padding, out_size = pool_args(x, kernel_size, stride, padding, "avg_pool2d")
    return AvgPool2d.apply(x, kernel, stride, padding, out_size)
