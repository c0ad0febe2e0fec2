"""A user's own Python file, imported by path, and the layers it declares for ``customnn check``.

    # my_layers.py
    LAYERS = [
        # (name, layer, reference, inputs): inputs() returns the layer's positional arguments
        ("group_norm", group_norm, group_norm_reference, lambda: (torch.randn(2, 6, 3, 3), w, b, 3)),
    ]

``customnn check --layers my_layers.py`` runs ``check_layer(layer, reference, *inputs())`` for each
entry (a fifth element, a dict, gives keyword arguments) and adds its rows to the table.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from customnn.core.errors import UserError


def load_file(path: str | Path) -> ModuleType:
    """Import the Python file ``path`` as a module of its own (its folder on ``sys.path`` while it
    runs, as ``python FILE.py`` has it); a missing file, or one that fails to import, is a
    one-line ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file" if not path.exists() else f"{path} is not a file")
    name = f"customnn_user_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"{path}: not a Python file that can be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up by name
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - whatever the file raises, one line naming it
        del sys.modules[name]
        line = getattr(e, "lineno", None)
        tb = e.__traceback__
        while tb is not None:  # the deepest line of the file itself
            if tb.tb_frame.f_code.co_filename == str(path):
                line = tb.tb_lineno
            tb = tb.tb_next
        where = f"{path}:{line}" if line else str(path)
        raise UserError(f"cannot import {where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


@dataclass
class DeclaredLayer:
    """One entry of a file's ``LAYERS``."""

    name: str
    fn: object
    reference: object
    inputs: object  # a callable returning the positional inputs
    kwargs: dict = field(default_factory=dict)


def declared_layers(path: str | Path) -> list[DeclaredLayer]:
    """The ``LAYERS`` of the file ``path`` (see the module docstring); ``UserError`` when the file
    declares none or an entry is not ``(name, layer, reference, inputs[, kwargs])``."""
    module = load_file(path)
    entries = getattr(module, "LAYERS", None)
    how = "declare them as LAYERS = [(name, layer, reference, inputs), ...] (docs/api.md, \"Checking your own layer\")"
    if not entries:
        raise UserError(f"{path} declares no layers: {how}")
    if not isinstance(entries, (list, tuple)):
        raise UserError(f"{path}: LAYERS is a {type(entries).__name__}, not a list; {how}")
    found = []
    for i, entry in enumerate(entries):
        ok = isinstance(entry, (list, tuple)) and len(entry) in (4, 5) and isinstance(entry[0], str)
        ok = ok and all(callable(x) for x in entry[1:4]) and (len(entry) == 4 or isinstance(entry[4], dict))
        if not ok:
            raise UserError(f"{path}: LAYERS[{i}] is not (name, layer, reference, inputs[, kwargs]) "
                            "with callables for layer, reference and inputs")
        found.append(DeclaredLayer(*entry))
    return found
