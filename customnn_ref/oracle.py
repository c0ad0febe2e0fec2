"""The one comparison harness: a function against its reference, forward and every gradient.

    from customnn_ref.oracle import check_layer
    check_layer(ops.conv2d, F.conv2d, [x, w, b], dict(stride=2))        # asserts, in a test
    errors = compare(ops.conv2d, F.conv2d, [x, w, b], dict(stride=2))  # just the errors

``customnn check`` (check.py) and the tests both compare through ``compare``, so the table and
the tests agree on what "equal" means:

- each side gets fresh copies of the inputs: tensors that require grad become new leaves, other
  tensors are cloned (so an in-place update on one side, such as batch norm's running
  statistics, never reaches the other), anything else is passed as is;
- a function returns its output or a tuple ``(output, extra, ...)``; the extras are compared
  like the output but not differentiated;
- one random upstream gradient (seeded) is pushed back through both outputs, and the gradient
  of every input that requires grad is compared;
- an error is ``max |ours - ref| / max(max |ref|, 1)``: relative to the reference's largest
  magnitude, absolute below 1. Equal means an error of at most ``TOL[dtype]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def max_rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of the reference."""
    if ours.shape != ref.shape:
        raise ValueError(f"output shape {tuple(ours.shape)} != the reference's {tuple(ref.shape)}")
    if ref.numel() == 0:
        return 0.0
    scale = ref.detach().abs().max().item()
    diff = (ours.detach().double() - ref.detach().double()).abs().max().item()
    return diff / max(scale, 1.0)


def _fresh(inputs: Sequence) -> list:
    """New leaves for tensors that require grad, clones of other tensors, the rest as is."""
    out = []
    for t in inputs:
        if isinstance(t, torch.Tensor):
            t = t.detach().clone().requires_grad_(True) if t.requires_grad else t.clone()
        out.append(t)
    return out


def compare(ours: Callable, ref: Callable, inputs: Sequence, kwargs: dict | None = None,
            ref_kwargs: dict | None = None, names: Sequence[str] | None = None,
            seed: int = 1234) -> dict[str, float]:
    """Run both on fresh copies of ``inputs``; return the errors: ``"forward"`` (output and
    extras) and one per input that requires grad, named ``"d" + names[i]`` (``"grad<i>"``
    without names). ``ref_kwargs`` defaults to ``kwargs``; ``seed`` draws the upstream gradient."""
    kwargs = kwargs or {}
    ref_kwargs = kwargs if ref_kwargs is None else ref_kwargs
    a, b = _fresh(inputs), _fresh(inputs)
    out_a, out_b = ours(*a, **kwargs), ref(*b, **ref_kwargs)
    out_a = out_a if isinstance(out_a, tuple) else (out_a,)
    out_b = out_b if isinstance(out_b, tuple) else (out_b,)
    if len(out_a) != len(out_b):
        raise ValueError(f"{len(out_a)} outputs against the reference's {len(out_b)}")
    errors = {"forward": max(max_rel_err(x, y) for x, y in zip(out_a, out_b))}
    ya, yb = out_a[0], out_b[0]
    if not (ya.requires_grad or yb.requires_grad):
        return errors
    if ya.requires_grad != yb.requires_grad:
        side = "ours" if yb.requires_grad else "the reference's"
        raise AssertionError(f"{side} output does not require grad")
    g = torch.Generator().manual_seed(seed)
    dout = torch.randn(yb.shape, generator=g, dtype=torch.float64).to(dtype=yb.dtype, device=yb.device)
    ya.backward(dout)
    yb.backward(dout)
    for i, (ta, tb) in enumerate(zip(a, b)):
        if isinstance(ta, torch.Tensor) and ta.requires_grad:
            name = f"d{names[i]}" if names else f"grad{i}"
            if ta.grad is None:
                raise AssertionError(f"our function gave no gradient for {name}")
            errors[name] = max_rel_err(ta.grad, tb.grad)
    return errors


def check_layer(ours: Callable, ref: Callable, inputs: Sequence, kwargs: dict | None = None,
                ref_kwargs: dict | None = None, tol: float | None = None) -> dict[str, float]:
    """Assert that forward and every input gradient agree within the dtype's tolerance
    (the first floating-point input's dtype); return the errors."""
    dtype = next(t.dtype for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point())
    tol = TOL[dtype] if tol is None else tol
    errors = compare(ours, ref, inputs, kwargs, ref_kwargs)
    bad = {k: v for k, v in errors.items() if not v <= tol}  # NaN is not <= tol
    assert not bad, f"errors above {tol:g}: {bad} (all: {errors})"
    return errors
