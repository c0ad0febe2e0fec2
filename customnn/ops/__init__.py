"""The layer library: each layer's forward and hand-written backward.

Every function here takes and returns ``torch.Tensor``s and matches the
``torch.nn.functional`` function of the same name (argument names and order),
except ``linear``, whose weight is ``(in_features, out_features)`` as in the seed.
Each one is a ``torch.autograd.Function`` whose ``backward`` is written by hand from
basic tensor operations; autograd's engine only chains them together.

    from customnn import ops
    y = ops.conv2d(x, w, b, stride=1, padding=2)

The readable loop versions (``*_reference``) live in ``reference.py``: they are how a
reader checks that the fast versions compute the same thing.
"""

from customnn.ops.activation import gelu, relu
from customnn.ops.attention import attention
from customnn.ops.conv import conv2d, pad2d
from customnn.ops.dropout import dropout
from customnn.ops.linear import embedding, flatten, linear
from customnn.ops.loss import cross_entropy, log_softmax, softmax
from customnn.ops.norm import batch_norm, layer_norm
from customnn.ops.pool import avg_pool2d, max_pool2d
from customnn.ops.reference import attention_reference, conv2d_reference, max_pool2d_reference

__all__ = [
    "attention",
    "attention_reference",
    "avg_pool2d",
    "batch_norm",
    "conv2d",
    "conv2d_reference",
    "cross_entropy",
    "dropout",
    "embedding",
    "flatten",
    "gelu",
    "layer_norm",
    "linear",
    "log_softmax",
    "max_pool2d",
    "max_pool2d_reference",
    "pad2d",
    "relu",
    "softmax",
]
