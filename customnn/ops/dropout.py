"""Dropout with inverted scaling: zero each element with probability p, scale the rest by 1/(1-p).

Reference: Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
Overfitting" (JMLR 2014); the inverted form (scale at training time, identity at evaluation)
is the one ``F.dropout`` uses. The backward multiplies the upstream gradient by the same mask
and the same scale: dx = dout * mask / (1 - p).

Entry point ``dropout(x, p, training, generator=None)``, matching ``F.dropout``'s arguments.
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

from customnn.ops._checks import check_tensor


def dropout_reference(x: torch.Tensor, p: float = 0.5, training: bool = True,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """x * keep / (1 - p), keep = 1 where a uniform draw u >= p (probability 1 - p), else 0;
    x itself when not training or when p == 0. Draws u as ``dropout`` does (float32, x's shape)."""
    if not training or p == 0:
        return x
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    keep = (u >= p).to(x.dtype)  # 1 where the element is kept, 0 where it is dropped
    scale = 1.0 / (1.0 - p)  # kept elements grow so that the expected output stays x
    return x * (keep * scale)  # (keep * scale) first, as dropout forms it: the same bits


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, generator):
        # Uniforms in float32 whatever x's dtype (bfloat16 has too few levels to compare to p).
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
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
        return dx, None, None


def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero elements of x with probability p and scale the kept ones by 1/(1-p) when training;
    return x itself when not training or when p == 0."""
    check_tensor(x, "x")
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability p must be a number in [0, 1), got {p!r}")
    if not training or p == 0:
        return x
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    return _Dropout.apply(x, float(p), generator)
