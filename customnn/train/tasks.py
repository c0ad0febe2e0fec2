"""The tasks: the one table of what ``customnn train`` trains, and reading a run's model back.

A task is a kind of data with its evaluation (``customnn train cnn``: MNIST classification;
``customnn train gpt``: a text), a module that provides ``Task`` (its ``Trainer``), ``Config``
(its settings), ``train(cfg, quiet, given, model)`` and ``from_checkpoint(ckpt, path, device,
model)``. The model is the task's business: its built-in one, or any class of one's own
(``--model FILE.py:CLASS``); no table names a model.

    model, vocab, path, ckpt = load_model("runs/cnn-20261127-120000", model=spec)
"""

from __future__ import annotations

import importlib
from pathlib import Path

from customnn.core.errors import UserError
from customnn.train.checkpoint import load_checkpoint, resolve_checkpoint
from customnn.train.loading import DTYPES

# command word -> (module, one-line help)
TASKS = {
    "cnn": ("customnn.train.cnn", "train on MNIST digits: the CNN, or --model FILE.py:CLASS"),
    "gpt": ("customnn.train.gpt", "train a language model on a text: the GPT, or --model FILE.py:CLASS"),
}
ALIASES = {"mnist": "cnn", "text": "gpt"}  # what ``customnn.train.fit(task=...)`` also takes


def task(name: str):
    """The module of task ``name``."""
    return importlib.import_module(TASKS[name][0])


def load_model(run_or_path, prefer: str = "best", device="cpu", kind: str | None = None, model=None,
               dtype: str | None = None):
    """The model of a run folder's checkpoint (``prefer``: best, else last) or of a checkpoint file.

    Returns ``(model, vocab, path, ckpt)``; ``vocab`` is None for the MNIST task. ``kind``
    ("cnn" or "gpt") refuses a checkpoint of the other task in one line. ``model`` is the
    ``ModelSpec`` of ``--model`` for a checkpoint of a model of one's own. ``dtype`` (a name in
    ``loading.DTYPES``) casts the model's floating tensors: bfloat16 or float16 hold it in half
    the memory.
    """
    path = resolve_checkpoint(run_or_path, prefer=prefer)
    ckpt = load_checkpoint(path)
    found = ckpt.meta.get("model")
    if not isinstance(found, str) or found not in TASKS:
        raise UserError(f"{path}: unknown model kind {found!r} in the checkpoint")
    if kind is not None and found != kind:
        raise UserError(f"{path} holds a {found.upper()} model, not a {kind.upper()}: this command needs a "
                        f"{kind.upper()} checkpoint")
    loaded, vocab = task(found).from_checkpoint(ckpt, path, device, model)
    if dtype is not None:
        loaded.to(dtype=DTYPES[dtype])
    return loaded, vocab, Path(path), ckpt
