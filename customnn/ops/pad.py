"""Constant padding, forward and hand-written backward.

    from customnn import ops
    xp = ops.pad2d(x, (1, 1, 2, 2))              # F.pad(x, (1, 1, 2, 2)): the last two dims
    xp = ops.pad2d(x, (1, 2))                    # F.pad(x, (1, 2)): the last dim only
    xp = ops.pad2d(x, (1, 1, 0, 0, 2, 2), 0.5)   # F.pad(x, (...), value=0.5): the last three dims

``padding`` is read as F.pad reads it: pairs (before, after) from the last dimension
backwards, so ``(left, right, top, bottom)`` for the last two; an int pads the last two dims
on all four sides. Output dim d has size ``size_d + before_d + after_d``; a negative amount
crops. Only ``mode="constant"`` is implemented: reflect, replicate and circular padding raise
ValueError.

    forward:  out = value everywhere, then out[dst] = x[src]   (src, dst: one slice per padded dim)
    backward: dx = dout[dst] placed at src (zeros where x was cropped away)

``pad2d_reference`` defines the same thing pixel by pixel (an index per output position,
``value`` where that index falls outside x) for autograd to differentiate.
"""

from __future__ import annotations

import functools

import torch

from customnn.ops._apply import apply
from customnn.ops._autocast import autocast_call, autocast_on
from customnn.ops._checks import check_tensor

_MODES = ("constant",)


def _pad_amounts(x: torch.Tensor, padding) -> tuple[int, ...]:
    """An int (the last two dims, all four sides) or F.pad's (before, after) pairs from the last
    dim backwards, checked against x's rank."""
    if isinstance(padding, int) and not isinstance(padding, bool):
        amounts = (padding,) * 4
    else:
        try:
            amounts = tuple(padding)
        except TypeError:
            amounts = ()
        if (not amounts or len(amounts) % 2 or any(isinstance(p, bool) or not isinstance(p, int) for p in amounts)):
            raise ValueError(f"padding must be an int or an even number of ints, (before, after) per dim from "
                             f"the last one, e.g. (left, right, top, bottom); got {padding!r}")
    if len(amounts) // 2 > max(x.dim(), 0) or x.dim() < 1:
        raise ValueError(f"padding {padding!r} pads {max(len(amounts) // 2, 2)} dims but x has shape {tuple(x.shape)}")
    return amounts


def _pad_slices(size: int, before: int, after: int, dim: int, shape) -> tuple[slice, slice, int]:
    """For one dimension: the slice of the input that survives, where it lands in the output,
    and the output size. Negative amounts crop, as in F.pad."""
    out = size + before + after
    if out < 0:
        raise ValueError(f"padding {(before, after)} crops dim {dim} of x (shape {tuple(shape)}) below zero")
    src = slice(max(-before, 0), size - max(-after, 0))
    dst = slice(max(before, 0), out - max(after, 0))
    return src, dst, out


def _check(x, padding, mode):
    check_tensor(x, "x")
    if mode not in _MODES:
        raise ValueError(f"pad2d: only mode='constant' is implemented, got mode={mode!r}")
    if isinstance(padding, int) and not isinstance(padding, bool) and x.dim() < 2:
        raise ValueError(f"x must be at least 2-D (..., H, W) for an int padding, got shape {tuple(x.shape)}")
    return _pad_amounts(x, padding)


def pad2d_reference(x: torch.Tensor, padding, value: float = 0.0, mode: str = "constant") -> torch.Tensor:
    """pad2d by its definition: along each padded dim, output position i reads input position
    i - before where that exists, else ``value``. A negative amount shifts the other way, so it crops."""
    amounts = _check(x, padding, mode)
    out = x
    inside = torch.ones((), dtype=torch.bool, device=x.device)
    for k in range(len(amounts) // 2):
        dim = x.dim() - 1 - k
        before, after = amounts[2 * k], amounts[2 * k + 1]
        size = x.shape[dim]
        _pad_slices(size, before, after, dim, x.shape)
        pos = torch.arange(size + before + after, device=x.device) - before  # input position of each output one
        ok = (pos >= 0) & (pos < size)
        shape = [1] * x.dim()
        shape[dim] = -1
        inside = inside & ok.view(shape)
        out = out.index_select(dim, pos.clamp(0, max(size - 1, 0))) if size > 0 else out.new_zeros(
            [*out.shape[:dim], pos.numel(), *out.shape[dim + 1:]])
    return torch.where(inside, out, value)


@functools.lru_cache(maxsize=256)
def _plan(in_shape, amounts):
    """For x of ``in_shape``: the slices of x that survive and where they land in the output (one
    per dim), the output shape, and whether anything is cropped; computed once per shape."""
    src, dst, shape = [slice(None)] * len(in_shape), [slice(None)] * len(in_shape), list(in_shape)
    for k in range(len(amounts) // 2):
        dim = len(in_shape) - 1 - k
        src[dim], dst[dim], shape[dim] = _pad_slices(in_shape[dim], amounts[2 * k], amounts[2 * k + 1], dim, in_shape)
    return tuple(src), tuple(dst), tuple(shape), min(amounts) < 0


class Pad2d(torch.autograd.Function):
    """Constant padding of the last len(padding) / 2 dims. Backward: the gradient sliced back."""

    @staticmethod
    def forward(ctx, x, amounts, value):
        src, dst, shape, cropped = _plan(x.shape, amounts)
        out = x.new_full(shape, value)  # (..., padded sizes)
        out[dst] = x[src] if cropped else x
        # Only the slices are kept for backward: the gradient of the padding is dropped.
        ctx.slices, ctx.cropped = (src, dst), cropped
        ctx.in_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, dout):
        src, dst = ctx.slices
        if not ctx.cropped:
            dx = dout[dst]  # nothing was cropped: a view of dout
        else:
            dx = dout.new_zeros(ctx.in_shape)
            dx[src] = dout[dst]
        return dx, None, None


def pad2d(x: torch.Tensor, padding, value: float = 0.0, mode: str = "constant") -> torch.Tensor:
    """Pad ``x`` with ``value``, as ``F.pad(x, padding, value=value)``.

    ``padding``: an int (the last two dims, all four sides; x at least 2-D), or an even number
    of ints, (before, after) per dim from the last one backwards: ``(left, right)``,
    ``(left, right, top, bottom)``, ``(left, right, top, bottom, front, back)``, ... up to every
    dim of x. Negative amounts crop. Refuses (ValueError): ``mode`` other than "constant"
    (reflect, replicate and circular are not implemented), an odd-length or non-int padding,
    more pairs than x has dims, a crop below size zero."""
    if autocast_on(x):
        return autocast_call("pad2d", pad2d, x, padding, value, mode)
    amounts = _check(x, padding, mode)
    if not any(amounts):
        return x
    return apply(Pad2d, x, amounts, float(value))
