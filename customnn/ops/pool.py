"""2-D max pooling, forward and hand-written backward (average pooling: ``avg_pool.py``).

    from customnn import ops
    y = ops.max_pool2d(x, 2)                                   # same as F.max_pool2d(x, 2)
    y, idx = ops.max_pool2d(x, 3, 2, 1, dilation=2, ceil_mode=True, return_indices=True)

out[n, c, i, j] = max over a < kh, b < kw of xp[n, c, i*sh + a*dh, j*sw + b*dw], xp being x
padded with -inf (padding at most half the kernel; in ceil mode further -inf on the bottom /
right for the last, partial windows: ``_pool_geometry.py``).

The forward loops over the kh*kw positions inside a window (never over pixels): position
(a, b) of every window at once is a strided view of the padded input, and the windows are
combined elementwise into a running maximum. It keeps, for each output, which position of its
window held the maximum: the *first* one in row-major order when several are equal, as
PyTorch breaks ties (and, as PyTorch, the last NaN when the window holds any; and, for a
window whose input values are all -inf, its first position inside x). The backward sends each
output gradient to that one input pixel, adding (windows may overlap, so one pixel can be the
maximum of several windows): dx = scatter_add(dout at argmax).

``return_indices=True`` also returns that position as PyTorch's flat index into each channel
of x, row * W + column, int64, shaped like the output (no gradient).

The readable version, ``max_pool2d_reference``, sits above the fast one: a loop over output
pixels taking each window's max, whose gradient autograd derives (tests/test_reference.py
compares them). ``avg_pool2d`` and its reference are re-exported here.

Dimension letters: N batch, C channels, H/W input height/width, kh/kw window size,
Ho/Wo output height/width, Hp/Wp padded input height/width.
"""

from __future__ import annotations

import functools

import torch

from customnn.ops._apply import apply
from customnn.ops._autocast import autocast_call, autocast_on
from customnn.ops._pool_geometry import (Geometry, offset_view, pad_to, pool_args, window_base, windows_reference,
                                         windows_view)
from customnn.ops.avg_pool import avg_pool2d, avg_pool2d_reference  # noqa: F401  (exported from here too)


def max_pool2d_reference(x: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1,
                         ceil_mode: bool = False, return_indices: bool = False):
    """Max pooling, one output pixel at a time: the largest value in each window (padding
    counts as -inf). ``max`` over a dim sends the gradient to the first maximum, PyTorch's rule;
    its position gives the index, row * W + column in x."""
    g = pool_args(x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d_reference")
    xb = x if g.batched else x.unsqueeze(0)
    out, pos = windows_reference(xb, g, float("-inf")).max(dim=-1)  # (N, C, Ho, Wo) each
    if not return_indices:
        return out if g.batched else out.squeeze(0)
    kw, (sh, sw), (ph, pw), (dh, dw), (Ho, Wo) = g.kernel[1], g.stride, g.padding, g.dilation, g.out_size
    row = torch.arange(Ho).view(Ho, 1) * sh - ph + (pos // kw) * dh  # (N, C, Ho, Wo) input row of the max
    col = torch.arange(Wo).view(1, Wo) * sw - pw + (pos % kw) * dw
    idx = row * xb.shape[-1] + col
    return (out, idx) if g.batched else (out.squeeze(0), idx.squeeze(0))


@functools.lru_cache(maxsize=64)
def _first_inside(g: Geometry, Wp: int, device) -> torch.Tensor:
    """For each window, the offset (row * Wp + column, from its top-left corner in the padded
    input) of its first position inside x, in row-major order: (Ho, Wo) int32."""
    (sh, sw), (ph, pw), (dh, dw), (Ho, Wo) = g.stride, g.padding, g.dilation, g.out_size

    def first(n, s, p, d):  # the first dilated step that lands at or after x's start
        start = torch.arange(n, device=device) * s - p
        return (-start).clamp_min(0).add(d - 1).div(d, rounding_mode="floor") * d

    rows, cols = first(Ho, sh, ph, dh), first(Wo, sw, pw, dw)
    return (rows.view(Ho, 1) * Wp + cols.view(1, Wo)).to(torch.int32)


# Up to this many window values (N*C*Ho*Wo*kh*kw) the windows are copied out and reduced with
# one ``max``: a few dispatched operations whatever the kernel. Above it, the walk over kernel
# positions (``_walk``), which reads the input in place, is several times faster.
_SMALL = 16384


@functools.lru_cache(maxsize=64)
def _offsets(g: Geometry, Wp: int, device) -> torch.Tensor:
    """For window position p (row-major), its offset a*dh*Wp + b*dw from the window's corner: (kh*kw,) int32."""
    (kh, kw), (dh, dw) = g.kernel, g.dilation
    a, b = torch.arange(kh, device=device), torch.arange(kw, device=device)
    return ((a * dh * Wp).view(kh, 1) + (b * dw).view(1, kw)).reshape(-1).to(torch.int32)


@functools.lru_cache(maxsize=16)
def _positions(K: int, device) -> torch.Tensor:
    return torch.arange(K, device=device)  # (K,) int64: each window position


def _max_small(xp, g: Geometry):
    """Maximum of every window and where it is, from one copy of the windows: (N, C, Ho, Wo) each.

    ``max`` over the window's positions returns the first maximum when several are equal
    (PyTorch's rule) and, where the window holds NaN, NaN at its first NaN; PyTorch points at
    the *last* NaN: the largest position * isnan, which is at least the first NaN's position
    and 0 where there is none, so one elementwise maximum applies the rule with no branch on
    the data."""
    K = g.kernel[0] * g.kernel[1]
    win = windows_view(xp, g).reshape(*xp.shape[:2], *g.out_size, K)  # (N, C, Ho, Wo, K), the copy
    out, pos = win.max(-1)  # (N, C, Ho, Wo) each
    last_nan = torch.isnan(win).mul(_positions(K, xp.device)).amax(-1)  # (N, C, Ho, Wo) int64
    pos = torch.maximum(pos, last_nan)
    return out, torch.take(_offsets(g, xp.shape[-1], xp.device), pos)  # int32 offsets from each window's corner


def _walk(xp, g: Geometry):
    """Maximum of every window of the padded input xp, and where it is: (N, C, Ho, Wo) each.

    Walk the window in row-major order keeping the running maximum and where it was, as a
    flat offset into the padded input (a*dh*Wp + b*dw for window position (a, b)). Only a
    strictly larger value, or a NaN, moves it, so ties keep the first maximum and a window
    holding NaN points at its last NaN (PyTorch's rules); as offsets only grow along the walk,
    "the last offset that moved it" is a running max of offset * moved, much cheaper than
    masked_fill. Without padding the walk starts from position (0, 0); with padding it starts
    from -inf at each window's first position inside x, which a padded -inf never beats.
    """
    (kh, kw), (dh, dw), Wp = g.kernel, g.dilation, xp.shape[-1]
    if g.padding == (0, 0):
        out = offset_view(xp, 0, 0, g.stride, g.out_size).clone()  # (N, C, Ho, Wo)
        arg = torch.zeros(out.shape, dtype=torch.int32, device=xp.device)  # (N, C, Ho, Wo)
        first = 1
    else:
        out = xp.new_full((*xp.shape[:2], *g.out_size), float("-inf"))  # (N, C, Ho, Wo)
        arg = _first_inside(g, Wp, xp.device).expand(out.shape).clone()  # (N, C, Ho, Wo)
        first = 0
    for p in range(first, kh * kw):
        i, j = (p // kw) * dh, (p % kw) * dw
        value = offset_view(xp, i, j, g.stride, g.out_size)  # (N, C, Ho, Wo)
        moved = torch.gt(value, out)
        moved |= torch.isnan(value)
        moved = moved.to(torch.int32).mul_(i * Wp + j)
        torch.maximum(arg, moved, out=arg)
        torch.maximum(out, value, out=out)  # propagates NaN
    return out, arg


def _max_only(xp, g: Geometry, small: bool):
    """The maximum of every window, where it is not needed: (N, C, Ho, Wo). NaN propagates (a
    window holding one is NaN), as in ``_max_small`` and ``_walk``; a padded -inf never wins."""
    if small:
        return windows_view(xp, g).amax((-2, -1))  # one reduction of the window views
    (kh, kw), (dh, dw) = g.kernel, g.dilation
    out = offset_view(xp, 0, 0, g.stride, g.out_size).clone()  # (N, C, Ho, Wo)
    for p in range(1, kh * kw):
        torch.maximum(out, offset_view(xp, (p // kw) * dh, (p % kw) * dw, g.stride, g.out_size), out=out)
    return out


class MaxPool2d(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, g: Geometry, return_indices: bool):
        xp = pad_to(x, g.padding, g.extended, float("-inf"))  # (N, C, Hp, Wp)
        (Ho, Wo), (kh, kw) = g.out_size, g.kernel
        small = g.padding == (0, 0) and x.shape[0] * x.shape[1] * Ho * Wo * kh * kw <= _SMALL
        if not return_indices and not ctx.needs_input_grad[0]:  # no gradient: where it is is not needed
            return _max_only(xp, g, small)
        out, arg = _max_small(xp, g) if small else _walk(xp, g)
        # Only the argmax (int32, an offset from its window's corner) is kept for backward.
        ctx.save_for_backward(arg)
        ctx.geometry = (x.shape, xp.shape, g)
        if not return_indices:
            return out
        Wp = xp.shape[-1]
        where = window_base(Ho, Wo, Wp, g.stride, arg.device).view(Ho, Wo) + arg  # (N, C, Ho, Wo) int64
        idx = (where // Wp - g.padding[0]) * x.shape[-1] + (where % Wp - g.padding[1])
        ctx.mark_non_differentiable(idx)
        return out, idx

    @staticmethod
    def backward(ctx, dout, *_):
        (arg,) = ctx.saved_tensors
        x_shape, xp_shape, g = ctx.geometry
        N, C, H, W = x_shape
        Hp, Wp = xp_shape[-2:]
        (ph, pw), (Ho, Wo) = g.padding, g.out_size
        # Flat position of each argmax in the padded input (int64, as scatter wants).
        # Windows may overlap, so add; scatter_add_ is also the fastest way when they tile.
        where = window_base(Ho, Wo, Wp, g.stride, arg.device) + arg.view(N * C, Ho * Wo)  # (N*C, Ho*Wo)
        dxp = dout.new_zeros((N * C, Hp * Wp))  # (N*C, Hp*Wp)
        dxp.scatter_add_(1, where, dout.reshape(N * C, Ho * Wo))
        dx = dxp.view(N, C, Hp, Wp)
        if (Hp, Wp) != (H, W):
            dx = dx[:, :, ph: ph + H, pw: pw + W]  # un-pad: a view
        return dx, None, None


def max_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False):
    """Max pooling as ``F.max_pool2d``: x (N, C, H, W) or unbatched (C, H, W); kernel_size,
    stride (default: kernel_size), padding and dilation are ints or pairs; padding (at most
    half the kernel) counts as -inf; ``ceil_mode`` keeps a last, partial window; with
    ``return_indices`` also returns each maximum's flat index row * W + column into its channel
    (int64). Returns (N, C, Ho, Wo) (or (C, Ho, Wo)), or (output, indices).

    Refuses (ValueError): x not 3-D or 4-D, not floating point, or with an empty C, H or W;
    kernel_size, stride or dilation < 1; negative padding or padding above half the kernel
    (PyTorch's limit); a window that fits nowhere (no output pixel: in floor mode, a dilated
    kernel larger than the padded input)."""
    if autocast_on(x):
        return autocast_call("max_pool2d", max_pool2d, x, kernel_size, stride, padding, dilation, ceil_mode,
                             return_indices)
    g = pool_args(x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d")
    xb = x if g.batched else x.unsqueeze(0)  # (N, C, H, W), a view
    out = apply(MaxPool2d, xb, g, bool(return_indices))
    if g.batched:
        return out
    return tuple(t.squeeze(0) for t in out) if return_indices else out.squeeze(0)
