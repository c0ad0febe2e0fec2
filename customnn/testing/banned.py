"""The one rule as data: PyTorch's layer-level functions, which no customnn layer calls.

A layer in customnn is built from basic tensor operations (creation, arithmetic, reductions,
matrix products, views, indexing); PyTorch's own layers (``torch.nn``, ``torch.softmax``,
``Tensor.softmax``, ``torch.conv2d``, ``scaled_dot_product_attention``, ...) are the reference
it is checked against, never a part of it. The rule is checked twice, from this one list:

- statically, by ``tests/test_purity.py``, on the source of every file in ``customnn/``;
- at run time, by ``customnn.testing.check_layer``, on a layer's forward and backward, so that
  it holds for a layer in a user's own file too: ``BannedCallTracer`` records every call of a
  PyTorch function (``torch.overrides.TorchFunctionMode``: ``F.softmax``, ``torch.softmax``,
  ``x.softmax()``) and every operator that reaches PyTorch's kernels
  (``TorchDispatchMode``: ``aten._softmax``, ``aten.convolution``, ``aten.native_layer_norm``,
  which also catches a call that goes around the Python API).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# Layer-level functions PyTorch exports at the top level (and their Tensor-method twins).
BANNED_NAMES = frozenset({
    "softmax", "log_softmax", "softmin",
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "convolution", "_convolution", "conv_tbc",
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "max_unpool2d", "lp_pool2d",
    "layer_norm", "native_layer_norm", "batch_norm", "native_batch_norm", "group_norm",
    "instance_norm", "rms_norm",
    "embedding", "embedding_bag",
    "dropout", "dropout_", "native_dropout", "alpha_dropout", "feature_dropout", "feature_alpha_dropout",
    "relu", "relu_", "relu6", "gelu", "silu", "selu", "celu", "elu", "rrelu", "prelu", "leaky_relu",
    "hardtanh", "threshold", "threshold_", "mish", "hardswish", "softplus",
    "scaled_dot_product_attention", "_scaled_dot_product_attention", "multi_head_attention_forward",
    "cross_entropy", "nll_loss", "binary_cross_entropy", "mse_loss", "kl_div",
    "im2col", "col2im", "linear", "bilinear", "pad", "one_hot",
})
# Whole namespaces that are off limits.
BANNED_MODULES = ("torch.nn", "torch.optim", "torch._C._nn", "torch.ops.aten", "torch._refs",
                  "torch._decomp", "torch.special.softmax", "torch.special.log_softmax")

# --- at run time ---------------------------------------------------------------------------------

# The name parts of the banned names: an aten operator is one of PyTorch's layers when a banned
# name's parts appear in a row in its own (``native_layer_norm_backward`` holds ``layer_norm``,
# ``_softmax_backward_data`` holds ``softmax``, ``cudnn_convolution`` holds ``convolution``).
_BANNED_PARTS = [tuple(p for p in name.split("_") if p) for name in BANNED_NAMES]


def banned_operator(name: str) -> bool:
    """Whether the aten operator ``name`` (``"_softmax"``, ``"mm"``) is one of PyTorch's layers."""
    if "scaled_dot_product" in name:  # _scaled_dot_product_flash_attention_for_cpu and its kin
        return True
    parts = tuple(p for p in name.split("_") if p)
    return any(parts[i:i + len(b)] == b for b in _BANNED_PARTS for i in range(len(parts) - len(b) + 1))


def banned_function(func) -> str | None:
    """The readable name of ``func`` if it is one of PyTorch's layer-level functions, else None:
    ``torch.nn.functional.softmax``, ``torch.softmax``, ``Tensor.softmax``, ``torch.ops.aten._softmax``."""
    name = getattr(func, "__name__", "") or ""
    module = (getattr(func, "__module__", None) or "").replace("torch._C._special", "torch.special")
    qualname = getattr(func, "__qualname__", name) or name
    if module.startswith("torch._ops."):  # torch.ops.aten.<op>: judged by the operator's name
        op = qualname.rsplit(".", 1)[-1].split("::")[-1]
        return f"torch.ops.aten.{op}" if banned_operator(op) else None
    plain = name.removeprefix("special_")
    full = f"{module}.{plain}" if module else plain
    if not (plain in BANNED_NAMES or any(full == m or full.startswith(m + ".") for m in BANNED_MODULES)):
        return None
    return readable_name(func)


def readable_name(func) -> str:
    """``torch.softmax``, ``Tensor.softmax``, ``torch.nn.functional.softmax``, or a function's own name."""
    name = getattr(func, "__name__", None) or type(func).__name__
    module = getattr(func, "__module__", None) or ""
    qualname = getattr(func, "__qualname__", name) or name
    name = name.removeprefix("special_") if module == "torch._C._special" else name
    if qualname.startswith(("TensorBase.", "Tensor.")):
        return f"Tensor.{name}"
    if qualname.startswith("_VariableFunctionsClass."):
        return f"torch.{name}"
    if module == "torch._C._special":
        return f"torch.special.{name}"
    if module == "torch._C._nn":  # F.linear, F.gelu, F.scaled_dot_product_attention live here
        return f"torch.nn.functional.{name}"
    return f"{module}.{name}" if module.startswith("torch") else qualname


@dataclass
class BannedCall:
    """One call of a PyTorch layer: its name, ``"forward"`` or ``"backward"``, and the line of
    code outside torch that made it (None where autograd's engine made it, as the derivative of
    a PyTorch layer called in forward)."""

    name: str
    phase: str
    site: str | None

    def __str__(self) -> str:
        return f"{self.name} in {self.phase}" + (f" ({self.site})" if self.site else "")


_TORCH_DIR = os.path.dirname(torch.__file__)
_THIS = os.path.abspath(__file__)
_HERE = os.path.dirname(_THIS)


def _call_site() -> str | None:
    """``file.py:12 in backward`` for the innermost frame outside torch, or None when that frame
    is this package's (the call came from autograd's engine, not from the layer's code)."""
    frame = sys._getframe(1)
    while frame is not None and (frame.f_code.co_filename.startswith(_TORCH_DIR)
                                 or os.path.abspath(frame.f_code.co_filename) == _THIS):
        frame = frame.f_back
    if frame is None or os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _HERE:
        return None
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} in {frame.f_code.co_name}"


class _FunctionTracer(TorchFunctionMode):
    def __init__(self, tracer: BannedCallTracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = banned_function(func)
        if name is None:
            return func(*args, **(kwargs or {}))
        self.tracer.record(name)
        self.tracer.inside += 1  # the aten operators this call reaches are the same call
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.tracer.inside -= 1


class _OperatorTracer(TorchDispatchMode):
    def __init__(self, tracer: BannedCallTracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if banned_operator(name) and not self.tracer.inside:
            self.tracer.record(f"aten.{name}")
        return func(*args, **(kwargs or {}))


class BannedCallTracer:
    """Records PyTorch layer calls while active: ``with tracer.phase("forward"): ...``.

    A Python-level call (``F.softmax``) reaches its aten operator (``aten._softmax``) too; only
    the first is kept. The backward pass must be run inside a phase by
    ``torch.autograd.graph``'s engine entry (``run_backward`` below): ``Tensor.backward`` and
    ``torch.autograd.grad`` are themselves PyTorch functions, run with the function tracer off."""

    def __init__(self) -> None:
        self.calls: list[BannedCall] = []
        self.inside = 0  # > 0 while a Python-level banned call runs
        self._phase = "forward"

    def record(self, name: str) -> None:
        self.calls.append(BannedCall(name, self._phase, _call_site()))

    @contextlib.contextmanager
    def phase(self, phase: str):
        """Record, as made in ``phase`` ("forward" or "backward"), the calls made inside."""
        self._phase = phase
        with _FunctionTracer(self), _OperatorTracer(self):
            yield self


def run_backward(outputs, douts, inputs) -> tuple:
    """The gradients of ``outputs`` (with upstream gradients ``douts``) with respect to
    ``inputs``, None for an input they do not reach: ``torch.autograd.grad``, but entered below
    its torch-function dispatch, so that a ``TorchFunctionMode`` stays active in the backward."""
    try:
        from torch.autograd.graph import _engine_run_backward as run
    except ImportError:  # older PyTorch: the engine itself
        run = torch.autograd.Variable._execution_engine.run_backward
    return run(tuple(outputs), tuple(douts), False, False, tuple(inputs),
               allow_unreachable=True, accumulate_grad=False)
