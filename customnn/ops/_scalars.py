"""Python numbers as 0-d tensors, for the elementwise operations inside a layer's forward.

``x.mul_(0.5)`` wraps 0.5 in a new double tensor and converts it to x's dtype on every call
(torch 2.13 on the CPU: an allocation and a copy, about 2 us, more than the product itself on
the one row of a generated token); ``x.mul_(scalar(0.5, x))`` reads a 0-d tensor of x's dtype
and device, made once. In float32 and float64 the two give the same numbers, bit for bit. In
float16 and bfloat16 a Python number takes part at float32 precision, where a 0-d tensor of x's
dtype would be rounded to x's precision first, so there the number itself is returned; so it is
while TorchDynamo traces (a graph keeps its constants itself).

    y = torch.mul(x, scalar(1 / math.sqrt(2), x))       # x * 0.7071..., as x * (1 / math.sqrt(2))
"""

from __future__ import annotations

import torch

_EXACT = (torch.float32, torch.float64)  # dtypes in which a 0-d tensor equals the Python number
_MAX = 256  # entries kept; the layers use a few (eps values, 1/sqrt(2), 0.5, attention's scales)
_cache: dict[tuple, torch.Tensor] = {}
_is_compiling = torch.compiler.is_compiling


def scalar(value: float, like: torch.Tensor):
    """``value`` as a 0-d tensor of ``like``'s dtype and device (the same one on every call), or
    ``value`` itself in float16, bfloat16 and under TorchDynamo (module docstring)."""
    dtype = like.dtype
    if dtype not in _EXACT or _is_compiling():
        return value
    key = (value, dtype, like.device)
    t = _cache.get(key)
    if t is None:
        if len(_cache) >= _MAX:
            _cache.clear()
        # made outside inference mode, so that training may use one first made while generating
        with torch.inference_mode(False):
            t = _cache[key] = torch.tensor(value, dtype=dtype, device=like.device)
    return t
