"""Seeded parameter initialisation, written by hand (no ``torch.nn.init``).

- ``fan_in_uniform``: PyTorch's default for ``nn.Conv2d`` and ``nn.Linear``, weight and bias
  both drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)). (PyTorch writes the weight's draw as
  ``kaiming_uniform_(w, a=sqrt(5))``: gain sqrt(2 / (1 + 5)) = sqrt(1/3), bound
  gain * sqrt(3 / fan_in) = 1/sqrt(fan_in); the bias draw is the same bound.)
- ``kaiming_uniform``: He et al., "Delving Deep into Rectifiers" (ICCV 2015), section 2.2,
  for layers followed by a ReLU: U(-b, b) with b = sqrt(6 / fan_in), variance 2 / fan_in.
- ``ones`` / ``zeros``: batch norm's gain and shift.

``fan_in`` is the number of inputs one output sees: in_channels * kh * kw for a conv weight
``(out, in, kh, kw)``; in_features for our linear weight, whose layout is the seed's
``(in_features, out_features)`` (the transpose of ``nn.Linear.weight``).

Every draw takes a ``torch.Generator`` so a model's initial weights depend only on its seed.

    g = torch.Generator().manual_seed(1)
    w = fan_in_uniform((6, 1, 5, 5), fan_in=25, generator=g)
"""

from __future__ import annotations

import math

import torch


def conv_fan_in(weight_shape) -> int:
    """Inputs per output of a conv weight ``(out_channels, in_channels, kh, kw)``."""
    _, cin, kh, kw = weight_shape
    return cin * kh * kw


def linear_fan_in(weight_shape) -> int:
    """Inputs per output of our linear weight ``(in_features, out_features)``."""
    return weight_shape[0]


def uniform(shape, bound: float, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """U(-bound, bound), as a trainable tensor."""
    u = torch.rand(tuple(shape), generator=generator, dtype=dtype)  # U(0, 1)
    return (u * (2 * bound) - bound).requires_grad_(True)


def fan_in_uniform(shape, fan_in: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """PyTorch's conv/linear default for weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    if fan_in < 1:
        raise ValueError(f"fan_in must be >= 1, got {fan_in}")
    return uniform(shape, 1.0 / math.sqrt(fan_in), generator, dtype)


def kaiming_uniform(shape, fan_in: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """He initialisation for a layer before a ReLU: U(-sqrt(6/fan_in), sqrt(6/fan_in))."""
    if fan_in < 1:
        raise ValueError(f"fan_in must be >= 1, got {fan_in}")
    return uniform(shape, math.sqrt(6.0 / fan_in), generator, dtype)


def ones(shape, dtype=torch.float32) -> torch.Tensor:
    return torch.ones(tuple(shape), dtype=dtype).requires_grad_(True)


def zeros(shape, dtype=torch.float32) -> torch.Tensor:
    return torch.zeros(tuple(shape), dtype=dtype).requires_grad_(True)
