"""A learner's own layer: examples/group_norm.py runs, and ``customnn check --layers FILE.py`` adds
its rows to the table (a wrong layer FAILs, exit 1); a file that is missing, fails to import or
declares nothing is a one-line error, exit 2."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from customnn.commands import cli
from customnn_ref import check

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "group_norm.py"


@pytest.fixture
def no_builtin_rows(monkeypatch):
    """Only the user's rows: the built-in ones are tests/test_check.py's."""
    monkeypatch.setattr(check, "check_layers", lambda dtypes, device, seed=0: [])


def test_the_group_norm_example_runs_and_passes_its_checks(capsys):
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert out.count("check_layer: group_norm against") == 2, out  # its readable reference and F.group_norm
    assert "FAIL" not in out and out.count("one rule") == 2, out


def test_check_layers_adds_the_example_rows(capsys, no_builtin_rows):
    code = cli.main(["check", "--layers", str(EXAMPLE), "--device", "cpu"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("group_norm ")]
    assert [r.split()[2] for r in rows] == ["float64", "float32"], out
    assert all(r.split()[1] == "declared" and r.split()[-1] == "OK" and "dweight" in r for r in rows), out
    assert code == 0 and "all 2 rows OK" in out


def test_check_layers_fails_a_wrong_layer(tmp_path, capsys, no_builtin_rows):
    bad = tmp_path / "bad_layers.py"
    bad.write_text(
        "import torch\n"
        "def twice(x):\n    return x * 2.0000001\n"
        "def twice_softmax(x):\n    return x.softmax(-1) * 2\n"
        "LAYERS = [\n"
        "    ('twice', twice, lambda x: x * 2, lambda: (torch.randn(3, 4),)),\n"
        "    ('twice_softmax', twice_softmax, lambda x: x.exp() / x.exp().sum(-1, keepdim=True) * 2,\n"
        "     lambda: (torch.randn(3, 4),)),\n"
        "]\n")
    code = cli.main(["check", "--layers", str(bad), "--device", "cpu", "--dtype", "float64"])
    out = capsys.readouterr().out
    twice = next(line for line in out.splitlines() if line.startswith("twice "))
    softmax = next(line for line in out.splitlines() if line.startswith("twice_softmax "))
    assert twice.split()[-1] == "FAIL" and softmax.split()[-1] == "FAIL", out
    assert "one rule" in softmax and "Tensor.softmax in forward" in softmax, softmax
    assert code == 1 and "2 of 2 rows FAIL" in out


@pytest.mark.parametrize("content,message", [
    (None, "no such file"),
    ("def broken(:\n", "cannot import {path}:1: SyntaxError"),
    ("import torch\nraise RuntimeError('no data here')\n", "cannot import {path}:2: RuntimeError: no data here"),
    ("import torch\n", "declares no layers: declare them as LAYERS = [(name, layer, reference, inputs), ...]"),
    ("LAYERS = [('x', 1, 2, 3)]\n", "LAYERS[0] is not (name, layer, reference, inputs[, kwargs])"),
], ids=["missing", "syntax error", "raises", "declares nothing", "malformed"])
def test_a_file_that_cannot_be_checked_is_one_line_and_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "mine.py"
    if content is not None:
        path.write_text(content)
    code = cli.main(["check", "--layers", str(path), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "", captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message.format(path=path) in lines[0], captured.err
