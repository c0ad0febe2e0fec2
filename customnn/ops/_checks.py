"""Argument checks shared by the layers.

Bad arguments raise ``ValueError`` before any work, naming the argument and the
shapes involved, so a learner sees at once what went wrong.
"""

from __future__ import annotations

import torch


def pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints, as ``torch.nn.functional`` takes them, as a pair; a 1-tuple
    counts for both dims, as in PyTorch."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    try:
        a, b = value if len(value) != 1 else (value[0], value[0])
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, int) or not isinstance(b, int):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return (a, b)


def check_tensor(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def check_rank(x: torch.Tensor, name: str, ranks, what: str = "") -> None:
    """Raise unless ``x.dim()`` is one of ``ranks`` (an int or a tuple of ints)."""
    check_tensor(x, name)
    ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    if x.dim() not in ranks:
        want = " or ".join(f"{r}-D" for r in ranks)
        extra = f" {what}" if what else ""
        raise ValueError(f"{name} must be {want}{extra}, got shape {tuple(x.shape)}")


def check_positive(value: tuple[int, int], name: str) -> None:
    if min(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def check_non_negative(value: tuple[int, ...], name: str) -> None:
    if min(value) < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def check_float(x: torch.Tensor, name: str) -> None:
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def plain_ints(*values) -> bool:
    """Is every value an int, a tuple of ints or None (bools excluded)? Such arguments can key a
    cache of checked geometry: a bool must not hit the entry of the int it equals."""
    for v in values:
        if v is None or type(v) is int:
            continue
        if type(v) is not tuple:
            return False
        for e in v:
            if type(e) is not int:
                return False
    return True


_READ_WHOLE = 64  # integer tensors up to this size are read to the host whole to find their range


def int_range(t: torch.Tensor) -> tuple[int, int]:
    """The smallest and largest value of a non-empty integer tensor, as Python ints (one host
    synchronisation). A few values are read whole: a copy to a list costs a fraction of a
    reduction kernel and two scalar reads."""
    if t.numel() <= _READ_WHOLE:
        values = t.tolist() if t.dim() == 1 else t.reshape(-1).tolist()
        return min(values), max(values)
    lo, hi = torch.aminmax(t)  # one pass
    return int(lo), int(hi)
