"""The comparison harness is ``customnn.testing`` (``customnn_ref/oracle.py`` adds the tests'
one-comparison assertion), shared with ``customnn check``; this module only re-exports it for
test files that import ``oracle``."""

from customnn_ref.oracle import TOL, check_layer, compare, max_rel_err  # noqa: F401
