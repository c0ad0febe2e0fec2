"""The CNN commands through a real subprocess (``python -m customnn ...``): train, eval, predict,
resume, Ctrl-C (SIGINT) mid-run, and bad arguments (one-line errors, exit 2, no traceback)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from customnn.data.mnist import load_mnist_uint8
from customnn.data.images import to_mnist
from helpers import interrupt_once_training, run_customnn, train_losses

TINY = ["--arch", "seed", "--train-samples", "256", "--test-samples", "200", "--epochs", "1", "--quiet"]


def one_line_error(p: subprocess.CompletedProcess, *fragments: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith("customnn"), lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    p = run_customnn("train", "cnn", *TINY, "--out", out)
    assert p.returncode == 0, p.stderr
    (run,) = out.iterdir()
    return run


def digit_png(path: Path, index: int, invert: bool, scale: int, size=(120, 90), offset=(7, 3), mode="L") -> int:
    """Save MNIST test digit ``index`` as an everyday picture: maybe dark ink on white, scaled up,
    off-centre on a larger canvas. Returns its label."""
    images, labels = load_mnist_uint8("test")
    digit = images[index].numpy()
    if invert:
        digit = 255 - digit
    big = Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.Resampling.BILINEAR)
    canvas = Image.new("L", size, 255 if invert else 0)
    canvas.paste(big, offset)
    canvas.convert(mode).save(path)
    return int(labels[index])


def test_train_eval_predict(trained_run, tmp_path):
    names = sorted(p.name for p in trained_run.iterdir())
    assert {"config.json", "metrics.jsonl", "train.log", "last.safetensors", "loss.png", "report.md"} <= set(names)
    test_line = [line for line in (trained_run / "train.log").read_text().splitlines() if line.startswith("Test set")][-1]

    p = run_customnn("eval", trained_run, "--test-samples", "200", "--quiet")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == test_line  # the same model on the same images: the same line

    a, b = tmp_path / "seven.png", tmp_path / "two.jpg"
    digit_png(a, 0, invert=True, scale=3)
    digit_png(b, 1, invert=False, scale=2, mode="RGB")
    p = run_customnn("predict", trained_run, a, b)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, path in zip(lines, (a, b)):
        name, rest = line.rsplit(": ", 1)
        assert name == str(path)
        digit, prob = rest.split(" ")
        assert digit in "0123456789" and prob.startswith("(") and prob.endswith("%)")
        assert 10.0 <= float(prob[1:-2]) <= 100.0


def test_bad_arguments_are_one_line_errors(tmp_path, trained_run):
    one_line_error(run_customnn("train", "cnn", "--epochs", "0", "--out", tmp_path), "--epochs must be >= 1")
    one_line_error(run_customnn("train", "cnn", "--epochs", "-2", "--out", tmp_path), "--epochs")
    one_line_error(run_customnn("train", "cnn", "--train-samples", "100", "--batch-size", "500", "--out", tmp_path),
                   "larger than the 100 training images")
    one_line_error(run_customnn("train", "cnn", "--arch", "resnet"), "--arch", "resnet")
    one_line_error(run_customnn("train", "cnn", "--optimizer", "lbfgs"), "--optimizer")
    one_line_error(run_customnn("train", "cnn", "--epochs", "two"), "--epochs")
    one_line_error(run_customnn("train", "cnn", "--resume", tmp_path / "missing"), "run folder not found")
    one_line_error(run_customnn("eval", tmp_path / "missing"), "not found")
    one_line_error(run_customnn("predict", trained_run, tmp_path / "missing.png"), "image not found")
    (tmp_path / "notes.png").write_text("this is not a picture")
    one_line_error(run_customnn("predict", trained_run, tmp_path / "notes.png"), "is not an image")
    Image.new("L", (40, 40), 255).save(tmp_path / "blank.png")
    one_line_error(run_customnn("predict", trained_run, tmp_path / "blank.png"), "no digit found")
    if not torch.cuda.is_available():
        one_line_error(run_customnn("train", "cnn", *TINY, "--device", "cuda", "--out", tmp_path),
                       "--device cuda", "no CUDA")
    assert not list(tmp_path.glob("cnn-*"))  # no error left a run folder behind


def test_diverging_run_exits_with_advice(tmp_path):
    p = run_customnn("train", "cnn", *TINY, "--lr", "1e6", "--out", tmp_path)
    one_line_error(p, "diverged at step", "lower --lr")


def test_sigint_saves_and_resume_matches_an_uninterrupted_run(tmp_path):
    args = ["train", "cnn", "--arch", "seed", "--train-samples", "2000", "--test-samples", "100", "--epochs", "2",
            "--batch-size", "16", "--log-interval", "1", "--quiet"]
    full = run_customnn(*args, "--out", tmp_path / "full")
    assert full.returncode == 0, full.stderr

    metrics, code, out, err = interrupt_once_training(  # Ctrl-C once training is under way
        [*args, "--out", tmp_path / "cut"], tmp_path / "cut", "cnn-*/metrics.jsonl", rows=20, wait_s=60)
    assert metrics is not None, "training did not start"
    assert code == 130, (out, err)
    run = metrics.parent
    assert f"customnn train cnn --resume {run}" in out + err
    assert (run / "last.safetensors").is_file()

    p = run_customnn("train", "cnn", "--resume", run, "--quiet")
    assert p.returncode == 0, p.stderr

    (full_run,) = (tmp_path / "full").iterdir()
    assert len(train_losses(full_run)) == 250
    assert train_losses(run) == train_losses(full_run)


def test_everyday_pictures_become_mnist_digits(tmp_path):
    """A digit drawn dark on white, three times larger and off-centre, comes back as the MNIST
    original (white on black, 20x20 box, centred by mass): nearly the same pixels."""
    images, _ = load_mnist_uint8("test")
    for index in range(5):
        original = images[index].numpy().astype(np.float32) / 255
        path = tmp_path / f"{index}.png"
        digit_png(path, index, invert=True, scale=3, size=(150, 110), offset=(30 + index, 5))
        from customnn.data.images import load_image

        restored = to_mnist(load_image(path))
        assert restored.shape == (28, 28) and restored.min() >= 0 and restored.max() <= 1
        corr = np.corrcoef(original.ravel(), restored.ravel())[0, 1]
        assert corr > 0.9, (index, corr)
    rgba = Image.new("RGBA", (60, 60), (0, 0, 0, 0))  # white ink on a transparent background
    rgba.paste(Image.new("RGBA", (8, 40), (255, 255, 255, 255)), (26, 10))
    rgba.save(tmp_path / "one.png")
    from customnn.data.images import load_image

    one = to_mnist(load_image(tmp_path / "one.png"))
    assert one[4:24, 12:16].min() > 0.9 and one.sum() < 85  # a 4x20 bar (8x40 scaled to fit 20), centred


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_eval_in_half_precision(trained_run, dtype):
    """``eval --dtype bfloat16`` (or float16) runs the model cast: loss and accuracy near float32's."""
    def figures(*extra):
        p = run_customnn("eval", trained_run, "--test-samples", "200", "--quiet", *extra)
        assert p.returncode == 0, p.stderr
        line = p.stdout.strip()  # Test set: Average loss: 0.4123, Accuracy: 180/200 (90.00%)
        return float(line.split("loss: ")[1].split(",")[0]), int(line.split("Accuracy: ")[1].split("/")[0])
    loss32, correct32 = figures()
    loss16, correct16 = figures("--dtype", dtype)
    assert abs(loss16 - loss32) <= 0.02 * max(1.0, loss32) and abs(correct16 - correct32) <= 3
