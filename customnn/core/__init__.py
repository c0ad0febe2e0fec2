"""The basic parts every other part stands on: ``Module`` and parameter initialisers
(``module.py``, ``init.py``), the one user-facing error (``errors.py``), files written atomically
(``fileio.py``), the process a run lives in (``runtime.py``), argument checks (``validate.py``) and
memory estimates (``memory.py``). The public names are re-exported as ``customnn.Module`` and
``customnn.init``.
"""
