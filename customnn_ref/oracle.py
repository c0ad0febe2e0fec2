"""The tests' one-comparison assertion, on the library's own harness (``customnn.testing``).

    from customnn_ref.oracle import check_layer
    check_layer(ops.conv2d, F.conv2d, [x, w, b], dict(stride=2))        # asserts, in a test
    errors = compare(ops.conv2d, F.conv2d, [x, w, b], dict(stride=2))  # just the errors

``compare``, ``max_rel_err`` and ``TOL`` are ``customnn.testing``'s (compare.py says what
"equal" means), so the tests, ``customnn check`` and a user's ``customnn.testing.check_layer``
measure alike. ``check_layer`` here is the single comparison a test grid needs, in the inputs'
own dtype, as given: the public ``customnn.testing.check_layer`` runs the whole battery (both
dtypes, non-contiguous copies, gradcheck, the one rule) on one set of inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from customnn.testing.compare import TOL, compare, max_rel_err

__all__ = ["TOL", "check_layer", "compare", "max_rel_err"]


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
