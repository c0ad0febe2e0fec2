"""2-D convolution, forward and hand-written backward (constant padding: ``pad.py``).

    from customnn import ops
    y = ops.conv2d(x, w, b, stride=1, padding=2)                  # same as F.conv2d
    y = ops.conv2d(x, w_dw, None, padding="same", groups=C)       # depthwise, "same" size

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

Groups (``groups=g``): the C input channels and O output channels are cut into g blocks;
output block i sees input block i only, with weight (O, C/g, kh, kw). The columns' rows are
(C, kh, kw) in that order, so block i's rows are one contiguous slice of K/g rows: the one
matrix product becomes a batched one over the groups, (g, O/g, K/g) @ (g, K/g, L), and so do
both backward products. ``groups=C`` with O = m*C is the depthwise convolution.

``padding`` is an int, a pair, ``"valid"`` (no padding) or ``"same"`` (output size = input
size, stride 1 only, as F.conv2d): total padding d*(k-1) per dim, (d*(k-1))//2 before and the
rest after, so an even kernel gets its extra pixel at the bottom / right (F.conv2d's rule);
that extra pixel is one ``pad2d`` before a symmetric convolution.

The columns are formed for a chunk of the batch at a time (at most ``MAX_COLUMN_BYTES``),
in forward and in backward, with dw summed over the chunks, so that a training step's peak
memory stays near PyTorch's instead of holding every image's columns at once.

The readable version, ``conv2d_reference`` (a loop over output pixels and groups), sits above
the fast one: plain tensor expressions whose gradients autograd derives, the definition the
fast layer is tested against (tests/test_reference.py).

Dimension letters: N batch, C input channels, O output channels, g groups, H/W input
height/width, kh/kw kernel height/width, Ho/Wo output height/width, L = Ho*Wo output pixels,
K = C*kh*kw values in one window (Kg = K/g, Og = O/g per group).
"""

from __future__ import annotations

import functools

import torch

from customnn.ops._apply import apply
from customnn.ops._autocast import autocast_call, autocast_on
from customnn.ops._checks import check_float, check_non_negative, check_positive, check_rank, pair
from customnn.ops.pad import pad2d, pad2d_reference  # ops imports pad2d from here too


# ----------------------------------------------------------------------------- convolution

def conv2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """2-D convolution, one output pixel at a time: out[n, o, i, j] is the sum over c in o's
    group, a, b of x_padded[n, c, i*sh + a*dh, j*sw + b*dw] * weight[o, c, a, b], plus bias[o]."""
    (sh, sw), (top, bottom, left, right), (dh, dw), batched = conv_args(x, weight, bias, stride, padding,
                                                                        dilation, groups)
    x = x if batched else x.unsqueeze(0)
    O, Cg, kh, kw = weight.shape
    Og = O // groups
    xp = pad2d_reference(x, (left, right, top, bottom))  # (N, C, Hp, Wp)
    Ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1  # where the dilated kernel fits, every sh rows
    Wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for i in range(Ho):
        row = []
        for j in range(Wo):
            top_, left_ = i * sh, j * sw
            window = xp[:, :, top_: top_ + dh * (kh - 1) + 1: dh, left_: left_ + dw * (kw - 1) + 1: dw]  # (N, C, kh, kw)
            pixel = torch.cat([  # group gi: output channels gi*Og.., input channels gi*Cg..
                (window[:, gi * Cg:(gi + 1) * Cg].unsqueeze(1) * weight[gi * Og:(gi + 1) * Og].unsqueeze(0)).sum(dim=(2, 3, 4))
                for gi in range(groups)], dim=1)  # (N, O)
            if bias is not None:
                pixel = pixel + bias
            row.append(pixel)
        rows.append(torch.stack(row, dim=-1))  # (N, O, Wo)
    out = torch.stack(rows, dim=-2)  # (N, O, Ho, Wo)
    return out if batched else out.squeeze(0)


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
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        N, C, H, W = x.shape
        O, Cg, kh, kw = weight.shape
        Ho, Wo = _out_size(x.shape, weight.shape, stride, padding, dilation)
        K, L = C * kh * kw, Ho * Wo
        g, Og, Kg = groups, O // groups, K // groups
        xp = pad_constant(x, *padding)  # (N, C, Hp, Wp)
        wm = weight.reshape(O, K) if g == 1 else weight.reshape(g, Og, Kg)  # (O, K) or (g, Og, Kg), a view
        out = x.new_empty((N, O, L))  # (N, O, L)
        for s in _batch_chunks(N, K * L * x.element_size()):
            n = s.stop - s.start
            cols = _windows(xp[s], kh, kw, Ho, Wo, stride, dilation).reshape(n, K, L)  # (n, K, L), the im2col copy
            if g == 1:
                if bias is None:
                    torch.bmm(wm.expand(n, O, K), cols, out=out[s])  # (n, O, L)
                else:
                    torch.baddbmm(bias.view(1, O, 1).expand(n, O, L), wm.expand(n, O, K), cols, out=out[s])
            else:  # one product per image and group: (n*g, Og, Kg) @ (n*g, Kg, L)
                prod = torch.bmm(wm.expand(n, g, Og, Kg).reshape(n * g, Og, Kg), cols.view(n * g, Kg, L))
                out[s] = prod.view(n, O, L) if bias is None else prod.view(n, O, L) + bias.view(1, O, 1)
            del cols
        # x and the weight are kept for backward, not the columns: those are kh*kw times the
        # size of x (9x for a 3x3 kernel), and re-forming them costs one copy, cheap next to
        # the matrix products that use them.
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation, Ho, Wo, groups)
        ctx.has_bias = bias is not None
        return out.view(N, O, Ho, Wo)

    @staticmethod
    def backward(ctx, dout):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, Ho, Wo, g = ctx.geometry
        N, C, H, W = x.shape
        O, _, kh, kw = weight.shape
        K, L = C * kh * kw, Ho * Wo
        Og, Kg = O // g, K // g
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        dx = dw = db = None
        if ctx.has_bias and need_db:
            db = dout.sum((0, 2, 3))  # (O,)
        chunks = _batch_chunks(N, K * L * x.element_size())
        if need_dw:  # (g, Og, Kg), summed over the chunks of the batch: in float32 when the weight is
            # bfloat16 or float16 (autocast's copy), as one product would accumulate, then rounded once
            wide = len(chunks) > 1 and weight.dtype in (torch.bfloat16, torch.float16)
            dw = weight.new_zeros((g, Og, Kg), dtype=torch.float32 if wide else weight.dtype)
        if need_dx:
            dx = x.new_empty(x.shape)  # (N, C, H, W)
            wt = weight.reshape(g, Og, Kg).transpose(1, 2)  # (g, Kg, Og)
        if need_dx or need_dw:
            for s in chunks:
                n = s.stop - s.start
                # The output gradient with the batch inside the columns, like _columns' layout:
                # each product below is then one (batched over groups) matrix product over all n*L pixels.
                dout_m = dout[s].transpose(0, 1).reshape(g, Og, n * L)  # (g, Og, n*L), a small copy
                if need_dw:
                    cols = _columns(x[s], kh, kw, Ho, Wo, stride, padding, dilation)  # (K, n*L), recomputed
                    if wide:  # the chunk's product in the low precision, the sum in float32
                        dw += torch.bmm(dout_m, cols.view(g, Kg, n * L).transpose(1, 2))
                    elif g == 1:
                        dw[0].addmm_(dout_m[0], cols.T)  # (O, K)
                    else:
                        dw.baddbmm_(dout_m, cols.view(g, Kg, n * L).transpose(1, 2))  # (g, Og, Kg)
                    del cols  # freed before dcols (the same size) is made: a lower peak
                if need_dx:
                    dcols = wt[0] @ dout_m[0] if g == 1 else torch.bmm(wt, dout_m).view(K, n * L)  # (K, n*L)
                    dx[s] = _fold(dcols, x[s].shape, kh, kw, Ho, Wo, stride, padding, dilation)  # (n, C, H, W)
            if need_dw:
                dw = dw.view(weight.shape).to(weight.dtype)  # (O, C/g, kh, kw)
        return dx, dw, db, None, None, None, None


def _out_size(x_shape, w_shape, stride, padding, dilation) -> tuple[int, int]:
    (H, W), (kh, kw) = x_shape[-2:], w_shape[-2:]
    (sh, sw), (ph, pw), (dh, dw_) = stride, padding, dilation
    return (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw_ * (kw - 1) - 1) // sw + 1


def _padding(padding, stride, dilation, kernel) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) from an int, a pair, "valid" or "same" (F.conv2d's rule:
    d*(k-1) in all per dim, the smaller half before, so an even kernel's extra pixel goes after)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
        if stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1 (as F.conv2d), got stride {stride}")
        (th, tw) = (dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1))  # total padding per dim
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    ph, pw = pair(padding, "padding")
    check_non_negative((ph, pw), "padding")
    return (ph, ph, pw, pw)


def conv_args(x, weight, bias, stride, padding, dilation, groups=1):
    """Check conv2d's arguments (ValueError naming argument and shapes); return stride,
    (top, bottom, left, right) padding, dilation and whether x is batched."""
    check_rank(x, "x", (3, 4), "(N, C, H, W) or unbatched (C, H, W)")
    check_rank(weight, "weight", 4, "(out_channels, in_channels / groups, kh, kw)")
    check_float(x, "x")
    check_float(weight, "weight")
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    check_positive(stride, "stride")
    check_positive(dilation, "dilation")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be an int >= 1, got {groups!r}")
    pads = _padding(padding, stride, dilation, weight.shape[-2:])
    C, H, W = x.shape[-3:]
    O, Cw, kh, kw = weight.shape
    if O % groups:
        raise ValueError(f"weight's out_channels {O} must be divisible by groups={groups}: weight {tuple(weight.shape)}")
    if C != Cw * groups:
        raise ValueError(f"x has {C} channels but weight expects {Cw * groups} ({Cw} per group, groups={groups}): "
                         f"x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    if x.dtype != weight.dtype:
        raise ValueError(f"x and weight must have the same dtype, got {x.dtype} and {weight.dtype}")
    if min(weight.shape) < 1 or min(x.shape[-3:]) < 1:
        raise ValueError(f"x and weight must not be empty: x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    if bias is not None:
        check_rank(bias, "bias", 1, "(out_channels,)")
        if bias.shape[0] != O:
            raise ValueError(f"bias must have shape ({O},) for weight {tuple(weight.shape)}, got {tuple(bias.shape)}")
        if bias.dtype != x.dtype:
            raise ValueError(f"bias must have x's dtype {x.dtype}, got {bias.dtype}")
    for name, size, k, p, d in (("height", H, kh, pads[0] + pads[1], dilation[0]),
                                ("width", W, kw, pads[2] + pads[3], dilation[1])):
        if size + p < d * (k - 1) + 1:
            raise ValueError(f"kernel {name} {k} (dilation {d}) is larger than the padded input {name} "
                             f"{size + p}: x {tuple(x.shape)}, weight {tuple(weight.shape)}, padding {padding}")
    return stride, pads, dilation, x.dim() == 4


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """2-D convolution (cross-correlation), as ``F.conv2d``.

    x (N, C, H, W) or unbatched (C, H, W); weight (O, C/groups, kh, kw); bias (O,) or None;
    stride and dilation are ints or (height, width) pairs (a 1-tuple counts for both);
    padding is an int, a pair, "valid" or "same"; groups divides C and O (groups=C: depthwise).
    Returns (N, O, Ho, Wo), or (O, Ho, Wo) for an unbatched x.

    Refuses (ValueError): x not 3-D or 4-D or not floating point, a weight that is not 4-D,
    channels that do not match ``weight.shape[1] * groups``, O not divisible by groups,
    groups < 1, stride or dilation < 1, negative padding, ``padding="same"`` with a stride
    other than 1 (the output could not keep the input's size), a kernel larger than the
    padded input, dtypes that differ, an empty weight or an x empty other than in its batch
    (PyTorch raises too, but for zero input channels, where it returns an (N, 0, Ho, Wo) tensor;
    tests/test_degenerate.py). An empty batch gives an empty output."""
    if autocast_on(x):
        return autocast_call("conv2d", conv2d, x, weight, bias, stride, padding, dilation, groups)
    stride, (top, bottom, left, right), dilation, batched = conv_args(x, weight, bias, stride, padding,
                                                                      dilation, groups)
    if not batched:
        x = x.unsqueeze(0)  # (1, C, H, W), a view
    if bottom != top or right != left:  # "same" with an even dilated kernel: the extra pixel after
        x = pad2d(x, (0, right - left, 0, bottom - top))
    out = apply(Conv2d, x, weight, bias, stride, (top, left), dilation, groups)
    return out if batched else out.squeeze(0)
