"""Compare one of our layers against PyTorch's: forward and the gradient of every input.

    check_layer(ops.conv2d, F.conv2d, [x, w, b], dict(stride=2), dtype=torch.float64)

Both functions are called on fresh leaf copies of the same inputs; the same random upstream
gradient is pushed through both; the forward outputs and every input gradient must agree
within the tolerance for the dtype (relative to the largest magnitude of the reference).
"""

from __future__ import annotations

import torch

# The error measure and tolerances are the ones `customnn check` prints, so a test and the
# check table agree on what "equal" means.
from customnn_ref.check import TOL, max_rel_err  # noqa: F401 (tests import both from here)


def run_both(ours, ref, inputs, kwargs=None, ref_kwargs=None, grad_out_seed=1234):
    """Forward and backward through both; returns (errors dict, ours out, ref out)."""
    kwargs = kwargs or {}
    ref_kwargs = kwargs if ref_kwargs is None else ref_kwargs

    def leaves(src):
        out = []
        for t in src:
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad:
                out.append(t.detach().clone().requires_grad_(True))
            else:
                out.append(t)
        return out

    a, b = leaves(inputs), leaves(inputs)
    ya, yb = ours(*a, **kwargs), ref(*b, **ref_kwargs)
    errors = {"forward": max_rel_err(ya, yb)}
    if ya.requires_grad or yb.requires_grad:
        g = torch.Generator().manual_seed(grad_out_seed)
        dout = torch.randn(yb.shape, generator=g, dtype=torch.float64).to(yb.dtype)
        ya.backward(dout)
        yb.backward(dout)
        for i, (ta, tb) in enumerate(zip(a, b)):
            if isinstance(ta, torch.Tensor) and ta.requires_grad:
                if ta.grad is None:
                    raise AssertionError(f"input {i}: our layer gave no gradient")
                errors[f"grad{i}"] = max_rel_err(ta.grad, tb.grad)
    return errors, ya, yb


def check_layer(ours, ref, inputs, kwargs=None, ref_kwargs=None, tol=None):
    """Assert that forward and every input gradient agree within the dtype's tolerance."""
    dtype = next(t.dtype for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point())
    tol = TOL[dtype] if tol is None else tol
    errors, _, _ = run_both(ours, ref, inputs, kwargs, ref_kwargs)
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"errors above {tol:g}: {bad} (all: {errors})"
    return errors
