"""``customnn check --layers FILE.py``: the layers a user's file declares, as rows of the table.

The file declares ``LAYERS = [(name, layer, reference, inputs), ...]`` (``customnn.testing.files``
says how); each entry is run through ``customnn.testing.check_layer`` and gives one row per dtype,
against "declared" (the reference the file names): the largest forward error, the largest error
of each gradient over the contiguous and non-contiguous runs, and a failed gradcheck or a
PyTorch layer call (the one rule), which make every row of the layer FAIL.
"""

from __future__ import annotations

import re

import torch

from customnn.testing import check_layer, declared_layers


def _grad_key(what: str) -> str:
    """``gradient of `weight``` -> ``dweight``, as the table's built-in rows name gradients."""
    m = re.fullmatch(r"gradient of `(.+)`", what)
    return f"d{m.group(1)}" if m else "d" + what.removeprefix("gradient of ").replace(" ", "")


def declared(paths: list[str]) -> list:
    """Every layer the files in ``paths`` declare, read before any check runs, so that a file that
    is missing, fails to import or declares nothing stops the command at once (``UserError``,
    exit 2)."""
    return [layer for path in paths for layer in declared_layers(path)]


def user_rows(layers: list, dtypes: list[torch.dtype], device: torch.device, seed: int, Row) -> list:
    """One ``Row`` (check.py's) per declared layer and dtype."""
    rows = []
    for layer in layers:
        try:
            inputs = tuple(layer.inputs())
            result = check_layer(layer.fn, layer.reference, *inputs, dtypes=tuple(dtypes), device=device,
                                 seed=seed, raises=False, **layer.kwargs)
        except Exception as exc:  # noqa: BLE001 - a misuse or a crash is this layer's FAIL; the table goes on
            rows += [Row(layer.name, "declared", dtype, error=f"{type(exc).__name__}: {exc}") for dtype in dtypes]
            continue
        others = [c for c in result.checks if c.dtype is None and not c.ok]  # gradcheck, the one rule
        for dtype in dtypes:
            row = Row(layer.name, "declared", dtype)
            for what, err in result.errors(dtype).items():
                if what.startswith("output"):
                    row.forward = max(row.forward, err)
                else:
                    row.grads[_grad_key(what)] = err
            raised = [c for c in result.checks if c.dtype == dtype and not c.diffs and not c.ok]
            problems = raised + others
            if problems:
                row.error = "; ".join(f"{c.label}: {c.detail}" for c in problems)
            rows.append(row)
    return rows
