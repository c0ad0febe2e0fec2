"""The layer library: each layer's forward and hand-written backward, and its readable reference.

Every function here takes and returns ``torch.Tensor``s and matches the
``torch.nn.functional`` function of the same name (argument names and order),
except ``linear``, whose weight is ``(in_features, out_features)`` as in the seed.
Each one is a ``torch.autograd.Function`` whose ``backward`` is written by hand from
basic tensor operations; autograd's engine only chains them together.

    from customnn import ops
    y = ops.conv2d(x, w, b, stride=1, padding=2)
    y_ref = ops.conv2d_reference(x, w, b, stride=1, padding=2)   # the same numbers, written plainly

Every layer ``<layer>`` has a ``<layer>_reference`` with the same arguments: the definition as
plain tensor math or explicit loops, differentiated by autograd, against which the fast
version is tested. Each sits in its layer's file just above the fast version (``reference.py``
lists where; ``attention_reference``, which takes ``attn_mask``, is attention.py's).

``apply(Function, *args)`` is how each layer calls its ``torch.autograd.Function``: the Function
(with its hand-written backward recorded) where a gradient may flow, its forward alone where none
can (evaluation, generation). A layer of one's own calls it the same way (docs/api.md).
"""

from customnn.ops._apply import apply
from customnn.ops.activation import gelu, gelu_reference, relu, relu_reference, silu, silu_reference
from customnn.ops.attention import attention, attention_reference
from customnn.ops.conv import conv2d, conv2d_reference, pad2d, pad2d_reference
from customnn.ops.dropout import dropout, dropout_reference
from customnn.ops.linear import (embedding, embedding_reference, flatten, flatten_reference, linear,
                                 linear_reference)
from customnn.ops.loss import (cross_entropy, cross_entropy_reference, log_softmax, log_softmax_reference,
                               softmax, softmax_reference)
from customnn.ops.norm import batch_norm, batch_norm_reference, layer_norm, layer_norm_reference
from customnn.ops.norm import rms_norm, rms_norm_reference
from customnn.ops.pool import avg_pool2d, avg_pool2d_reference, max_pool2d, max_pool2d_reference
from customnn.ops.rope import rope, rope_reference, rope_tables

# Every public layer; each has a ``<layer>_reference`` (tests/test_reference.py checks both lists).
LAYERS = ("conv2d", "pad2d", "max_pool2d", "avg_pool2d", "relu", "gelu", "flatten", "linear", "embedding",
          "softmax", "log_softmax", "cross_entropy", "layer_norm", "batch_norm", "dropout", "attention",
          "rms_norm", "rope", "silu")

__all__ = [*LAYERS, *(f"{name}_reference" for name in LAYERS), "LAYERS", "rope_tables", "apply"]
