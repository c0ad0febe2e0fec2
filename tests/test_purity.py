"""The one rule, checked automatically: nothing in customnn/ uses torch.nn, torch.optim, or
PyTorch's layer-level functions (``customnn/testing/banned.py`` lists them: the one list, which
``customnn.testing.check_layer`` also enforces at run time on a user's layer). Each violation is reported with its
file and line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from customnn.testing.banned import BANNED_MODULES, BANNED_NAMES

PACKAGE = Path(__file__).resolve().parents[1] / "customnn"

BANNED_LIST_FILE = "customnn/testing/banned.py"  # the list itself holds the names as strings
# Method calls on these names are our own layers (``ops.softmax(x)``), not PyTorch's.
ALLOWED_BASES = {"self", "cls"}


def dotted(node: ast.AST) -> str | None:
    """``torch.nn.functional`` for an Attribute chain rooted at a Name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def violations(source: str, filename: str) -> list[str]:
    tree = ast.parse(source, filename)
    torch_aliases = {"torch"}
    own_names = set(ALLOWED_BASES)  # names bound to customnn's own modules and functions
    found = []

    def bad(node, what):
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "torch":
                    torch_aliases.add(a.asname or "torch")
                if any(a.name == m or a.name.startswith(m + ".") for m in BANNED_MODULES):
                    bad(node, f"import {a.name}")
                if a.name.startswith("customnn"):
                    own_names.add((a.asname or a.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module:
            mod = node.module
            if mod.startswith("customnn") or node.level:
                own_names.update(a.asname or a.name for a in node.names)
            for a in node.names:
                full = f"{mod}.{a.name}"
                if any(full == m or full.startswith(m + ".") or mod == m or mod.startswith(m + ".")
                       for m in BANNED_MODULES):
                    bad(node, f"from {mod} import {a.name}")
                elif mod == "torch" and a.name in BANNED_NAMES:
                    bad(node, f"from torch import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.level:
            own_names.update(a.asname or a.name for a in node.names)

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = dotted(node)
            if name is not None:
                root, _, rest = name.partition(".")
                if root in torch_aliases:
                    full = "torch." + rest if rest else "torch"
                    if any(full == m or full.startswith(m + ".") for m in BANNED_MODULES):
                        bad(node, full)
                        continue
                    if rest.split(".")[-1] in BANNED_NAMES:
                        bad(node, full)
                        continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in BANNED_NAMES:
            # ``x.softmax(-1)``: a Tensor method twin of a layer-level function. A call on one of
            # our own names (``ops.softmax(x)``, ``self.dropout(x)``) is our layer, not PyTorch's;
            # a plain attribute such as ``config.dropout`` is not a call and is fine.
            base = dotted(node.func.value)
            root = base.split(".")[0] if base else None
            if root not in torch_aliases and root not in own_names:
                bad(node, f"method .{node.func.attr}() (a PyTorch layer-level function)")
        elif (isinstance(node, ast.Constant) and node.value == "scaled_dot_product_attention"
              and filename != BANNED_LIST_FILE):
            bad(node, "scaled_dot_product_attention by name")
    return found


def test_purity_checker_catches_each_kind_of_use():
    src = (
        "import torch\nimport torch.nn as nn\nfrom torch.nn import functional as F\n"
        "from torch import optim\nimport torch.optim\n"
        "a = torch.softmax(x, -1)\nb = x.softmax(-1)\nc = torch.nn.functional.gelu(x)\n"
        "d = torch.conv2d(x, w)\ne = torch.ops.aten.relu(x)\nf = x.relu()\n"
        "g = torch._C._nn.gelu(x)\nh = t.layer_norm(x, (3,))\n"
    )
    found = violations(src, "example.py")
    lines = sorted({int(v.split(":")[1]) for v in found})
    assert lines == list(range(2, 14)), found


def test_purity_checker_allows_our_own_layers_and_basic_ops():
    src = (
        "import torch\nfrom customnn import ops\nfrom customnn.ops.loss import softmax\n"
        "y = ops.softmax(x, -1)\nz = softmax(x)\nw = torch.exp(x - x.amax(-1, keepdim=True))\n"
        "v = x.unfold(2, 3, 1)\nu = torch.matmul(a, b)\nself.dropout(x)\np = config.dropout * 2\n"
    )
    assert violations(src, "example.py") == []


def test_customnn_uses_no_torch_nn_optim_or_layer_functions():
    files = sorted(PACKAGE.rglob("*.py"))
    assert files, f"no sources found under {PACKAGE}"
    found = []
    for path in files:
        found += violations(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    if found:
        pytest.fail("the one rule is broken:\n" + "\n".join(found))
