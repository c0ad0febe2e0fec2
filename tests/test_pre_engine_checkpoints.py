"""Checkpoints written before the training engine (tests/data/pre-engine/, made by the last
release before it: a seed CNN after one epoch on 256 images, a `tiny` GPT after 10 steps with
--nanogpt-rng) still load: ``eval``, ``generate`` and ``predict`` print what that release printed,
and ``--resume`` says in one line why it cannot continue them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from customnn.commands.cli import main

DATA = Path(__file__).resolve().parent / "data" / "pre-engine"


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_prints_what_the_release_before_printed(capsys):
    code, out, _ = run(capsys, "eval", DATA / "cnn.safetensors", "--test-samples", 100, "--device", "cpu", "--quiet")
    assert code == 0 and out == "Test set: Average loss: 2.1091, Accuracy: 45/100 (45.00%)\n"
    # its evaluation batches come from the --nanogpt-rng generator state the checkpoint keeps
    code, out, _ = run(capsys, "eval", DATA / "gpt.safetensors", "--device", "cpu")
    assert code == 0 and out == "step 10: train loss 3.7663, val loss 3.7602, val bpb 5.4249\n"  # bpb: loss / ln 2 (ASCII)


def test_generate_and_predict_read_them(capsys, tmp_path):
    code, out, _ = run(capsys, "generate", DATA / "gpt.safetensors", "--prompt", "RO", "--max-new-tokens", 20,
                       "--seed", 3, "--device", "cpu")
    assert code == 0 and out == "ROT wmZ\nHabOeUsQwIRtWO\n"
    image = tmp_path / "seven.png"
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[6:22, 13:16] = 255
    Image.fromarray(pixels).save(image)
    code, out, _ = run(capsys, "predict", DATA / "cnn.safetensors", image, "--device", "cpu")
    assert code == 0 and out.startswith(f"{image}: ")


def test_resume_says_why_it_cannot_continue_them(capsys, tmp_path):
    for model in ("cnn", "gpt"):
        folder = tmp_path / model
        folder.mkdir()
        shutil.copy(DATA / f"{model}.safetensors", folder / "last.safetensors")
        (folder / "config.json").write_text("{}")
        code, _, err = run(capsys, "train", model, "--resume", folder, "--device", "cpu", "--quiet")
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert "written by an earlier customnn" in err and "start a new run" in err
