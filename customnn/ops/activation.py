"""Elementwise activations: ReLU, GELU (exact erf form and tanh approximation) and SiLU.

Reference: GELU from Hendrycks & Gimpel, "Gaussian Error Linear Units" (2016),
    gelu(x) = x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))
and its tanh approximation (used by GPT-2 and llm.c's ``gelu_forward``/``gelu_backward``)
    gelu(x) ~= 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))).

SiLU (the sigmoid-weighted linear unit; Elfwing, Uchibe & Doya 2018, "swish" in Ramachandran
et al. 2017), the activation of SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer"):
    silu(x) = x * sigmoid(x),    silu'(x) = s (1 + x (1 - s)),  s = sigmoid(x).

Entry points ``relu(x)``, ``gelu(x, approximate="none")`` and ``silu(x)`` match ``F.relu``,
``F.gelu`` and ``F.silu``.
Both work elementwise, so any shape, dtype and device goes; non-contiguous inputs are fine.

    from customnn import ops
    y = ops.gelu(x, approximate="tanh")

``relu_reference``, ``gelu_reference`` and ``silu_reference`` write each formula as it stands,
for autograd to differentiate; the fast versions below them are tested against them (tests/test_reference.py).
"""

from __future__ import annotations

import functools
import math

import torch

from customnn.ops._apply import apply
from customnn.ops._autocast import autocast_call, autocast_on
from customnn.ops._checks import check_float, check_tensor
from customnn.ops._scalars import scalar

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_LOG2_INV_SQRT_2PI = math.log2(1.0 / math.sqrt(2.0 * math.pi))  # phi(x) = 2^(-x^2 log2(e) / 2 + this)
_TANH_K = math.sqrt(2.0 / math.pi)  # sqrt(2/pi), the tanh form's scale
_TANH_A = 0.044715  # the tanh form's cubic coefficient
_LOG2E = math.log2(math.e)  # exp(z) = exp2(z * log2(e)); exp2 is the faster kernel on CPU
_FEW = 4096  # up to this many values, the tanh form's backward reuses the forward's sigmoid


def relu_reference(x: torch.Tensor) -> torch.Tensor:
    """max(x, 0) by its definition: x where x > 0, else 0 (and so a gradient of 0 at x == 0)."""
    return x * (x > 0)  # the bool mask multiplies as 1.0 / 0.0


class _ReLU(torch.autograd.Function):
    """y = max(x, 0) (NaN stays NaN); dx = dout where x > 0 or x is NaN, else 0 (PyTorch's rule)."""

    @staticmethod
    def forward(ctx, x):
        y = x.clamp_min(0)
        # The output is kept for backward (y > 0 exactly where x > 0): the next layer usually
        # keeps y as its own input anyway, so this costs no extra memory.
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dout):
        (y,) = ctx.saved_tensors
        # sign(y) is 1 where y > 0 and 0 where y == 0: the step function as a float mask (a bool
        # mask is several times slower to build and apply on CPU). PyTorch's rule
        # (threshold_backward: dout unless y <= 0) passes the upstream gradient at a NaN input,
        # where sign would give 0: the NaNs become 1 first, with no branch on the data.
        return y.nan_to_num(1.0).sign_().mul_(dout)


def gelu_reference(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU by its formula: 0.5 x (1 + erf(x / sqrt 2)), or with ``approximate="tanh"``
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    if approximate == "tanh":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    if approximate == "none":
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


class _GeluErf(torch.autograd.Function):
    """y = x * Phi(x); dx = dout * gelu'(x), gelu'(x) = Phi(x) + x * phi(x), phi the standard
    normal density."""

    @staticmethod
    def forward(ctx, x):
        y = torch.mul(x, scalar(_INV_SQRT2, x)).erf_()  # erf(x / sqrt2), then 0.5 * (x + x * erf) in place:
        torch.addcmul(x, x, y, out=y).mul_(scalar(0.5, y))  # addcmul writes over its own input y, elementwise
        if ctx.needs_input_grad[0]:
            # The one tensor kept is gelu'(x), formed here from x and y, so that backward needs
            # neither: x is freed when the forward returns, and y when the next layer's backward
            # (which keeps y as its input) has run. This backward then holds three tensors of
            # x's size (gelu'(x), dout and dx), as PyTorch's does (x, dout and dx).
            ctx.save_for_backward(_gelu_erf_slope(x, y))
        return y

    @staticmethod
    def backward(ctx, dout):
        (slope,) = ctx.saved_tensors
        return slope * dout


def _gelu_erf_slope(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """gelu'(x) = Phi(x) + x * phi(x) from x and y = gelu(x), in one new tensor of x's shape.

    erf is the expensive part, so it is not computed again: Phi(x) is read back as y / x (exact
    to rounding; only subnormal x within a few ulps of 0 lose digits), and phi(x) is one cheap
    exp2 of x: phi(x) = 2^(b - x^2 log2(e) / 2), the exponent one addcmul (b + x * x * value),
    with b as a 0-d tensor since addcmul's first argument must be a tensor.
    """
    b = torch.full((), _LOG2_INV_SQRT_2PI, dtype=x.dtype, device=x.device)
    slope = torch.addcmul(b, x, x, value=-0.5 * _LOG2E).exp2_()  # phi(x)
    slope.mul_(x).addcdiv_(y, x)  # x * phi(x) + Phi(x), with Phi(x) read back as y / x
    slope.nan_to_num_(nan=0.5)  # at x == 0, y / x is 0/0: there Phi + x * phi = 0.5
    # That also turned the NaN of a NaN or infinite x into 0.5; adding x * 0 (0 for a finite
    # x, NaN otherwise) gives it back, as PyTorch's gradient, without a new tensor.
    return slope.addcmul_(x, b.new_zeros(()))


class _GeluTanh(torch.autograd.Function):
    """y = 0.5 x (1 + tanh(u)), u = k (x + a x^3), computed as y = x * sigmoid(2u)
    (0.5 (1 + tanh(u)) == sigmoid(2u), and sigmoid is much cheaper than tanh on CPU);
    dx = dout * (s + x s (1 - s) 2k (1 + 3 a x^2)), s = sigmoid(2u)."""

    @staticmethod
    def forward(ctx, x):
        if x.numel() > _FEW or not ctx.needs_input_grad[0]:
            # Only x is kept; the sigmoid is recomputed in backward (as llm.c's gelu_backward
            # recomputes tanh) rather than stored.
            ctx.save_for_backward(x)
            return _inner2(x).sigmoid_().mul_(x)
        # A few values: the sigmoid is kept too, three dispatched operations fewer in backward.
        s = _inner2(x).sigmoid_()
        ctx.save_for_backward(x, s)
        return s * x

    @staticmethod
    def backward(ctx, dout):
        x, *kept = ctx.saved_tensors
        s = kept[0] if kept else _inner2(x).sigmoid_()
        # dx = (s + q s (1 - s)) * dout with q = x * 2k (1 + 3 a x^2), built in one new tensor
        dx = torch.addcmul(_two_k(x.dtype, x.device), x, x, value=6.0 * _TANH_A * _TANH_K).mul_(x)  # q
        dx.mul_(s)
        dx.addcmul_(dx, s, value=-1.0)  # q s - q s s = q s (1 - s)
        return dx.add_(s).mul_(dout)


@functools.lru_cache(maxsize=32)
def _two_k(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """2k as a 0-d tensor of x's dtype and device: addcmul's first argument must be a tensor."""
    return torch.tensor(2.0 * _TANH_K, dtype=dtype, device=device)


def _inner2(x: torch.Tensor) -> torch.Tensor:
    """2u = 2k x (1 + a x^2) = (2k + 2ka x^2) x, the argument of the sigmoid in the tanh form."""
    return torch.addcmul(_two_k(x.dtype, x.device), x, x, value=2.0 * _TANH_K * _TANH_A).mul_(x)


def relu(x: torch.Tensor) -> torch.Tensor:
    """max(x, 0) elementwise, as ``F.relu``."""
    if autocast_on(x):
        return autocast_call("relu", relu, x)
    check_tensor(x, "x")
    check_float(x, "x")
    return apply(_ReLU, x)


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU elementwise, as ``F.gelu``: ``approximate="none"`` (erf) or ``"tanh"``."""
    if autocast_on(x):
        return autocast_call("gelu", gelu, x, approximate)
    check_tensor(x, "x")
    check_float(x, "x")
    if approximate == "none":
        return apply(_GeluErf, x)
    if approximate == "tanh":
        return apply(_GeluTanh, x)
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


def silu_reference(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x) by its definition."""
    return x * torch.sigmoid(x)


class _SiLU(torch.autograd.Function):
    """y = x * s, s = sigmoid(x).

    Backward: dy/dx = s + x * s' and s' = s (1 - s), so dx = dout * s * (1 + x * (1 - s)).
    """

    @staticmethod
    def forward(ctx, x):
        s = torch.sigmoid(x)
        # x and s are kept: backward needs both, and recomputing s costs an exp.
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, dout):
        x, s = ctx.saved_tensors
        dx = torch.addcmul(x.new_ones(()), x, 1 - s)  # 1 + x (1 - s)
        return dx.mul_(s).mul_(dout)


def silu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x) elementwise, as ``F.silu``."""
    if autocast_on(x):
        return autocast_call("silu", silu, x)
    check_tensor(x, "x")
    check_float(x, "x")
    return apply(_SiLU, x)
