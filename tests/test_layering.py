"""The code's layers: every import in ``customnn/`` points down, there is no import cycle, and no
module is over 400 lines (docs/architecture.md).

    0 basic parts    core/ (errors, fileio, runtime, validate, memory, module, init), ops/, optim/, testing
    1                models/, data/
    2                train/ (the engine, the tasks, the checkpoint format)
    3 commands       commands/ (the parser, cli.py, among them), __main__ (and only they may use
                     customnn_ref, the reference)

Imports inside functions count as much as those at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "customnn"
MAX_LINES = 400


def layer_of(module: str) -> int:
    """The layer of a dotted module name inside customnn (``customnn.train.engine`` -> 2)."""
    parts = module.split(".")[1:]
    top = parts[0] if parts else "__init__"
    if top in ("models", "data"):
        return 1
    if top == "train":
        return 2
    if top in ("commands", "__main__"):
        return 3
    return 0


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, name: str | None = None) -> set[str]:
    """Every module ``path`` (module ``name``) imports, at any depth of its code, as absolute dotted names."""
    tree = ast.parse(path.read_text())
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from customnn import ops`
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def internal_imports(path: Path) -> set[str]:
    """The customnn modules ``path`` imports (a name that is not a module, e.g. a class, is dropped)."""
    return {m for m in imports_of(path) if m in MODULES and m != module_name(path)}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_only(module):
    path = MODULES[module]
    upward = [m for m in internal_imports(path) if layer_of(m) > layer_of(module)]
    assert not upward, f"{module} (layer {layer_of(module)}) imports from a layer above: {upward}"
    if layer_of(module) < 3:
        ref = [m for m in imports_of(path) if m == "customnn_ref" or m.startswith("customnn_ref.")]
        assert not ref, f"{module} imports the reference package {ref}: only commands may"


def test_no_import_cycles():
    graph = {m: {i for i in internal_imports(p) if i != m.rsplit(".", 1)[0]} for m, p in MODULES.items()}
    # A package's __init__ importing its own submodules is how Python packages work: not a cycle.
    graph = {m: {i for i in deps if not i.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_400_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module}: {lines} lines"


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import torch\n\ndef f():\n    from customnn.train import engine\n    from ..ops import conv\n")
    found = imports_of(probe, "customnn.data.probe")
    assert {"customnn.train.engine", "customnn.ops.conv"} <= found
    assert layer_of("customnn.train.engine") == 2 > layer_of("customnn.data.probe") == 1


def test_the_command_line_starts_without_torchdynamo():
    """Every command's start (the package and its whole parser) leaves TorchDynamo unimported:
    importing it takes about 0.8 s, which only ``--compile`` needs (``customnn.models.gpt``
    makes its compiled-path wrapper on first use)."""
    import subprocess
    import sys

    code = ("import sys; from customnn.commands.cli import build_parser; build_parser(); "
            "import customnn.models.gpt, customnn.train.engine, customnn.train.loading; "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# A task's own modules: the one place outside models/ that names its built-in model (its default).
TASK_MODULES = {"cnn": {"customnn.train.cnn", "customnn.train.cnn_config"},
                "gpt": {"customnn.train.gpt", "customnn.train.gpt_config", "customnn.train.gpt_checkpoint",
                        "customnn.train.nanogpt_rng"}}


def test_no_table_outside_a_model_s_own_files_names_a_model():
    """The engine, the loaders, the memory check and the commands reach a model only through its
    task (``customnn/train/tasks.py``): only the task's own modules import its built-in model."""
    for name, allowed in TASK_MODULES.items():
        model = f"customnn.models.{name}"
        importers = {m for m, p in MODULES.items() if model in imports_of(p) or any(
            i.startswith(model + ".") for i in imports_of(p))}
        strays = sorted(m for m in importers if not m.startswith("customnn.models") and m not in allowed)
        assert not strays, f"{strays} import {model}; reach it through its task (customnn/train/tasks.py)"
