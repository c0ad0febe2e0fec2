"""``customnn eval RUN_OR_CHECKPOINT``: evaluate a saved model on its held-out data.

A CNN run prints the seed's test-set line
(``Test set: Average loss: 0.0412, Accuracy: 9868/10000 (98.68%)``); a GPT run prints
nanoGPT's line with the validation loss in bits per byte too
(``step 2000: train loss 1.7310, val loss 1.8840, val bpb 2.7181``). Which one is read from
the checkpoint's metadata, so a checkpoint file works as well as a run folder.

    customnn eval runs/cnn-20261127-120000
    customnn eval runs/gpt-20261127-120000 --compile      # the model through torch.compile
    customnn eval runs/cnn-20261208-010000 --model examples/mnist_resnet.py:ResNet   # a model of one's own
"""

from __future__ import annotations

import math

import torch

from customnn.commands.train import model_spec
from customnn.core.errors import UserError
from customnn.core.memory import check_memory
from customnn.core.validate import device as resolve_device
from customnn.data.mnist import SIZES, load_mnist
from customnn.data.text import load_corpus
from customnn.train import cnn, gpt
from customnn.train.loading import (MAX_BATCH_SIZE, MAX_EVAL_ITERS, DTYPES, check_compile, compile_model,
                                    stored_train_config)
from customnn.train.tasks import load_model
from customnn.train.usermodel import current_settings


def finite_results(result: dict, path) -> dict:
    """``result`` if every figure in it is a finite number; no NaN is printed as an answer."""
    bad = [k for k, v in result.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise UserError(f"{path}: the evaluation's {bad[0].replace('_', ' ')} is {result[bad[0]]}: the checkpoint's "
                        "weights overflow on this data, so it has no figure to report")
    return result


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="a run folder or a .safetensors checkpoint")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best",
                   help="which checkpoint of a run folder (default: best, else last)")
    p.add_argument("--data-dir", default=None, help="data directory (default: $CUSTOMNN_DATA, else ~/.cache/customnn)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="cast the weights to this dtype (default: as saved); bfloat16 or float16 halve the memory")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size")
    p.add_argument("--test-samples", type=int, default=None, help="CNN: evaluate on the first N test images")
    p.add_argument("--eval-iters", type=int, default=None, help="GPT: batches per split")
    p.add_argument("--text", default=None, help="GPT: the text, a file, folder or glob (default: the one the run used)")
    p.add_argument("--val-text", default=None, help="GPT: the validation text (default: the one the run used)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_argument(p)
    p.add_argument("--compile", action="store_true",
                   help="run the model through torch.compile (the first batch compiles; needs a C++ compiler on the CPU)")


def run(args) -> int:
    device = resolve_device(args.device)
    if args.compile:
        check_compile(device)
    model, vocab, path, ckpt = load_model(args.run, prefer=args.checkpoint, device=device,
                                          model=model_spec(args), dtype=args.dtype)
    if args.compile:
        compile_model(model, device)
    if vocab is None:
        print(cnn.test_line(finite_results(evaluate_cnn(args, model, device), path)))
    else:
        losses = finite_results(evaluate_gpt(args, model, vocab, path, ckpt, device), path)
        print(gpt.eval_line(ckpt.meta["step"], losses))
    return 0


def evaluate_cnn(args, model, device) -> dict:
    """The seed's test-set figures of a CNN on the first ``--test-samples`` test images."""
    if args.test_samples is not None and not 1 <= args.test_samples <= SIZES["test"]:
        raise UserError(f"--test-samples must be between 1 and {SIZES['test']}, got {args.test_samples}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    batch = min(args.batch_size or 1000, args.test_samples or SIZES["test"])
    check_eval_memory(model, batch, device)
    x, y = load_mnist("test", args.data_dir, args.test_samples)
    dtype = model.parameters()[0].dtype  # the images in the weights' dtype
    return cnn.evaluate(model, x.to(device=device, dtype=dtype), y.to(device), batch, args.quiet)


def evaluate_gpt(args, model, vocab, path, ckpt, device) -> dict:
    """nanoGPT's train and val losses of a GPT, on the batches its run's evaluations drew."""
    tc = stored_train_config(ckpt.meta, path)
    text = args.text if args.text is not None else tc.get("text")
    data_dir = args.data_dir if args.data_dir is not None else tc.get("data_dir")
    batch_size = args.batch_size if args.batch_size is not None else tc.get("batch_size", 12)
    eval_iters = args.eval_iters if args.eval_iters is not None else tc.get("eval_iters", 20)
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise UserError(f"--batch-size must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}")
    if not 1 <= eval_iters <= MAX_EVAL_ITERS:
        raise UserError(f"--eval-iters must be between 1 and {MAX_EVAL_ITERS}, got {eval_iters}")
    check_eval_memory(model, batch_size, device)
    block_size = gpt.block_size_of(model, ckpt, path)
    val_text = args.val_text if args.val_text is not None else (tc.get("val_text") if args.text is None else None)
    corpus = load_corpus(text, data_dir, block_size, vocab=vocab, val_text=val_text)
    # A run with --nanogpt-rng drew its evaluation batches from its one generator: the state it
    # had then is in the checkpoint, so the same batches are drawn again (None otherwise).
    # (Checkpoints written before the engine kept it at the top of their state.)
    state = ckpt.state if isinstance(ckpt.state, dict) else {}
    state = state.get("trainer", state) if isinstance(state.get("trainer", state), dict) else {}
    eval_rng = state.get("eval_rng")
    generator = None
    if eval_rng is not None:
        try:
            generator = torch.Generator()
            generator.set_state(eval_rng)
        except (TypeError, RuntimeError):
            raise UserError(f"{path}: checkpoint is damaged: its evaluation generator state is not one") from None
    return gpt.estimate_loss(model, corpus, batch_size, eval_iters, tc.get("seed", 1337) + 1, device, generator,
                             block_size=block_size)


def check_eval_memory(model, batch_size: int, device) -> None:
    """A one-line refusal of an evaluation whose batches cannot fit, from the model's own estimate
    (a model of one's own, already loaded, has none: its batches are the user's to size)."""
    estimate = getattr(type(model), "memory_estimate", None)
    if estimate is not None:
        need, what = estimate(current_settings(model), batch_size, False)
        check_memory(need, f"evaluating {what} on batches of {batch_size}", device, "use a smaller --batch-size")


def add_model_argument(p) -> None:
    p.add_argument("--model", metavar="FILE.py:CLASS", default=None, dest="model_file",
                   help="the model class of your own that the run trained (its checkpoint names it)")
    p.set_defaults(model_arg=[])
