"""What max_pool2d and avg_pool2d share: checking their arguments, the output size (floor or
ceil mode), padding to the extended size, and the strided views of one window offset.

Output size per dim (PyTorch's pooling_output_shape), effective kernel e = d*(k-1) + 1:

    out = floor((in + 2p - e) / s) + 1                       (ceil_mode=False)
    out = ceil((in + 2p - e) / s) + 1, minus 1 when the last window would start at or
          beyond in + p (past the input and the left padding)          (ceil_mode=True)

In ceil mode the last window may hang past the padded input; the input is padded further on
the bottom / right, by as much as that (``extended``), with the same value as the padding:
-inf for max pooling, 0 for average pooling (whose divisor then counts only what PyTorch counts).

Dimension letters: N batch, C channels, H/W input height/width, kh/kw window size,
Ho/Wo output height/width, Hp/Wp height/width of the (extended) padded input.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from customnn.ops._checks import check_float, check_non_negative, check_positive, check_rank, pair, plain_ints
from customnn.ops.pad import pad2d_reference


class Geometry(NamedTuple):
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out_size: tuple[int, int]
    extended: tuple[int, int]  # (Hp, Wp): the padded input, grown so that every window fits
    batched: bool  # x was (N, C, H, W), not (C, H, W)


def _out_len(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    span = size + 2 * p - d * (k - 1) - 1  # room left for the window's start
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:  # the last window would start past input and left padding
        out -= 1
    return out


def pool_args(x, kernel_size, stride, padding, dilation, ceil_mode, name) -> Geometry:
    """Check a pooling layer's arguments (ValueError naming argument and shapes); return its Geometry.

    The geometry depends on integers only (the input's H and W and the arguments), so it is
    computed once per shape and arguments (``_geometry``, cached) when every argument is a
    plain int, a tuple of ints or None; other forms (lists, bools, which must be refused)
    take the same function uncached."""
    check_rank(x, "x", (3, 4), "(N, C, H, W) or unbatched (C, H, W)")
    check_float(x, "x")
    if min(x.shape[-3:]) < 1:
        raise ValueError(f"{name}: x must have C, H, W >= 1 (only the batch may be empty), got shape {tuple(x.shape)}")
    args = (x.shape, kernel_size, stride, padding, dilation, bool(ceil_mode), name)
    if plain_ints(kernel_size, stride, padding, dilation):
        return _geometry(*args)
    return _geometry.__wrapped__(*args)


@functools.lru_cache(maxsize=256)
def _geometry(shape, kernel_size, stride, padding, dilation, ceil_mode, name) -> Geometry:
    H, W = shape[-2:]
    kernel = pair(kernel_size, "kernel_size")
    # An empty stride means the default, as in PyTorch.
    stride = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else pair(stride, "stride")
    padding = pair(padding, "padding")
    dilation = (1, 1) if dilation == 1 else pair(dilation, "dilation")
    check_positive(kernel, "kernel_size")
    check_positive(stride, "stride")
    check_positive(dilation, "dilation")
    check_non_negative(padding, "padding")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"{name}: padding {padding} must be at most half of kernel_size {kernel}")
    Ho, Wo = _out_len(H, kh, sh, ph, dh, ceil_mode), _out_len(W, kw, sw, pw, dw, ceil_mode)
    if Ho < 1 or Wo < 1:  # floor mode: the dilated window is larger than the padded input
        dilated = f" (dilation {dilation})" if dilation != (1, 1) else ""
        raise ValueError(f"{name}: kernel_size {kernel}{dilated} is larger than the padded input "
                         f"{(H + 2 * ph, W + 2 * pw)}: x {tuple(shape)}, padding {padding}")
    extended = (max(H + 2 * ph, (Ho - 1) * sh + dh * (kh - 1) + 1), max(W + 2 * pw, (Wo - 1) * sw + dw * (kw - 1) + 1))
    return Geometry(kernel, stride, padding, dilation, (Ho, Wo), extended, len(shape) == 4)


def pad_to(x: torch.Tensor, padding, extended, value: float) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, Hp, Wp): x at (ph, pw), ``value`` around it (no autograd: used in forwards)."""
    N, C, H, W = x.shape
    (ph, pw), (Hp, Wp) = padding, extended
    if (Hp, Wp) == (H, W):
        return x
    xp = x.new_full((N, C, Hp, Wp), value)  # (N, C, Hp, Wp)
    xp[:, :, ph: ph + H, pw: pw + W] = x
    return xp


def offset_view(xp: torch.Tensor, i: int, j: int, stride, out_size) -> torch.Tensor:
    """Pixel (i, j) (already dilated) of every window, as a view: (N, C, Ho, Wo). Looping over
    the kh*kw kernel offsets and combining these views elementwise is much faster than
    reducing a window axis (on large inputs)."""
    (sh, sw), (Ho, Wo) = stride, out_size
    if torch.compiler.is_compiling():  # TorchDynamo does not trace storage_offset(): the same view by slicing
        return xp[:, :, i: i + sh * (Ho - 1) + 1: sh, j: j + sw * (Wo - 1) + 1: sw]
    sN, sC, sH, sW = xp.stride()  # one as_strided call costs a fraction of a 4-D slice
    return xp.as_strided((xp.shape[0], xp.shape[1], Ho, Wo), (sN, sC, sh * sH, sw * sW),
                         xp.storage_offset() + i * sH + j * sW)


def windows_view(xp: torch.Tensor, g: Geometry) -> torch.Tensor:
    """Every window of the padded input as a view, no copy: (N, C, Ho, Wo, kh, kw)."""
    (kh, kw), (sh, sw), (dh, dw), (Ho, Wo) = g.kernel, g.stride, g.dilation, g.out_size
    sN, sC, sH, sW = xp.stride()
    return xp.as_strided((xp.shape[0], xp.shape[1], Ho, Wo, kh, kw),
                         (sN, sC, sh * sH, sw * sW, dh * sH, dw * sW))  # from xp's own storage offset


def tiles(g: Geometry, in_size) -> bool:
    """Do the windows tile the input exactly (stride == kernel, no padding, no remainder, no dilation)?"""
    return (g.stride == g.kernel and g.padding == (0, 0) and g.dilation == (1, 1) and g.extended == tuple(in_size)
            and in_size[0] % g.kernel[0] == 0 and in_size[1] % g.kernel[1] == 0)


@functools.lru_cache(maxsize=64)
def window_base(Ho, Wo, Wp, stride, device) -> torch.Tensor:
    """Flat position, in the padded input, of each window's top-left pixel: (Ho*Wo,)."""
    rows = torch.arange(Ho, device=device) * (stride[0] * Wp)
    cols = torch.arange(Wo, device=device) * stride[1]
    return (rows.view(Ho, 1) + cols.view(1, Wo)).reshape(-1)


def window_spans(out: int, size: int, k: int, s: int, p: int) -> tuple[list[int], list[int]]:
    """For each window along one dim (no dilation): how many positions it has inside the padded
    input, and how many inside x itself (PyTorch's avg_pool2d counts)."""
    padded, inside = [], []
    for o in range(out):
        start = o * s - p
        end = min(start + k, size + p)
        padded.append(end - start)
        inside.append(min(end, size) - max(start, 0))
    return padded, inside


def windows_reference(x: torch.Tensor, g: Geometry, value: float) -> torch.Tensor:
    """Every window of x padded with ``value`` (to the extended size), one output pixel at a
    time, for the readable references: (N, C, Ho, Wo, kh*kw)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (Ho, Wo), (Hp, Wp) = (
        g.kernel, g.stride, g.padding, g.dilation, g.out_size, g.extended)
    N, C, H, W = x.shape
    xp = pad2d_reference(x, (pw, Wp - W - pw, ph, Hp - H - ph), value)  # (N, C, Hp, Wp)
    rows = []
    for i in range(Ho):
        row = []
        for j in range(Wo):
            window = xp[:, :, i * sh: i * sh + dh * (kh - 1) + 1: dh, j * sw: j * sw + dw * (kw - 1) + 1: dw]
            row.append(window.reshape(N, C, kh * kw))  # (N, C, kh*kw)
        rows.append(torch.stack(row, dim=2))  # (N, C, Wo, kh*kw)
    return torch.stack(rows, dim=2)  # (N, C, Ho, Wo, kh*kw)
