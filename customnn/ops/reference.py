"""The readable loop versions of convolution, max pooling and attention.

    from customnn import ops
    y = ops.conv2d_reference(x, w, b, stride=1, padding=2)   # equals ops.conv2d and F.conv2d

These are written to be read, not run fast: explicit Python loops over output pixels (and
over query positions for attention), each step a small ordinary tensor expression, in the
style of the seed's ``conv2d_custom`` and ``max_pool2d_custom``. They have no hand-written
backward: PyTorch's autograd differentiates the loops, which makes them an independent
check of the fast layers in ``conv.py``, ``pool.py`` and ``attention.py`` (the tests compare
all three: reference, fast version, PyTorch).

Dimension letters: N batch, C input channels, O output channels, H/W height/width,
kh/kw kernel size, Ho/Wo output size; for attention B batch, nh heads, T time, hs head size.
"""

from __future__ import annotations

import math

import torch

from customnn.ops._checks import check_float, check_rank
from customnn.ops.conv import conv_args
from customnn.ops.pool import pool_args


def _padded(x: torch.Tensor, ph: int, pw: int, value: float) -> torch.Tensor:
    """x (N, C, H, W) surrounded by ph rows and pw columns of ``value``, differentiably."""
    N, C, H, W = x.shape
    xp = torch.full((N, C, H + 2 * ph, W + 2 * pw), value, dtype=x.dtype, device=x.device)
    xp[:, :, ph: ph + H, pw: pw + W] = x  # autograd sees a copy into a slice
    return xp


def conv2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride=1, padding=0, dilation=1) -> torch.Tensor:
    """2-D convolution, one output pixel at a time: out[n, o, i, j] is the sum over c, a, b of
    x_padded[n, c, i*sh + a*dh, j*sw + b*dw] * weight[o, c, a, b], plus bias[o]."""
    (sh, sw), (ph, pw), (dh, dw) = conv_args(x, weight, bias, stride, padding, dilation)
    N, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = _padded(x, ph, pw, 0.0)  # (N, C, H + 2ph, W + 2pw)
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


def max_pool2d_reference(x: torch.Tensor, kernel_size, stride=None, padding=0) -> torch.Tensor:
    """Max pooling, one output pixel at a time: the largest value in each window (padding
    counts as -inf). ``max`` over a dim sends the gradient to the first maximum, PyTorch's rule."""
    (kh, kw), (sh, sw), (ph, pw), (Ho, Wo) = pool_args(x, kernel_size, stride, padding, "max_pool2d_reference")
    N, C = x.shape[:2]
    xp = _padded(x, ph, pw, float("-inf"))  # (N, C, H + 2ph, W + 2pw)
    rows = []
    for i in range(Ho):
        row = []
        for j in range(Wo):
            window = xp[:, :, i * sh: i * sh + kh, j * sw: j * sw + kw]  # (N, C, kh, kw)
            row.append(window.reshape(N, C, kh * kw).max(dim=-1).values)  # (N, C)
        rows.append(torch.stack(row, dim=-1))  # (N, C, Wo)
    return torch.stack(rows, dim=-2)  # (N, C, Ho, Wo)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        causal: bool = True, dropout_p: float = 0.0) -> torch.Tensor:
    """Scaled dot-product attention, one query position at a time, as
    ``F.scaled_dot_product_attention(q, k, v, is_causal=causal)``.

    q (B, nh, T, hs), k (B, nh, S, hs), v (B, nh, S, hv). Query t looks at keys 0..t when
    causal (the mask is aligned top-left, as PyTorch's is_causal), at all keys otherwise."""
    if dropout_p != 0.0:
        raise ValueError(f"attention_reference supports dropout_p=0 only, got dropout_p={dropout_p}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_rank(t, name, 4, "(B, nh, T, hs)")
        check_float(t, name)
    B, nh, T, hs = q.shape
    S = k.shape[2]
    if k.shape[:2] != (B, nh) or v.shape[:2] != (B, nh) or k.shape[3] != hs or v.shape[2] != S:
        raise ValueError(f"q, k, v shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         f"(want q (B, nh, T, hs), k (B, nh, S, hs), v (B, nh, S, hv))")
    if S == 0:
        raise ValueError(f"attention needs at least one key, got k {tuple(k.shape)}")
    scale = 1.0 / math.sqrt(hs)
    outs = []
    for t in range(T):
        seen = min(t + 1, S) if causal else S  # how many keys query t may look at
        scores = (q[:, :, t: t + 1, :] @ k[:, :, :seen, :].transpose(-2, -1)) * scale  # (B, nh, 1, seen)
        scores = scores - scores.max(dim=-1, keepdim=True).values  # subtract the max before exp
        weights = torch.exp(scores)
        weights = weights / weights.sum(dim=-1, keepdim=True)  # softmax over the keys
        outs.append(weights @ v[:, :, :seen, :])  # (B, nh, 1, hv)
    return torch.cat(outs, dim=2)  # (B, nh, T, hv)
