"""2-D average pooling, forward and hand-written backward.

    from customnn import ops
    y = ops.avg_pool2d(x, 3, 2, 1)                                  # same as F.avg_pool2d
    y = ops.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)

out[n, c, i, j] = (sum of x over window (i, j), padding counting as 0) / divisor(i, j), with
PyTorch's divisor: ``divisor_override`` when given; else, with ``count_include_pad`` (the
default), the window's positions inside the padded input (kh*kw except for the last, partial
windows of ``ceil_mode``); else only its positions inside x. The divisor is a product of a
row count and a column count (``_pool_geometry.window_spans``), so it is an (Ho, Wo) table,
or one number kh*kw in the common case.

The forward loops over the kh*kw positions inside a window (never over pixels): position
(a, b) of every window at once is a strided view of the zero-padded input, added into a
running sum. The backward spreads each output gradient over its window, dout / divisor to
each position, adding (windows may overlap); when the windows tile the input exactly (stride
equal to the kernel, no padding) that is just each share repeated kh x kw times.

The readable version, ``avg_pool2d_reference``, sits above the fast one: a loop over output
pixels taking each window's sum and dividing by its count, whose gradient autograd derives.

Dimension letters: N batch, C channels, H/W input height/width, kh/kw window size,
Ho/Wo output height/width, Hp/Wp padded input height/width.
"""

from __future__ import annotations

import functools

import torch

from customnn.ops._apply import apply
from customnn.ops._autocast import autocast_call, autocast_on
from customnn.ops._pool_geometry import (Geometry, offset_view, pad_to, pool_args, tiles, window_spans, windows_reference,
                                         windows_view)

# Up to this many window values (N*C*Ho*Wo*kh*kw) the window sums are one reduction over the
# strided windows; above it, one add per kernel position is faster.
_SMALL = 16384


@functools.lru_cache(maxsize=64)
def _counts(g: Geometry, in_size, count_include_pad: bool):
    """The divisor's row and column counts, or None when every window divides by kh*kw."""
    spans = [window_spans(o, n, k, s, p) for o, n, k, s, p in zip(g.out_size, in_size, g.kernel, g.stride, g.padding)]
    counts = [padded if count_include_pad else inside for padded, inside in spans]  # rows, columns
    return None if all(c == k for cs, k in zip(counts, g.kernel) for c in cs) else counts


def _divisor(g: Geometry, in_size, count_include_pad: bool, divisor_override, like: torch.Tensor):
    """Each window's divisor: a number, or an (Ho, Wo) tensor when the windows differ."""
    if divisor_override is not None:
        return divisor_override
    if g.padding == (0, 0) and in_size == g.extended:  # every window lies inside x, whole
        return g.kernel[0] * g.kernel[1]
    counts = _counts(g, tuple(in_size), count_include_pad)
    if counts is None:
        return g.kernel[0] * g.kernel[1]
    rows, cols = (torch.tensor(c, dtype=like.dtype, device=like.device) for c in counts)
    return rows.view(-1, 1) * cols.view(1, -1)  # (Ho, Wo)


def _check_avg(count_include_pad, divisor_override):
    if divisor_override is not None and (isinstance(divisor_override, bool) or not isinstance(divisor_override, int)
                                         or divisor_override == 0):
        raise ValueError(f"avg_pool2d: divisor_override must be a non-zero int or None, got {divisor_override!r}")


def avg_pool2d_reference(x: torch.Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                         count_include_pad: bool = True, divisor_override=None) -> torch.Tensor:
    """Average pooling, one output pixel at a time: the sum of each window (padding counted as
    zeros) divided by divisor_override, or by the number of its positions in the padded input
    (count_include_pad), or in x."""
    _check_avg(count_include_pad, divisor_override)
    g = pool_args(x, kernel_size, stride, padding, 1, ceil_mode, "avg_pool2d_reference")
    xb = x if g.batched else x.unsqueeze(0)
    total = windows_reference(xb, g, 0.0).sum(dim=-1)  # (N, C, Ho, Wo)
    (kh, kw), (sh, sw), (ph, pw), (Ho, Wo) = g.kernel, g.stride, g.padding, g.out_size
    H, W = xb.shape[-2:]
    divisor = torch.empty((Ho, Wo), dtype=x.dtype)
    for i in range(Ho):
        for j in range(Wo):
            top, left = i * sh - ph, j * sw - pw  # the window's corner in x's coordinates
            bottom, right = min(top + kh, H + ph), min(left + kw, W + pw)  # clipped to the padded input
            if divisor_override is not None:
                divisor[i, j] = divisor_override
            elif count_include_pad:
                divisor[i, j] = (bottom - top) * (right - left)
            else:
                divisor[i, j] = (min(bottom, H) - max(top, 0)) * (min(right, W) - max(left, 0))
    out = total / divisor
    return out if g.batched else out.squeeze(0)


class AvgPool2d(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, g: Geometry, divisor):
        (kh, kw) = g.kernel
        # Padding counts as zeros in the sum; the divisor says what is counted.
        xp = pad_to(x, g.padding, g.extended, 0.0)  # (N, C, Hp, Wp)
        if x.shape[0] * x.shape[1] * g.out_size[0] * g.out_size[1] * kh * kw <= _SMALL:
            out = windows_view(xp, g).sum((-2, -1))  # (N, C, Ho, Wo): one reduction of the window views
        else:  # one add per kernel position, each over a strided view: faster on large inputs
            out = offset_view(xp, 0, 0, g.stride, g.out_size).clone()  # (N, C, Ho, Wo)
            for p in range(1, kh * kw):
                out += offset_view(xp, p // kw, p % kw, g.stride, g.out_size)
        out /= divisor  # a number, or (Ho, Wo) broadcast
        # Nothing but the geometry and the divisor is needed for backward.
        ctx.geometry = (x.shape, xp.shape, g, divisor)
        return out

    @staticmethod
    def backward(ctx, dout):
        x_shape, xp_shape, g, divisor = ctx.geometry
        N, C, H, W = x_shape
        (kh, kw), (ph, pw) = g.kernel, g.padding
        share = dout / divisor  # (N, C, Ho, Wo): what each position of a window receives
        if not isinstance(divisor, torch.Tensor) and tiles(g, (H, W)):
            Ho, Wo = g.out_size  # each share spread over its kh x kw tile: one copy of an expanded view
            dx = share.view(N, C, Ho, 1, Wo, 1).expand(N, C, Ho, kh, Wo, kw).reshape(N, C, H, W)
            return dx, None, None
        dxp = dout.new_zeros(xp_shape)  # (N, C, Hp, Wp)
        for i in range(kh):  # windows may overlap: add one kernel offset at a time
            for j in range(kw):
                offset_view(dxp, i, j, g.stride, g.out_size).add_(share)
        dx = dxp[:, :, ph: ph + H, pw: pw + W]  # un-pad: a view
        return dx, None, None


def avg_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override=None) -> torch.Tensor:
    """Average pooling as ``F.avg_pool2d``: x (N, C, H, W) or unbatched (C, H, W); stride
    defaults to kernel_size; ``ceil_mode`` keeps a last, partial window; the divisor is
    ``divisor_override``, else the window's positions in the padded input
    (``count_include_pad=True``) or in x. Returns (N, C, Ho, Wo) (or (C, Ho, Wo)).

    Refuses (ValueError): x not 3-D or 4-D, not floating point, or with an empty C, H or W;
    kernel_size or stride < 1; negative padding or padding above half the kernel (PyTorch's
    limit); a window that fits nowhere (no output pixel); a divisor_override of 0 (or not an int)."""
    if autocast_on(x):
        return autocast_call("avg_pool2d", avg_pool2d, x, kernel_size, stride, padding, ceil_mode,
                             count_include_pad, divisor_override)
    _check_avg(count_include_pad, divisor_override)
    g = pool_args(x, kernel_size, stride, padding, 1, ceil_mode, "avg_pool2d")
    xb = x if g.batched else x.unsqueeze(0)  # (N, C, H, W), a view
    divisor = _divisor(g, xb.shape[-2:], bool(count_include_pad), divisor_override, xb)
    out = apply(AvgPool2d, xb, g, divisor)
    return out if g.batched else out.squeeze(0)
