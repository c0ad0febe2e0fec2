"""The layers under ``torch.autocast``: which dtype each one computes in, in one table.

PyTorch's autocast (``torch.amp``, "Autocast Op Reference") casts the inputs of each of its
layers by a per-device policy; ours follow the same policy, so that a model built from
``customnn.ops`` gets the dtypes a model built from ``torch.nn.functional`` gets:

- ``LOWER``: matrix products (``linear``, ``conv2d``, ``attention``) run in the autocast dtype
  (``torch.get_autocast_dtype(device)``, bfloat16 or float16): every floating input is cast to it,
  and so is the output.
- ``FLOAT32``: losses (and on CUDA softmax, log_softmax, layer_norm, rms_norm) run in float32 and
  return float32, whatever their inputs' dtypes.
- ``INSIDE``: normalisations and softmax on the CPU, and ``rope``, compute in float32 and return
  the dtype of their first input, as PyTorch's CPU kernels do (float32 statistics, a bfloat16
  result for a bfloat16 input; float32 weights with a bfloat16 input are what autocast
  training gives them).
- every other layer (elementwise, pooling, padding, dropout, embedding) runs in its input's dtype.

Probed on torch 2.13's CPU autocast, layer by layer (tests/test_autocast.py checks each result's
dtype against PyTorch's on every device present). The casts are ``Tensor.to``, recorded by
autograd, so the gradient of each input comes back in that input's own dtype (float32 master
weights get float32 gradients). The layer itself then runs with autocast turned off, so that its
own products and reductions stay in the dtypes chosen here.

Each public layer starts with one line:

    if autocast_on(x):
        return autocast_call("linear", linear, x, weight, bias)

which calls the layer again with its inputs cast and its device's autocast off; outside
autocast the check costs one call (``_is_any_autocast_enabled``, about 0.1 us).
"""

from __future__ import annotations

import torch

LOWER, FLOAT32, INSIDE = "lower", "float32", "inside"

# op -> (policy, how many leading positional arguments it casts); ops not named here run in
# their inputs' dtypes. batch_norm casts x, weight, bias, never its running statistics (they are
# updated in place); cross_entropy casts logits and a probability target (an integer target is
# left alone), and its ``weight`` keyword.
_COMMON = {"linear": (LOWER, 3), "conv2d": (LOWER, 3), "attention": (LOWER, 3),
           "cross_entropy": (FLOAT32, 2), "rope": (INSIDE, 3)}
POLICY = {
    "cpu": {**_COMMON, "softmax": (INSIDE, 1), "log_softmax": (INSIDE, 1), "layer_norm": (INSIDE, 3),
            "rms_norm": (INSIDE, 2), "batch_norm": (INSIDE, 3)},
    "cuda": {**_COMMON, "softmax": (FLOAT32, 1), "log_softmax": (FLOAT32, 1), "layer_norm": (FLOAT32, 3),
             "rms_norm": (FLOAT32, 2), "batch_norm": (INSIDE, 3)},
}
_CAST_KEYWORDS = ("weight", "bias", "attn_mask")  # keyword tensors cast with the positional ones

_any_enabled = getattr(torch._C, "_is_any_autocast_enabled", None)


def autocast_on(x) -> bool:
    """Whether autocast is on for the device of ``x`` (a layer's first argument); the first test,
    autocast on for any device, is the one made outside autocast. A layer called again by
    ``autocast_call`` finds its device's autocast off."""
    if _any_enabled is not None and not torch.compiler.is_compiling() and not _any_enabled():
        return False
    return isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type)


def _cast(t, dtype):
    if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != dtype:
        return t.to(dtype)
    return t


def autocast_call(op: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with its inputs cast as ``POLICY`` says for ``op`` on the first
    argument's device, run with that device's autocast off; an ``INSIDE`` op's tensor result is
    cast back to its first argument's dtype."""
    x = args[0]
    device = x.device.type
    policy, n = POLICY.get(device, POLICY["cuda"]).get(op, (None, 0))
    if policy is not None:
        dtype = torch.get_autocast_dtype(device) if policy == LOWER else torch.float32
        args = tuple(_cast(a, dtype) if i < n else a for i, a in enumerate(args))
        kwargs = {k: _cast(v, dtype) if k in _CAST_KEYWORDS else v for k, v in kwargs.items()}
    out = _without_autocast(device, fn, args, kwargs)
    if policy == INSIDE and isinstance(out, torch.Tensor) and out.dtype != x.dtype and x.is_floating_point():
        out = out.to(x.dtype)
    return out


def _without_autocast(device: str, fn, args, kwargs):
    with torch.autocast(device, enabled=False):
        return fn(*args, **kwargs)
