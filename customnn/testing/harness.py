"""``check_layer``: a layer against its reference, every way a hand-written layer goes wrong.

    from customnn.testing import check_layer
    check_layer(my_conv, F.conv2d, x, w, b, stride=2)      # raises AssertionError if anything differs
    print(check_layer(my_conv, my_conv_reference, x, w, b, stride=2))   # one line per check

The checks (tinygrad's ``helper_test_op``, micrograd's ``test_engine.py``):

1. float64, the inputs as given: each output and the gradient of each floating input, against
   the reference, within 1e-10 (``compare.py`` says how an error is measured);
2. float64, non-contiguous copies of the inputs (and of the upstream gradients);
3. and 4. the same in float32, within 1e-5;
5. ``torch.autograd.gradcheck`` on the layer alone in float64 (fast mode): the backward against
   finite differences of the forward. Finite differences cost a forward per input element or
   so: keep the inputs small (a few hundred elements), and away from kinks (relu at 0, ties
   in a max);
6. the one rule: no PyTorch layer-level function called in the forward or the backward
   (``banned.py``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from customnn.testing.banned import BannedCallTracer, readable_name, run_backward
from customnn.testing.compare import TOL, Diff, as_tuple, diffs, upstream

DTYPES = (torch.float64, torch.float32)


@dataclass
class Check:
    """One line of a ``LayerCheck``: what was checked, whether it passed, and the figures."""

    label: str  # "float64", "float64, non-contiguous", "gradcheck", "one rule"
    ok: bool
    detail: str
    diffs: list[Diff] = field(default_factory=list)
    dtype: torch.dtype | None = None

    def __str__(self) -> str:
        return f"  {self.label:<24} {'OK  ' if self.ok else 'FAIL'}  {self.detail}"


@dataclass
class LayerCheck:
    """What ``check_layer`` found: ``ok``, and one ``Check`` per line; ``str()`` prints them."""

    name: str
    reference: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def errors(self, dtype: torch.dtype) -> dict[str, float]:
        """The largest error of each output and gradient in ``dtype``'s checks (``customnn check``'s row)."""
        out: dict[str, float] = {}
        for c in self.checks:
            if c.dtype == dtype:
                for d in c.diffs:
                    out[d.what] = max(out.get(d.what, 0.0), d.error)
        return out

    def __str__(self) -> str:
        head = f"check_layer: {self.name} against {self.reference}: {'OK' if self.ok else 'FAIL'}"
        return "\n".join([head, *(str(c) for c in self.checks)])


def input_names(fn: Callable, n: int) -> list[str]:
    """The names of ``fn``'s first ``n`` positional parameters (``input i`` past a ``*args``)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature
        params = []
    names = []
    for p in params:
        if p.kind == p.VAR_POSITIONAL or p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            break
        names.append(p.name)
    return [names[i] if i < len(names) else f"input {i}" for i in range(n)]


def _cast(value, dtype: torch.dtype, device, requires_grad: bool = False):
    """A floating tensor in ``dtype`` (and on ``device``); other tensors moved; the rest as is."""
    if not isinstance(value, torch.Tensor):
        return value
    t = value.detach().to(device=device if device is not None else value.device)
    if t.is_floating_point():
        t = t.to(dtype)
    return t.requires_grad_(requires_grad)


def _note(exc: BaseException, text: str) -> BaseException:
    if hasattr(exc, "add_note"):
        exc.add_note(text)
    return exc


def _tolerance(tol: float | dict | None, dtype: torch.dtype) -> float:
    """``tol`` as check_layer takes it (None, a number, or {dtype: number}) for ``dtype``."""
    default = TOL.get(dtype, 1e-3)
    if isinstance(tol, dict):
        return tol.get(dtype, default)
    return default if tol is None else tol


def _compare(fn, reference, args, kwargs, ref_kwargs, names, dtype, tol, seed, noncontiguous) -> Check:
    label = str(dtype).replace("torch.", "") + (", non-contiguous" if noncontiguous else "")
    found = diffs(fn, reference, args, kwargs, ref_kwargs, names, seed, noncontiguous)
    bad = [d for d in found if not d.error <= tol]  # NaN is not <= tol
    if bad:
        detail = "; ".join(f"{d.describe()} > tolerance {tol:g}" for d in bad)
    else:
        detail = ", ".join(f"{d.what} {d.error:.1e}" for d in found) + f" (tolerance {tol:g})"
    return Check(label, not bad, detail, found, dtype)


def _gradcheck(fn, args, kwargs, names, wanted) -> Check:
    """``torch.autograd.gradcheck`` on ``fn`` alone, over the inputs in ``wanted`` (float64)."""
    idx = [i for i, w in enumerate(wanted) if w]

    def only(*diff_args):
        full = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]  # in-place updates stay here
        for i, a in zip(idx, diff_args):
            full[i] = a
        return tuple(y for y in as_tuple(fn(*full, **kwargs)) if isinstance(y, torch.Tensor))

    leaves = [args[i].detach().clone().requires_grad_(True) for i in idx]
    try:
        torch.autograd.gradcheck(only, leaves, fast_mode=True)
    except RuntimeError as e:  # GradcheckError: the first line says which output and input
        first = str(e).strip().splitlines()[0].rstrip(",")
        first = re.sub(r"input (\d+)", lambda m: f"`{names[idx[int(m.group(1))]]}`", first)
        return Check("gradcheck", False, f"float64, fast mode: {first}")
    return Check("gradcheck", True, f"float64, fast mode, over {', '.join(f'`{names[i]}`' for i in idx)}")


def _trace(fn, args, kwargs, seed) -> Check:
    """One forward and backward of ``fn`` with PyTorch's layer calls recorded."""
    tracer = BannedCallTracer()
    leaves = [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args]
    with tracer.phase("forward"):
        outs = as_tuple(fn(*leaves, **kwargs))
    wanted = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
    ys = [y for y in outs if isinstance(y, torch.Tensor) and y.requires_grad]
    if ys and wanted:
        with tracer.phase("backward"):
            run_backward(ys, upstream(ys, seed), wanted)
    calls = tracer.calls
    if any(c.phase == "forward" for c in calls):  # autograd's own derivatives of those: not news
        calls = [c for c in calls if c.phase == "forward" or c.site is not None]
    calls = list(dict.fromkeys(str(c) for c in calls))
    if calls:
        return Check("one rule", False, "calls PyTorch's layer functions: " + "; ".join(calls[:5])
                     + (f" (and {len(calls) - 5} more)" if len(calls) > 5 else "")
                     + ": build it from basic tensor operations")
    return Check("one rule", True, "no PyTorch layer function called in forward or backward")


def check_layer(fn: Callable, reference: Callable, *inputs, ref_kwargs: dict | None = None,
                dtypes=DTYPES, tol: float | dict | None = None, gradcheck: bool = True, trace: bool = True,
                device=None, seed: int = 0, raises: bool = True, **kwargs) -> LayerCheck:
    """Check ``fn(*inputs, **kwargs)`` against ``reference(*inputs, **kwargs)``.

    ``inputs``: tensors, None or numbers, as ``fn`` takes them. Every floating-point tensor input
    is differentiated, or, if some of them require grad, only those (to leave out, say, batch
    norm's running statistics); integer tensors (indices, targets) are passed as they are.
    Floating tensors in ``kwargs`` are cast to each dtype too. ``fn`` and ``reference`` return
    a tensor or a tuple of them.

    The rest are ``check_layer``'s own (a layer argument of the same name goes through a
    ``lambda``): ``ref_kwargs``, the reference's keyword arguments where they differ from
    ``fn``'s; ``dtypes`` to check in (default float64 and float32); ``tol``, one number or
    ``{dtype: tol}`` (default 1e-10 in float64, 1e-5 in float32); ``gradcheck`` and ``trace``
    (the one rule) to leave those out; ``device`` to move the inputs to; ``seed`` for the upstream
    gradients; ``raises=False`` to get the result even when a check fails.

    Returns a ``LayerCheck`` (``print`` it: one line per check). Raises ``AssertionError``
    naming each output or gradient that differs, by how much and where, or each PyTorch layer
    call; ``ValueError`` for a misuse (no floating-point input, outputs of other shapes).
    """
    if not callable(fn) or not callable(reference):
        raise TypeError("check_layer(fn, reference, *inputs): fn and reference must be callables")
    floating = [isinstance(t, torch.Tensor) and t.is_floating_point() for t in inputs]
    if not any(floating):
        got = ", ".join(f"{t.dtype} tensor" if isinstance(t, torch.Tensor) else type(t).__name__ for t in inputs)
        raise ValueError(f"check_layer({readable_name(fn)}): no floating-point tensor among the inputs "
                         f"({got or 'none'}): it needs one to compare gradients")
    chosen = [f and t.requires_grad for f, t in zip(floating, inputs)]
    wanted = chosen if any(chosen) else floating
    names = input_names(fn, len(inputs))
    result = LayerCheck(readable_name(fn), readable_name(reference))
    ref_kwargs = kwargs if ref_kwargs is None else ref_kwargs

    def run(label: str, dtype, check: Callable[[], Check]) -> None:
        """Add ``check()``'s line; an exception the layer raises propagates (a misuse always),
        or with ``raises=False`` becomes a failed line."""
        try:
            result.checks.append(check())
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - the layer's own failure, reported as its check's
            if raises:
                raise _note(e, f"check_layer({result.name}): raised in the {label} check")
            result.checks.append(Check(label, False, f"raised {type(e).__name__}: {e}", dtype=dtype))

    for dtype in dtypes:
        limit = _tolerance(tol, dtype)
        args = [_cast(t, dtype, device, w) for t, w in zip(inputs, wanted)]
        kw = {k: _cast(v, dtype, device) for k, v in kwargs.items()}
        rkw = {k: _cast(v, dtype, device) for k, v in ref_kwargs.items()}
        for strided in (False, True):
            label = str(dtype).replace("torch.", "") + (", non-contiguous" if strided else "")
            run(label, dtype, lambda: _compare(fn, reference, args, kw, rkw, names, dtype, limit, seed, strided))
    args64 = [_cast(t, torch.float64, device, w) for t, w in zip(inputs, wanted)]
    kw64 = {k: _cast(v, torch.float64, device) for k, v in kwargs.items()}
    if gradcheck:
        run("gradcheck", None, lambda: _gradcheck(fn, args64, kw64, names, wanted))
    if trace:
        run("one rule", None, lambda: _trace(fn, args64, kw64, seed))
    if raises and not result.ok:
        failed = [c for c in result.checks if not c.ok]
        raise AssertionError(f"check_layer: {result.name} against {result.reference}: {len(failed)} of "
                             f"{len(result.checks)} checks failed\n" + "\n".join(str(c) for c in failed))
    return result
