"""Untrained tiny checkpoints and a digit picture, written in milliseconds (no training), for the
tests of commands that read them (tests/test_cli_fuzz.py, tests/test_edges.py)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from customnn.train.checkpoint import save_checkpoint
from customnn.models.cnn import CustomCNN
from customnn.models.gpt import GPT, GPTConfig

VOCAB = "\n !',-.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def cnn_checkpoint(path: Path, change=None) -> Path:
    """A seed CustomCNN checkpoint; ``change(state)`` may alter its tensors first."""
    model = CustomCNN("seed", seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if change is not None:
        change(state)
    save_checkpoint(path, state, {"model": "cnn", "config": {"arch": "seed", "seed": 1, "dropout": 0.0, "width": 24},
                                  "step": 0})
    return path


def gpt_checkpoint(path: Path, vocab: str = VOCAB, change=None, train_config: dict | None = None) -> Path:
    """A GPT checkpoint of 2 layers of width 16 over ``vocab``; ``change(state)`` may alter its tensors."""
    config = GPTConfig(vocab_size=len(vocab), block_size=16, n_layer=2, n_head=2, n_embd=16, bias=False)
    model = GPT(config, seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if change is not None:
        change(state)
    meta = {"model": "gpt", "config": config.to_dict(), "vocab": vocab, "step": 0,
            "train_config": train_config or {"batch_size": 2, "eval_iters": 1, "seed": 1}}
    save_checkpoint(path, state, meta)
    return path


def digit_picture(path: Path, size: tuple[int, int] = (60, 60), mode: str = "L") -> Path:
    """A white 7 on black, as MNIST draws digits."""
    canvas = Image.new("L", size, 0)
    w, h = size
    canvas.paste(Image.new("L", (w // 2, max(1, h // 10)), 255), (w // 4, h // 6))
    canvas.paste(Image.new("L", (max(1, w // 10), (2 * h) // 3), 255), ((2 * w) // 3, h // 6))
    canvas.convert(mode).save(path)
    return path
