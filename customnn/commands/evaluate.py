"""``customnn eval RUN_OR_CHECKPOINT``: evaluate a saved model on its held-out data.

A CNN run prints the seed's test-set line
(``Test set: Average loss: 0.0412, Accuracy: 9868/10000 (98.68%)``); a GPT run prints
nanoGPT's line (``step 2000: train loss 1.7310, val loss 1.8840``). Which one is read from
the checkpoint's metadata, so a checkpoint file works as well as a run folder.

    customnn eval runs/cnn-20261127-120000
"""

from __future__ import annotations

import importlib

from customnn.errors import UserError
from customnn.train.run import load_checkpoint, resolve_checkpoint

MODEL_MODULES = {"cnn": "customnn.train.cnn", "gpt": "customnn.train.gpt_eval"}


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="a run folder or a .safetensors checkpoint")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best",
                   help="which checkpoint of a run folder (default: best, else last)")
    p.add_argument("--data-dir", default=None, help="data directory (default: $CUSTOMNN_DATA, else ~/.cache/customnn)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size")
    p.add_argument("--test-samples", type=int, default=None, help="CNN: evaluate on the first N test images")
    p.add_argument("--eval-iters", type=int, default=None, help="GPT: batches per split")
    p.add_argument("--text", default=None, help="GPT: the text file (default: the one the run used)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    path = resolve_checkpoint(args.run, prefer=args.checkpoint)
    ckpt = load_checkpoint(path)
    kind = ckpt.meta.get("model")
    if not isinstance(kind, str) or kind not in MODEL_MODULES:
        raise UserError(f"{path}: unknown model kind {kind!r} in the checkpoint")
    return importlib.import_module(MODEL_MODULES[kind]).evaluate_checkpoint(args, path, ckpt)
