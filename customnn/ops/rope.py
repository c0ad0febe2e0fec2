"""Rotary position embedding (RoPE), forward and hand-written backward.

Reference: Su, Lu, Pan, Murtadha, Wen & Liu, "RoFormer: Enhanced Transformer with Rotary Position
Embedding" (2021). Each query and key vector of a head is cut into hs/2 pairs, and pair i at
position t is rotated by the angle t * theta_i, theta_i = base^(-2i / hs):

    y1 = x1 cos - x2 sin
    y2 = x1 sin + x2 cos          cos = cos(t theta_i), sin = sin(t theta_i)

A rotation keeps the norm of each pair, and the product of a query rotated by t theta and a
key rotated by s theta depends on the positions only through t - s: q.k after RoPE is a
function of the offset between the two positions, which is what makes it relative.

Convention: **halves**, not interleaved pairs. Pair i is (x[..., i], x[..., i + hs/2]), as in
GPT-NeoX, Hugging Face's Llama (``rotate_half``) and modded-nanogpt; the RoFormer paper and
Meta's original Llama pair neighbours (x[2i], x[2i+1]). The two are the same map up to a fixed
permutation of the head's channels, which the q and k projections learn either way; the GPT
(``customnn.models.gpt``) and its torch.nn twin (``customnn_ref.twins``) both use halves.

Backward: the map is a rotation R(t theta_i) of each pair, orthogonal, so dx = R^T dy:

    dx1 =  dy1 cos + dy2 sin
    dx2 = -dy1 sin + dy2 cos

and, when the tables themselves want gradients (they never do in the GPT), y1 and y2 are linear
in cos and sin: dcos = sum(dy1 x1 + dy2 x2), dsin = sum(dy2 x1 - dy1 x2), summed over the leading
(batch and head) dimensions that the (T, hs/2) tables are broadcast over.

Entry points: ``rope_tables(T, hs, base, device, dtype) -> (cos, sin)``, each (T, hs/2), built
once per length; ``rope(x, cos, sin)`` on x (B, nh, T, hs) (any leading dimensions), hs even.

Dimension letters: B batch, nh heads, T positions, hs head size, h = hs / 2 pairs.

    cos, sin = ops.rope_tables(T, hs)
    q, k = ops.rope(q, cos, sin), ops.rope(k, cos, sin)   # q, k (B, nh, T, hs)

``rope_reference`` writes the two formulas with slicing and ``torch.cat``, for autograd to
differentiate; tests/test_reference.py compares it with the fast version.
"""

from __future__ import annotations

import torch

from customnn.ops._apply import apply
from customnn.ops._autocast import autocast_call, autocast_on
from customnn.ops._checks import check_float, check_tensor


def rope_tables(T: int, hs: int, base: float = 10000.0, device=None,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angles t * base^(-2i / hs), t = 0..T-1, i = 0..hs/2-1: each (T, hs/2).

    The angles are formed in float64 and rounded once to ``dtype``, so every dtype gets the
    same angles to its own precision."""
    if isinstance(T, bool) or not isinstance(T, int) or T < 0:
        raise ValueError(f"T must be an integer >= 0, got {T!r}")
    if isinstance(hs, bool) or not isinstance(hs, int) or hs < 2 or hs % 2:
        raise ValueError(f"hs must be an even integer >= 2, got {hs!r}")
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 1.0:
        raise ValueError(f"base must be a number > 1, got {base!r}")
    inv_freq = base ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)  # (h,) theta_i
    angles = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)  # (T, h) t * theta_i
    return angles.cos().to(device=device, dtype=dtype), angles.sin().to(device=device, dtype=dtype)


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[..., i], x[..., i + hs/2]) by the angle whose cos and sin are
    cos[t, i], sin[t, i]: [x1 cos - x2 sin, x1 sin + x2 cos]."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def _sum_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """t summed over the leading dimensions that broadcasting added to ``shape``."""
    return t.sum(dim=tuple(range(t.dim() - len(shape)))) if t.dim() > len(shape) else t


class _RoPE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        h = x.shape[-1] // 2
        x1, x2 = x[..., :h], x[..., h:]  # (..., T, h) each
        if torch.compiler.is_compiling():  # TorchDynamo cannot trace out= into a strided half
            y = rope_reference(x, cos, sin)
        else:  # each half written in place: no (..., T, h) temporaries and no concatenation
            y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            y1, y2 = y[..., :h], y[..., h:]
            torch.mul(x1, cos, out=y1).addcmul_(x2, sin, value=-1.0)  # y1 = x1 cos - x2 sin
            torch.mul(x1, sin, out=y2).addcmul_(x2, cos)  # y2 = x1 sin + x2 cos
        # x is kept only when the tables want gradients (dcos, dsin need it).
        tables_need = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        ctx.save_for_backward(cos, sin, x if tables_need else None)
        return y

    @staticmethod
    def backward(ctx, dout):
        cos, sin, x = ctx.saved_tensors
        need = ctx.needs_input_grad
        h = dout.shape[-1] // 2
        dy1, dy2 = dout[..., :h], dout[..., h:]
        dx = dcos = dsin = None
        if need[0] and torch.compiler.is_compiling():  # dx = R^T dy = R(-angle) dy, traceable (see forward)
            dx = rope_reference(dout, cos, -sin)
        elif need[0]:  # dx = R^T dy
            dx = torch.empty(dout.shape, dtype=dout.dtype, device=dout.device)
            torch.mul(dy1, cos, out=dx[..., :h]).addcmul_(dy2, sin)  # dx1 = dy1 cos + dy2 sin
            torch.mul(dy2, cos, out=dx[..., h:]).addcmul_(dy1, sin, value=-1.0)  # dx2 = dy2 cos - dy1 sin
        if need[1] or need[2]:
            x1, x2 = x[..., :h], x[..., h:]
            if need[1]:  # dcos = dy1 x1 + dy2 x2
                dcos = _sum_to(torch.addcmul(dy1 * x1, dy2, x2), cos.shape)
            if need[2]:  # dsin = dy2 x1 - dy1 x2
                dsin = _sum_to(torch.addcmul(dy2 * x1, dy1, x2, value=-1.0), sin.shape)
        return dx, dcos, dsin


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of x (..., T, hs) with the tables cos, sin (T, hs/2) of
    ``rope_tables``: pair (x[..., i], x[..., i + hs/2]) at position t turned by the angle of
    (cos[t, i], sin[t, i])."""
    if autocast_on(x):
        return autocast_call("rope", rope, x, cos, sin)
    check_tensor(x, "x")
    check_float(x, "x")
    check_tensor(cos, "cos")
    check_tensor(sin, "sin")
    if x.dim() < 2 or x.shape[-1] % 2:
        raise ValueError(f"x must be (..., T, hs) with hs even, got shape {tuple(x.shape)}")
    T, hs = x.shape[-2], x.shape[-1]
    for t, name in ((cos, "cos"), (sin, "sin")):
        if tuple(t.shape) != (T, hs // 2):
            raise ValueError(f"{name} must have shape ({T}, {hs // 2}) for x {tuple(x.shape)}, got {tuple(t.shape)}")
        if t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"{name} must have x's dtype and device ({x.dtype}, {x.device}), "
                             f"got {t.dtype}, {t.device}")
    return apply(_RoPE, x, cos, sin)
