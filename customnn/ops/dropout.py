"""Dropout with inverted scaling: zero each element with probability p, scale the rest by 1/(1-p).

Reference: Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
Overfitting" (JMLR 2014); the inverted form (scale at training time, identity at evaluation)
is the one ``F.dropout`` uses. The backward multiplies the upstream gradient by the same mask
and the same scale: dx = dout * mask / (1 - p).

Entry point ``dropout(x, p, training, generator=None)``, matching ``F.dropout``'s arguments;
p may be 1 (every element dropped: zeros, gradient zero) and does not matter when not training.
The mask comes from ``torch.rand`` (with ``generator`` when given), so it differs from
PyTorch's elementwise; it agrees in distribution.

    from customnn import ops
    y = ops.dropout(x, 0.1, training=True)

``dropout_reference`` (same arguments) writes the formula out for autograd to differentiate. It
draws its uniforms exactly as the fast version does, so handed a generator in the same state
it drops the same elements, and the two outputs and gradients can be compared exactly:

    y_fast = ops.dropout(x, p, True, generator=torch.Generator().manual_seed(0))
    y_ref = ops.dropout_reference(x, p, True, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import numbers

import torch

from customnn.ops._apply import apply
from customnn.ops._autocast import autocast_call, autocast_on
from customnn.ops._checks import check_tensor


def uniforms(shape, generator, device, dtype, batch=None) -> torch.Tensor:
    """Uniform draws in [0, 1) of ``shape``, from ``generator`` (None: the global one). With
    ``batch = (rows, total)`` (the tensor they are for holds rows ``rows`` of a batch of
    ``total``) they are drawn for the whole batch and these rows kept, so that a data-parallel
    rank draws exactly what one process draws for the same rows (and leaves the generator in
    the same state). Used by every dropout mask: this module's and attention's."""
    if batch is None:
        return torch.rand(shape, generator=generator, device=device, dtype=dtype)
    rows, total = batch
    return torch.rand((total, *shape[1:]), generator=generator, device=device, dtype=dtype)[rows]


def dropout_reference(x: torch.Tensor, p: float = 0.5, training: bool = True,
                      generator: torch.Generator | None = None, *, batch=None) -> torch.Tensor:
    """x * keep / (1 - p), keep = 1 where a uniform draw u >= p (probability 1 - p), else 0;
    x itself when not training or when p == 0; x * 0 when p == 1 (no draw). Draws u as
    ``dropout`` does (float32, x's shape)."""
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0.0  # every element dropped: zeros (NaN stays NaN, as in F.dropout), gradient 0
    u = uniforms(x.shape, generator, x.device, torch.float32, batch)
    keep = (u >= p).to(x.dtype)  # 1 where the element is kept, 0 where it is dropped
    scale = 1.0 / (1.0 - p)  # kept elements grow so that the expected output stays x
    return x * (keep * scale)  # (keep * scale) first, as dropout forms it: the same bits


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, generator, batch):
        if p == 1.0:  # every element dropped: a zero mask, no draw (as F.dropout)
            mask = x.new_zeros(()).expand(x.shape)  # (same shape as x), no memory
            ctx.save_for_backward(mask)
            return x * mask
        # Uniforms in float32 whatever x's dtype (bfloat16 has too few levels to compare to p).
        u = uniforms(x.shape, generator, x.device, torch.float32, batch)
        # mask = 1/(1-p) where u >= p (probability 1 - p), else 0: the comparison is done in
        # place on the float tensor, which is several times faster on CPU than a bool mask.
        mask = u.ge_(p).to(x.dtype).mul_(1.0 / (1.0 - p))  # (same shape as x)
        y = x * mask
        # The scaled mask is kept so backward drops the same elements: one tensor of x's size,
        # the same as PyTorch's own dropout keeps on CPU.
        ctx.save_for_backward(mask)
        return y

    @staticmethod
    def backward(ctx, dout):
        (mask,) = ctx.saved_tensors
        dx = dout * mask
        return dx, None, None, None


def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True,
            generator: torch.Generator | None = None, *, batch=None) -> torch.Tensor:
    """Zero elements of x with probability p and scale the kept ones by 1/(1-p) when training;
    return x itself when not training (whatever p in [0, 1]) or when p == 0; with p == 1 every
    element is dropped: zeros (x * 0, so a NaN stays NaN, as F.dropout), gradient zero. Refuses
    (ValueError): p not a number in [0, 1] (checked in every mode, as F.dropout), a non-float x
    when training. ``batch = (rows, total)``: x is rows
    ``rows`` (a slice) of a batch of ``total`` rows, and its mask is those rows of the whole
    batch's (data-parallel training, customnn/train/distributed.py)."""
    if autocast_on(x):
        return autocast_call("dropout", dropout, x, p, training, generator, batch=batch)
    check_tensor(x, "x")
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability p must be a number in [0, 1], got {p!r}")
    if not training or p == 0:
        return x
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    return apply(_Dropout, x, float(p), generator, batch)
