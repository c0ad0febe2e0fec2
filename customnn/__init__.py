"""customnn: deep learning built by hand from basic tensor operations.

Every layer (convolution, pooling, activations, linear, embedding, normalisation, attention,
softmax, the loss) has a forward and a hand-written backward on plain PyTorch tensors, checked
against PyTorch's own layers. The public API, where a PyTorch user looks for it:

    customnn.ops        the layers (``ops.conv2d``, ``ops.attention``, ... and their references)
    customnn.Module     a model's base class: parameters, buffers, state dicts, train/eval
    customnn.init       parameter initialisers
    customnn.optim      SGD, AdamW, Muon, learning-rate schedules, gradient clipping
    customnn.data       MNIST, text corpora, the data directory
    customnn.models     the two built-in models, written as a user writes one
    customnn.train      the training engine: ``customnn.train.fit(MyNet, task="mnist")``
    customnn.testing    ``check_layer``: a layer of your own against a reference

Start with ``customnn demo`` or ``customnn check``; docs/api.md lists every public name.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("ops", "optim", "data", "models", "train", "testing")


def __getattr__(name: str):
    """``customnn.Module``, ``customnn.init`` and the subpackages, imported on first use so that
    ``import customnn`` (and the command line's start) stays cheap."""
    if name == "Module":
        from customnn.core.module import Module
        return Module
    if name == "init":
        return importlib.import_module("customnn.core.init")
    if name in _SUBMODULES:
        return importlib.import_module(f"customnn.{name}")
    raise AttributeError(f"module 'customnn' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), "Module", "init", *_SUBMODULES])
