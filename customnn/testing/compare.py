"""One comparison of a function with its reference: forward and every gradient, measured.

    from customnn.testing import compare
    errors = compare(ops.conv2d, F.conv2d, [x, w, b], dict(stride=2))   # {"forward": 2e-16, "grad0": ...}

What ``check_layer`` (harness.py), ``customnn check`` and the test suite mean by "equal":

- each side gets fresh copies of the inputs: tensors that require grad become new leaves, other
  tensors are cloned (so an in-place update on one side, such as batch norm's running
  statistics, never reaches the other), anything else is passed as is;
- a function returns its output or a tuple of outputs; every output that requires grad gets a
  random upstream gradient (seeded, the same for both sides), the others (batch norm's running
  statistics, max-pool's indices) are compared but not differentiated;
- the gradient of every input that requires grad is compared;
- an error is ``max |ours - ref| / max(max |ref|, 1)``: relative to the reference's largest
  magnitude, absolute below 1 (NaN against NaN, and equal infinities, differ by 0; NaN against a
  number by infinity). Equal means an error of at most ``TOL[dtype]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


@dataclass
class Diff:
    """How far one tensor is from the reference's: ``error`` (as above), and the largest
    absolute difference, where it is, and the two values there."""

    what: str  # "output", "output 1", "gradient of `weight`"
    error: float
    max_abs: float = 0.0
    where: tuple = ()
    ours: float = 0.0
    ref: float = 0.0

    def describe(self) -> str:
        if self.max_abs == 0.0 and self.error == 0.0:
            return f"{self.what}: equal"
        return (f"{self.what}: max abs diff {self.max_abs:.3g} at {self.where} "
                f"(yours {self.ours:.8g}, reference {self.ref:.8g}), error {self.error:.2g}")


def diff(ours: torch.Tensor, ref: torch.Tensor, what: str = "output") -> Diff:
    """The ``Diff`` of ``ours`` from ``ref``; ValueError when their shapes differ."""
    if ours.shape != ref.shape:
        raise ValueError(f"{what}: shape {tuple(ours.shape)} differs from the reference's {tuple(ref.shape)}")
    if ref.numel() == 0:
        return Diff(what, 0.0)
    a, b = ours.detach().double(), ref.detach().double()
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))  # equal infinities, NaN on both sides: equal
    d = torch.where(same, torch.zeros_like(a), (a - b).abs()).nan_to_num(nan=float("inf"))
    i = int(d.flatten().argmax())
    where, rest = [], i
    for size in reversed(d.shape):  # the flat index as one index per dim
        where.insert(0, rest % size)
        rest //= size
    scale = b.abs().nan_to_num(nan=0.0, posinf=0.0).max().item()
    max_abs = d.flatten()[i].item()
    return Diff(what, max_abs / max(scale, 1.0), max_abs, tuple(where), a.flatten()[i].item(), b.flatten()[i].item())


def max_rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of the reference."""
    return diff(ours, ref).error


def fresh(inputs: Sequence) -> list:
    """New leaves for tensors that require grad, clones of other tensors, the rest as is."""
    out = []
    for t in inputs:
        if isinstance(t, torch.Tensor):
            t = t.detach().clone().requires_grad_(True) if t.requires_grad else t.clone()
        out.append(t)
    return out


def as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def upstream(outputs: Sequence, seed: int) -> list:
    """One random upstream gradient (float64 draws, cast) per output that requires grad."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(y.shape, generator=g, dtype=torch.float64).to(dtype=y.dtype, device=y.device)
            for y in outputs if isinstance(y, torch.Tensor) and y.requires_grad]


def strided(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(base, view): ``view`` holds ``t``'s values, every other element of ``base``'s last dim, so it
    is not contiguous, and is a view of the leaf ``base`` (which requires grad if ``t`` does); a
    tensor of fewer than 2 elements is returned as is (it is always contiguous)."""
    if t.numel() < 2:
        return t, t
    base = t.new_zeros(*t.shape[:-1], 2 * t.shape[-1])
    base[..., ::2] = t.detach()
    base.requires_grad_(t.requires_grad)
    return base, base[..., ::2]


def diffs(ours: Callable, ref: Callable, inputs: Sequence, kwargs: dict | None = None,
          ref_kwargs: dict | None = None, names: Sequence[str] | None = None, seed: int = 1234,
          noncontiguous: bool = False) -> list[Diff]:
    """Run both on fresh copies of ``inputs``; one ``Diff`` per output, then one per input that
    requires grad (called ``names[i]``, or ``input i``). With ``noncontiguous``, ``ours`` gets
    non-contiguous copies of the tensors (``strided``) and its upstream gradients likewise."""
    kwargs = kwargs or {}
    ref_kwargs = kwargs if ref_kwargs is None else ref_kwargs
    a, b = fresh(inputs), fresh(inputs)
    leaves, values = a, a
    if noncontiguous:
        pairs = [strided(t) if isinstance(t, torch.Tensor) else (t, t) for t in a]
        leaves, values = [base for base, _ in pairs], [view for _, view in pairs]
    out_a, out_b = as_tuple(ours(*values, **kwargs)), as_tuple(ref(*b, **ref_kwargs))
    if len(out_a) != len(out_b):
        raise ValueError(f"{len(out_a)} outputs against the reference's {len(out_b)}")
    result = []
    for k, (ya, yb) in enumerate(zip(out_a, out_b)):
        what = "output" if len(out_a) == 1 else f"output {k}"
        if not isinstance(yb, torch.Tensor) or not isinstance(ya, torch.Tensor):
            raise ValueError(f"{what}: {type(ya).__name__} against the reference's {type(yb).__name__}; "
                             "both must return tensors")
        result.append(diff(ya, yb, what))
        if ya.requires_grad != yb.requires_grad:
            side = "yours" if yb.requires_grad else "the reference's"
            raise AssertionError(f"{what}: {side} does not require grad (no gradient can flow through it)")
    douts = upstream(out_b, seed)
    if not douts:
        return result
    torch.autograd.backward([y for y in out_a if y.requires_grad],
                            [strided(d)[1] for d in douts] if noncontiguous else douts)
    torch.autograd.backward([y for y in out_b if y.requires_grad], douts)
    for i, (leaf, ta, tb) in enumerate(zip(leaves, a, b)):
        if not (isinstance(tb, torch.Tensor) and tb.requires_grad):
            continue
        what = f"gradient of `{names[i]}`" if names else f"gradient of input {i}"
        if leaf.grad is None and tb.grad is None:
            continue
        if leaf.grad is None or tb.grad is None:
            side = "your function" if leaf.grad is None else "the reference"
            raise AssertionError(f"{what}: {side} gives none (the other does)")
        grad = leaf.grad if leaf is ta else leaf.grad[..., ::2]  # the view's part of the base
        result.append(diff(grad, tb.grad, what))
    return result


def compare(ours: Callable, ref: Callable, inputs: Sequence, kwargs: dict | None = None,
            ref_kwargs: dict | None = None, names: Sequence[str] | None = None,
            seed: int = 1234) -> dict[str, float]:
    """The errors of ``diffs``: ``"forward"`` (the largest over the outputs) and one per input that
    requires grad, named ``"d" + names[i]`` (``"grad<i>"`` without names). ``ref_kwargs``
    defaults to ``kwargs``; ``seed`` draws the upstream gradients."""
    found = diffs(ours, ref, inputs, kwargs, ref_kwargs, None, seed)
    outputs = [d for d in found if d.what.startswith("output")]
    errors = {"forward": max(d.error for d in outputs)}
    grads = [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    by_what = {d.what: d for d in found}
    for i in grads:
        d = by_what.get(f"gradient of input {i}")
        if d is not None:
            errors[f"d{names[i]}" if names else f"grad{i}"] = d.error
    return errors
