"""Padding and 2-D convolution, forward and hand-written backward.

    from customnn import ops
    y = ops.conv2d(x, w, b, stride=1, padding=2)   # same as F.conv2d (no groups)
    xp = ops.pad2d(x, (1, 1, 2, 2))                # same as F.pad on the last two dims

Convolution is done as im2col + one matrix product (the classic "unfold then GEMM",
Chellapilla et al. 2006, "High Performance Convolutional Neural Networks for Document
Processing"): the padded input is viewed, without copying, as every window it holds
(``as_strided``), those windows are laid out as columns, and one matrix product with the
weight gives every output pixel. The backward pass is the same matrices transposed, with
the batch moved inside the columns so that each is ONE matrix product over every output
pixel of every image:

    cols (K, N*L) re-formed from x (not kept from the forward: it is kh*kw times x's size)
    dw   = dout @ cols^T                     (sum over batch and output pixels)
    db   = dout summed over batch and pixels
    dcol = w^T @ dout, then folded back into the padded input by *adding* each window's
           values where they were read from (windows overlap, so one input pixel gets
           several gradients; one index_add_ over a precomputed index), then un-padded.

The columns are formed for a chunk of the batch at a time (at most ``MAX_COLUMN_BYTES``),
in forward and in backward, with dw summed over the chunks, so that a training step's peak
memory stays near PyTorch's instead of holding every image's columns at once.

The readable versions, ``pad2d_reference`` and ``conv2d_reference`` (a loop over output
pixels), sit above each fast version: plain tensor expressions whose gradients autograd
derives, the definitions the fast layers are tested against (tests/test_reference.py).

Dimension letters: N batch, C input channels, O output channels, H/W input height/width,
kh/kw kernel height/width, Ho/Wo output height/width, L = Ho*Wo output pixels,
K = C*kh*kw values in one window.
"""

from __future__ import annotations

import functools

import torch

from customnn.ops._checks import check_float, check_non_negative, check_positive, check_rank, pair


# ----------------------------------------------------------------------------- padding

def _pad_amounts(padding) -> tuple[int, int, int, int]:
    """An int or (left, right, top, bottom), as F.pad takes it for the last two dims."""
    if isinstance(padding, int) and not isinstance(padding, bool):
        return (padding,) * 4
    try:
        amounts = tuple(padding)
    except TypeError:
        amounts = ()
    if len(amounts) != 4 or any(isinstance(p, bool) or not isinstance(p, int) for p in amounts):
        raise ValueError(f"padding must be an int or (left, right, top, bottom) ints, got {padding!r}")
    return amounts


def _pad_slices(size: int, before: int, after: int, name: str, shape) -> tuple[slice, slice, int]:
    """For one dimension: the slice of the input that survives, where it lands in the output,
    and the output size. Negative amounts crop, as in F.pad."""
    out = size + before + after
    if out < 0:
        raise ValueError(f"padding {(before, after)} crops {name} of x (shape {tuple(shape)}) below zero")
    src = slice(max(-before, 0), size - max(-after, 0))
    dst = slice(max(before, 0), out - max(after, 0))
    return src, dst, out


def pad2d_reference(x: torch.Tensor, padding, value: float = 0.0) -> torch.Tensor:
    """pad2d by its definition: output pixel (i, j) is input pixel (i - top, j - left) where
    that exists, else ``value``. A negative amount shifts the other way, so it crops."""
    check_rank(x, "x", tuple(range(2, 9)), "(..., H, W)")
    left, right, top, bottom = _pad_amounts(padding)
    H, W = x.shape[-2:]
    rows = torch.arange(H + top + bottom, device=x.device) - top  # (Hp,) input row of each output row
    cols = torch.arange(W + left + right, device=x.device) - left  # (Wp,) input column of each output column
    inside = ((rows >= 0) & (rows < H)).view(-1, 1) & ((cols >= 0) & (cols < W)).view(1, -1)  # (Hp, Wp)
    picked = x.index_select(-2, rows.clamp(0, H - 1)).index_select(-1, cols.clamp(0, W - 1))  # (..., Hp, Wp)
    return torch.where(inside, picked, value)


class Pad2d(torch.autograd.Function):
    """Constant padding of the last two dims. Backward: the gradient sliced back."""

    @staticmethod
    def forward(ctx, x, left, right, top, bottom, value):
        *lead, H, W = x.shape
        hsrc, hdst, Hp = _pad_slices(H, top, bottom, "the height", x.shape)
        wsrc, wdst, Wp = _pad_slices(W, left, right, "the width", x.shape)
        out = x.new_full((*lead, Hp, Wp), value)  # (..., Hp, Wp)
        out[..., hdst, wdst] = x[..., hsrc, wsrc]
        # Only the slices are kept for backward: the gradient of the padding is dropped.
        ctx.slices = (hsrc, hdst, wsrc, wdst)
        ctx.in_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, dout):
        hsrc, hdst, wsrc, wdst = ctx.slices
        if hsrc.start == 0 and wsrc.start == 0 and hsrc.stop == ctx.in_shape[-2] and wsrc.stop == ctx.in_shape[-1]:
            dx = dout[..., hdst, wdst]  # nothing was cropped: a view of dout
        else:
            dx = dout.new_zeros(ctx.in_shape)
            dx[..., hsrc, wsrc] = dout[..., hdst, wdst]
        return dx, None, None, None, None, None


def pad2d(x: torch.Tensor, padding, value: float = 0.0) -> torch.Tensor:
    """Pad the last two dims of ``x`` with ``value``: ``padding`` is an int (all four sides) or
    ``(left, right, top, bottom)``, as ``F.pad(x, padding, value=value)``. Negative amounts crop."""
    check_rank(x, "x", tuple(range(2, 9)), "(..., H, W)")
    left, right, top, bottom = _pad_amounts(padding)
    if (left, right, top, bottom) == (0, 0, 0, 0):
        return x
    return Pad2d.apply(x, left, right, top, bottom, float(value))


# ----------------------------------------------------------------------------- convolution

def conv2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride=1, padding=0, dilation=1) -> torch.Tensor:
    """2-D convolution, one output pixel at a time: out[n, o, i, j] is the sum over c, a, b of
    x_padded[n, c, i*sh + a*dh, j*sw + b*dw] * weight[o, c, a, b], plus bias[o]."""
    (sh, sw), (ph, pw), (dh, dw) = conv_args(x, weight, bias, stride, padding, dilation)
    H, W = x.shape[-2:]
    O, _, kh, kw = weight.shape
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1  # where the dilated kernel fits, every sh rows
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = pad2d_reference(x, (pw, pw, ph, ph))  # (N, C, H + 2ph, W + 2pw)
    rows = []
    for i in range(Ho):
        row = []
        for j in range(Wo):
            top, left = i * sh, j * sw
            window = xp[:, :, top: top + dh * (kh - 1) + 1: dh, left: left + dw * (kw - 1) + 1: dw]  # (N, C, kh, kw)
            pixel = (window.unsqueeze(1) * weight.unsqueeze(0)).sum(dim=(2, 3, 4))  # (N, O)
            if bias is not None:
                pixel = pixel + bias
            row.append(pixel)
        rows.append(torch.stack(row, dim=-1))  # (N, O, Wo)
    return torch.stack(rows, dim=-2)  # (N, O, Ho, Wo)


def pad_constant(x: torch.Tensor, ph: int, pw: int, value: float = 0.0) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H + 2ph, W + 2pw), a new tensor (no autograd: used inside forwards)."""
    if (ph, pw) == (0, 0):
        return x
    N, C, H, W = x.shape
    xp = x.new_full((N, C, H + 2 * ph, W + 2 * pw), value)  # (N, C, Hp, Wp)
    xp[:, :, ph: ph + H, pw: pw + W] = x
    return xp


def _windows(xp: torch.Tensor, kh: int, kw: int, Ho: int, Wo: int, stride, dilation) -> torch.Tensor:
    """Every kernel window of the padded input as a view, no copy: (N, C, kh, kw, Ho, Wo)."""
    sN, sC, sH, sW = xp.stride()
    N, C = xp.shape[:2]
    return xp.as_strided(
        (N, C, kh, kw, Ho, Wo),
        (sN, sC, dilation[0] * sH, dilation[1] * sW, stride[0] * sH, stride[1] * sW),
    )


def _columns(x: torch.Tensor, kh: int, kw: int, Ho: int, Wo: int, stride, padding, dilation) -> torch.Tensor:
    """im2col with the kernel offsets first: (K, N*L), rows (C, kh, kw), columns (N, Ho, Wo).

    With the batch inside the columns, the weight gradient is ONE matrix product whose inner
    dimension runs over every output pixel of every image (N*L), instead of N small products
    that leave an (N, O, K) tensor to be summed."""
    N, C = x.shape[:2]
    xp = pad_constant(x, *padding)  # (N, C, Hp, Wp)
    windows = _windows(xp, kh, kw, Ho, Wo, stride, dilation)  # (N, C, kh, kw, Ho, Wo), a view
    return windows.permute(1, 2, 3, 0, 4, 5).reshape(C * kh * kw, N * Ho * Wo)  # (K, N*L), the copy


@functools.lru_cache(maxsize=64)
def _fold_index(kh, kw, N, Ho, Wo, Hp, Wp, stride, dilation, device) -> torch.Tensor:
    """For each column entry (kernel offset, image, output pixel) of ``_columns``, the flat
    position in one channel of the padded input (N, Hp, Wp) that it was read from:
    (kh*kw*N*Ho*Wo,). Cached: it depends only on the geometry."""
    (sh, sw), (dh, dw_) = stride, dilation
    ar = functools.partial(torch.arange, device=device)
    rows = (ar(kh) * dh).view(kh, 1, 1, 1, 1) + (ar(Ho) * sh).view(1, 1, 1, Ho, 1)  # (kh, 1, 1, Ho, 1)
    cols = (ar(kw) * dw_).view(1, kw, 1, 1, 1) + (ar(Wo) * sw).view(1, 1, 1, 1, Wo)  # (1, kw, 1, 1, Wo)
    image = (ar(N) * (Hp * Wp)).view(1, 1, N, 1, 1)  # (1, 1, N, 1, 1)
    return (image + rows * Wp + cols).reshape(-1)  # (kh*kw*N*Ho*Wo,)


def _fold(dcols: torch.Tensor, x_shape, kh, kw, Ho, Wo, stride, padding, dilation) -> torch.Tensor:
    """The adjoint of ``_columns``: add every column entry's gradient back where it was read
    from in the padded input, then un-pad: (K, N*L) -> (N, C, H, W). Windows overlap, so one
    input pixel gets several gradients: this *adds*, with one index_add_ over a cached index."""
    N, C, H, W = x_shape
    (ph, pw) = padding
    Hp, Wp = H + 2 * ph, W + 2 * pw
    index = _fold_index(kh, kw, N, Ho, Wo, Hp, Wp, tuple(stride), tuple(dilation), dcols.device)
    dxp = dcols.new_zeros((C, N * Hp * Wp))  # (C, N*Hp*Wp): the batch inside, like dcols
    dxp.index_add_(1, index, dcols.view(C, kh * kw * N * Ho * Wo))
    return dxp.view(C, N, Hp, Wp).permute(1, 0, 2, 3)[:, :, ph: ph + H, pw: pw + W]  # (N, C, H, W): a view


# The im2col columns are K = C*kh*kw times larger than the output pixels they serve (25x
# the input for the seed's first layer). To keep a training step's peak memory near
# PyTorch's, they are formed for a chunk of the batch at a time, at most this many bytes.
MAX_COLUMN_BYTES = 2 * 2**20


def _batch_chunks(N: int, column_bytes_per_image: int) -> list[slice]:
    """Slices of the batch whose im2col columns fit in MAX_COLUMN_BYTES (at least one image)."""
    step = max(1, min(N, MAX_COLUMN_BYTES // max(column_bytes_per_image, 1)))
    return [slice(i, min(i + step, N)) for i in range(0, N, step)]


class Conv2d(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        N, C, H, W = x.shape
        O, _, kh, kw = weight.shape
        Ho, Wo = _out_size(x.shape, weight.shape, stride, padding, dilation)
        K, L = C * kh * kw, Ho * Wo
        xp = pad_constant(x, *padding)  # (N, C, Hp, Wp)
        wm = weight.reshape(O, K)  # (O, K), a view
        out = x.new_empty((N, O, L))  # (N, O, L)
        for s in _batch_chunks(N, K * L * x.element_size()):
            n = s.stop - s.start
            cols = _windows(xp[s], kh, kw, Ho, Wo, stride, dilation).reshape(n, K, L)  # (n, K, L), the im2col copy
            if bias is None:
                torch.bmm(wm.expand(n, O, K), cols, out=out[s])  # (n, O, L)
            else:
                torch.baddbmm(bias.view(1, O, 1).expand(n, O, L), wm.expand(n, O, K), cols, out=out[s])
            del cols
        # x and the weight are kept for backward, not the columns: those are kh*kw times the
        # size of x (9x for a 3x3 kernel), and re-forming them costs one copy, cheap next to
        # the matrix products that use them.
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation, Ho, Wo)
        ctx.has_bias = bias is not None
        return out.view(N, O, Ho, Wo)

    @staticmethod
    def backward(ctx, dout):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, Ho, Wo = ctx.geometry
        N, C, H, W = x.shape
        O, _, kh, kw = weight.shape
        K, L = C * kh * kw, Ho * Wo
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        dx = dw = db = None
        if ctx.has_bias and need_db:
            db = dout.sum((0, 2, 3))  # (O,)
        if need_dw:
            dw = weight.new_zeros((O, K))  # (O, K), summed over the chunks of the batch
        if need_dx:
            dx = x.new_empty(x.shape)  # (N, C, H, W)
        if need_dx or need_dw:
            for s in _batch_chunks(N, K * L * x.element_size()):
                n = s.stop - s.start
                # The output gradient with the batch inside the columns, like _columns' layout:
                # both products below are then single matrix products over all n*L pixels.
                dout_m = dout[s].transpose(0, 1).reshape(O, n * L)  # (O, n*L), a small copy
                if need_dw:
                    cols = _columns(x[s], kh, kw, Ho, Wo, stride, padding, dilation)  # (K, n*L), recomputed
                    dw.addmm_(dout_m, cols.T)  # (O, K)
                    del cols  # freed before dcols (the same size) is made: a lower peak
                if need_dx:
                    dcols = weight.reshape(O, K).T @ dout_m  # (K, n*L)
                    dx[s] = _fold(dcols, x[s].shape, kh, kw, Ho, Wo, stride, padding, dilation)  # (n, C, H, W)
            if need_dw:
                dw = dw.view(weight.shape)  # (O, C, kh, kw)
        return dx, dw, db, None, None, None


def _out_size(x_shape, w_shape, stride, padding, dilation) -> tuple[int, int]:
    (H, W), (kh, kw) = x_shape[-2:], w_shape[-2:]
    (sh, sw), (ph, pw), (dh, dw_) = stride, padding, dilation
    return (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw_ * (kw - 1) - 1) // sw + 1


def conv_args(x, weight, bias, stride, padding, dilation):
    """Check conv2d's arguments (ValueError naming argument and shapes); return the pairs."""
    check_rank(x, "x", 4, "(N, C, H, W)")
    check_rank(weight, "weight", 4, "(out_channels, in_channels, kh, kw)")
    check_float(x, "x")
    check_float(weight, "weight")
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    check_positive(stride, "stride")
    check_positive(dilation, "dilation")
    check_non_negative(padding, "padding")
    N, C, H, W = x.shape
    O, Cw, kh, kw = weight.shape
    if C != Cw:
        raise ValueError(f"x has {C} channels but weight expects {Cw}: x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    if x.dtype != weight.dtype:
        raise ValueError(f"x and weight must have the same dtype, got {x.dtype} and {weight.dtype}")
    if min(weight.shape) < 1 or min(x.shape) < 1:
        raise ValueError(f"x and weight must not be empty: x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    if bias is not None:
        check_rank(bias, "bias", 1, "(out_channels,)")
        if bias.shape[0] != O:
            raise ValueError(f"bias must have shape ({O},) for weight {tuple(weight.shape)}, got {tuple(bias.shape)}")
        if bias.dtype != x.dtype:
            raise ValueError(f"bias must have x's dtype {x.dtype}, got {bias.dtype}")
    for name, size, k, p, d in (("height", H, kh, padding[0], dilation[0]), ("width", W, kw, padding[1], dilation[1])):
        if size + 2 * p < d * (k - 1) + 1:
            raise ValueError(f"kernel {name} {k} (dilation {d}) is larger than the padded input {name} "
                             f"{size + 2 * p}: x {tuple(x.shape)}, weight {tuple(weight.shape)}, padding {padding}")
    return stride, padding, dilation


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride=1, padding=0, dilation=1) -> torch.Tensor:
    """2-D convolution (cross-correlation), as ``F.conv2d`` without groups.

    x (N, C, H, W), weight (O, C, kh, kw), bias (O,) or None; stride, padding and dilation
    are ints or (height, width) pairs. Returns (N, O, Ho, Wo)."""
    stride, padding, dilation = conv_args(x, weight, bias, stride, padding, dilation)
    return Conv2d.apply(x, weight, bias, stride, padding, dilation)
