"""PyTorch's own layers and models as the reference for customnn: the oracle, kept apart.

The library ``customnn`` never uses ``torch.nn``, ``torch.optim`` or PyTorch's layer-level
functions (tests/test_purity.py checks every file under ``customnn/``). Yet a learner should be
able to see, from the command line, that each hand-written layer equals PyTorch's, and the
benchmarks need PyTorch's layers to time against. That reference code lives here, outside the
library: ``check`` (the ``customnn check`` command) compares every layer with
``torch.nn.functional``.
"""
