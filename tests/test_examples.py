"""Every model in examples/ trains at small size, as its docstring says it is run: through the
command, from Python, and for the text model, sampled."""

from __future__ import annotations

import sys

import pytest

from customnn.commands.cli import main
from helpers import REPO

EXAMPLES = REPO / "examples"

pytestmark = pytest.mark.usefixtures("one_thread")


def only_run(folder):
    (run,) = folder.iterdir()
    return run


def test_the_resnet_trains_through_the_command_and_from_python(tmp_path, capsys, monkeypatch):
    model = f"{EXAMPLES / 'mnist_resnet.py'}:ResNet"
    code = main(["train", "cnn", "--model", model, "--model-arg", "width=4", "--train-samples", "64",
                 "--test-samples", "32", "--batch-size", "32", "--epochs", "1", "--device", "cpu", "--quiet",
                 "--out", str(tmp_path / "cli")])
    assert code == 0
    run = only_run(tmp_path / "cli")
    assert main(["eval", str(run), "--model", model, "--test-samples", "32", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("Test set: ")

    import customnn.train

    monkeypatch.syspath_prepend(str(EXAMPLES))
    sys.modules.pop("mnist_resnet", None)
    from mnist_resnet import ResNet

    result = customnn.train.fit(ResNet, task="mnist", model_args={"width": 4}, epochs=1, train_samples=64,
                                test_samples=32, batch_size=32, device="cpu", out=str(tmp_path / "py"), quiet=True)
    assert result["finished"] and isinstance(result["model"], ResNet) and result["step"] == 2


def test_the_char_lstm_trains_and_samples(tmp_path, capsys):
    model = f"{EXAMPLES / 'char_lstm.py'}:CharLSTM"
    code = main(["train", "gpt", "--preset", "tiny", "--model", model, "--model-arg", "hidden=16",
                 "--block-size", "16", "--max-iters", "4", "--eval-interval", "2", "--eval-iters", "1",
                 "--device", "cpu", "--quiet", "--out", str(tmp_path)])
    assert code == 0
    run = only_run(tmp_path)
    capsys.readouterr()
    assert main(["generate", str(run), "--model", model, "--prompt", "ROMEO:", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ROMEO:") and len(out) == len("ROMEO:") + 12 + 1
