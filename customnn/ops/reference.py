"""Where each layer's readable reference lives.

Every layer in ``customnn.ops`` has a reference with the same arguments, named
``<layer>_reference``: the definition written as plain tensor math (or explicit loops over
output pixels), obviously right rather than fast, with no hand-written backward: autograd
differentiates it, which makes it an independent check of the fast layer's forward AND its
backward (tests/test_reference.py, and the "reference" rows of ``customnn check``).

    from customnn import ops
    y = ops.conv2d_reference(x, w, b, stride=1, padding=2)   # equals ops.conv2d and F.conv2d

Each reference sits in its layer's file, just above the fast version:

    pad.py         pad2d_reference (an index per output position)
    conv.py        conv2d_reference (a loop over output pixels and groups)
    pool.py        max_pool2d_reference (a loop over output pixels, in _pool_geometry.py)
    avg_pool.py    avg_pool2d_reference (the same loop, and each window's divisor by its definition)
    activation.py  relu_reference, gelu_reference, silu_reference
    linear.py      linear_reference, flatten_reference, embedding_reference (one-hot @ table)
    loss.py        softmax_reference, log_softmax_reference, cross_entropy_reference
    norm.py        layer_norm_reference, batch_norm_reference, rms_norm_reference
    rope.py        rope_reference (the rotation through autograd)
    dropout.py     dropout_reference (draws the same mask as dropout from the same generator)
    attention.py   attention_reference (a loop over query positions)

They are all imported here too, so ``customnn.ops.reference`` holds the whole set.
"""

from __future__ import annotations

from customnn.ops.activation import gelu_reference, relu_reference, silu_reference
from customnn.ops.attention import attention_reference
from customnn.ops.conv import conv2d_reference, pad2d_reference
from customnn.ops.dropout import dropout_reference
from customnn.ops.linear import embedding_reference, flatten_reference, linear_reference
from customnn.ops.loss import cross_entropy_reference, log_softmax_reference, softmax_reference
from customnn.ops.norm import batch_norm_reference, layer_norm_reference, rms_norm_reference
from customnn.ops.pool import avg_pool2d_reference, max_pool2d_reference
from customnn.ops.rope import rope_reference

__all__ = [
    "attention_reference", "avg_pool2d_reference", "batch_norm_reference", "conv2d_reference",
    "cross_entropy_reference", "dropout_reference", "embedding_reference", "flatten_reference",
    "gelu_reference", "layer_norm_reference", "linear_reference", "log_softmax_reference",
    "max_pool2d_reference", "pad2d_reference", "relu_reference", "rms_norm_reference", "rope_reference",
    "silu_reference", "softmax_reference",
]
