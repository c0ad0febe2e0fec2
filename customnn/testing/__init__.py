"""Checking a layer of one's own: ``check_layer`` and what it is built from.

    from customnn.testing import check_layer
    check_layer(my_layer, my_layer_reference, x, weight, bias)   # AssertionError if anything differs

- ``check_layer(fn, reference, *inputs, **kwargs)`` (harness.py): forward and every gradient
  against the reference in float64 and float32, contiguous and not, ``gradcheck``, and the one
  rule traced at run time; returns a printable ``LayerCheck``;
- ``compare`` / ``diffs`` / ``max_rel_err`` / ``TOL`` (compare.py): one comparison, measured, as
  ``customnn check`` and the test suite use it;
- ``BANNED_NAMES`` / ``BANNED_MODULES`` (banned.py): PyTorch's layer-level functions, the list
  ``tests/test_purity.py`` enforces on customnn's source and ``check_layer`` at run time;
- ``load_file`` / ``declared_layers`` (files.py): a user's file by path, and the ``LAYERS`` it
  declares for ``customnn check --layers FILE.py``.

The no-grad fast path a layer's function calls is ``customnn.ops.apply``.
"""

from customnn.testing.banned import BANNED_MODULES, BANNED_NAMES, BannedCallTracer, banned_function, banned_operator
from customnn.testing.compare import TOL, Diff, compare, diffs, max_rel_err
from customnn.testing.files import DeclaredLayer, declared_layers, load_file
from customnn.testing.harness import Check, LayerCheck, check_layer

__all__ = ["check_layer", "LayerCheck", "Check", "compare", "diffs", "max_rel_err", "Diff", "TOL",
           "BANNED_NAMES", "BANNED_MODULES", "BannedCallTracer", "banned_function", "banned_operator",
           "load_file", "declared_layers", "DeclaredLayer"]
