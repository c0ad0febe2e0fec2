"""How the layers call their ``torch.autograd.Function``: ``apply(Function, *args)``, public as
``customnn.ops.apply`` (a layer of one's own uses it the same way).

Where a gradient may flow (grad mode on and some tensor argument requiring grad) autograd
records the node whose ``backward`` is the hand-written one. Where none can (under
``torch.no_grad()``, or on inputs that require no grad: evaluation, generation), it runs
``Function.forward`` alone on a stand-in context that keeps nothing: the same arithmetic,
without autograd's bookkeeping, which costs a few microseconds a call and is most of the time
of a token generated with the KV cache by a small GPT (tiny tensors, some 40 calls).

Recording goes straight to autograd's C++ ``apply`` (``_FunctionBase.apply``, what
``Function.apply`` ends in), skipping ``Function.apply``'s Python prologue: that prologue binds
default arguments for a ``setup_context`` (none of the layers has one) and unwraps functorch
wrappers. While TorchDynamo traces or a functorch transform (``torch.func.grad``, ``vmap``) is
active, ``Function.apply`` itself is called, as those machineries expect.
"""

from __future__ import annotations

import torch

_are_transforms_active = torch._C._are_functorch_transforms_active
_is_compiling = torch.compiler.is_compiling
_is_grad_enabled = torch.is_grad_enabled
_Tensor = torch.Tensor


class _NoGradContext:
    """The ``ctx`` of a forward that no backward will follow: nothing needs a gradient, and what
    the forward saves for backward is dropped."""

    def __init__(self, n_inputs: int) -> None:
        self.needs_input_grad = (False,) * n_inputs

    def save_for_backward(self, *tensors) -> None:
        pass

    def mark_non_differentiable(self, *tensors) -> None:
        pass

    def mark_dirty(self, *tensors) -> None:
        pass

    def set_materialize_grads(self, value: bool) -> None:
        pass


def record(function: type[torch.autograd.Function], *args):
    """``function.apply(*args)``: the forward, with a node of its backward in autograd's graph."""
    if _is_compiling() or _are_transforms_active():
        return function.apply(*args)
    return super(torch.autograd.Function, function).apply(*args)  # _FunctionBase.apply, in C++


def apply(function: type[torch.autograd.Function], *args):
    """``function.apply(*args)``, or ``function.forward`` alone where no gradient can flow."""
    if _is_grad_enabled():
        for a in args:
            if isinstance(a, _Tensor) and a.requires_grad:
                return record(function, *args)
    return function.forward(_NoGradContext(len(args)), *args)
