"""customnn: deep learning built by hand from basic tensor operations.

Every layer (convolution, pooling, activations, linear, embedding, normalisation,
attention, softmax, the loss) has a forward and a hand-written backward on plain
PyTorch tensors (``customnn.ops``), checked against PyTorch's own layers in the
tests. Two models are built from them: a CNN for MNIST (``customnn.models.cnn``)
and a decoder-only Transformer for text (``customnn.models.gpt``).

Start with ``customnn demo`` or ``customnn check``; see README.md.
"""

__version__ = "0.1.0"
