"""How the layers call their ``torch.autograd.Function``: ``apply(Function, *args)``, public as
``customnn.ops.apply`` (a layer of one's own uses it the same way).

Where a gradient may flow (grad mode on and some tensor argument requiring grad) this is
``Function.apply(*args)``: autograd records the node whose ``backward`` is the hand-written one.
Where none can (under ``torch.no_grad()``, or on inputs that require no grad: evaluation,
generation), it runs ``Function.forward`` alone on a stand-in context that keeps nothing: the
same arithmetic, without autograd's bookkeeping, which costs about 3 us a call and is most of
the time of a token generated with the KV cache by a small GPT (tiny tensors, some 40 calls).
"""

from __future__ import annotations

import torch


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


def apply(function: type[torch.autograd.Function], *args):
    """``function.apply(*args)``, or ``function.forward`` alone where no gradient can flow."""
    if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return function.apply(*args)
    return function.forward(_NoGradContext(len(args)), *args)
