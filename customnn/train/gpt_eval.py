"""A trained GPT on disk, and its evaluation: ``customnn eval`` for a GPT run.

- ``checkpoint_meta``: what a GPT checkpoint's JSON header records (model configuration,
  vocabulary, training configuration, step);
- ``model_from_checkpoint`` / ``load_model``: the model and vocabulary of a checkpoint, checked
  against its configuration *before* anything is built (a forged size is a one-line
  ``UserError``, never a multi-gigabyte allocation);
- ``estimate_loss``: nanoGPT's ``estimate_loss``, the mean loss over ``eval_iters`` batches of
  each split, here from seeded generators so that every evaluation of a run sees the same
  batches; ``eval_line`` prints it as nanoGPT does.

Run::

    customnn eval runs/gpt-20261127-120000            # step N: train loss X, val loss Y
    customnn eval runs/gpt-20261127-120000 --eval-iters 200
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from customnn.data.text import Corpus, Vocab, get_batch, load_corpus
from customnn.errors import UserError
from customnn.models.gpt import GPT, GPTConfig
from customnn.train.run import SEED_MAX, SEED_MIN, load_checkpoint, resolve_checkpoint, resolve_device

if TYPE_CHECKING:
    from customnn.train.gpt import GPTTrainConfig

# The largest --batch-size: far above what a character-level model needs, and a bound on what a
# checkpoint's training configuration may make ``customnn eval`` allocate.
MAX_BATCH_SIZE = 4096
# The most batches per split in one evaluation (nanoGPT uses 200): a bound on what a forged
# checkpoint can make ``customnn eval`` do.
MAX_EVAL_ITERS = 10_000


# --- the model on disk ---------------------------------------------------------------------------
def checkpoint_meta(cfg: GPTTrainConfig, model: GPT, vocab: Vocab, step: int, **extra) -> dict:
    return {"model": "gpt", "config": model.config.to_dict(), "vocab": vocab.chars,
            "train_config": asdict(cfg), "step": step, **extra}


def model_from_checkpoint(ckpt, path, device="cpu") -> tuple[GPT, Vocab]:
    """The GPT and vocabulary stored in a loaded checkpoint; any mismatch is a ``UserError``.

    The configuration is checked against the stored tensors' names and shapes before the
    model is built: a forged size must not make it allocate gigabytes.
    """
    meta = ckpt.meta
    if meta.get("model") != "gpt":
        raise UserError(f"{path} holds a {meta.get('model')!r} model, not a GPT")
    try:
        if not isinstance(meta.get("config"), dict):
            raise ValueError("no model configuration")
        config = GPTConfig(**meta["config"])
        if not isinstance(meta.get("vocab"), str):
            raise ValueError("no vocabulary")
        vocab = Vocab(meta["vocab"])
        if len(vocab) != config.vocab_size:
            raise ValueError(f"{len(vocab)} vocabulary characters for vocab_size {config.vocab_size}")
        if not is_int(meta.get("step"), 0):
            raise ValueError(f"step {meta.get('step')!r} is not a step number")
        problem = state_mismatch(config, ckpt.model_state)
        if problem:
            raise ValueError(f"its tensors do not match its configuration: {problem}")
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: the checkpoint does not describe a valid GPT ({e})") from None
    model = GPT(config)
    try:
        model.load_state_dict(ckpt.model_state)  # the dtypes are checked here
    except ValueError as e:
        raise UserError(f"{path}: the checkpoint does not describe a valid GPT ({e})") from None
    return model.to(device=device), vocab


def state_mismatch(config: GPTConfig, state: dict) -> str | None:
    """What in ``state`` (name -> tensor) does not fit a GPT of ``config``, or None; no model is built."""
    blocks = {k.split(".")[1] for k in state if k.startswith("blocks.")}
    if len(blocks) != config.n_layer:  # first: n_layer bounds the work of state_shapes()
        return f"n_layer {config.n_layer}, but tensors of {len(blocks)} blocks"
    want = config.state_shapes()

    def names(keys: list[str]) -> str:  # a forged size can make every tensor wrong: name the first few
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    reshaped = [k for k, shape in want.items() if k in state and tuple(state[k].shape) != shape]
    problems = [f"missing: {names(missing)}"] if missing else []
    if unexpected:
        problems.append(f"unexpected: {names(unexpected)}")
    if reshaped:
        k = reshaped[0]
        more = f" (and {len(reshaped) - 1} more tensors of the wrong shape)" if len(reshaped) > 1 else ""
        problems.append(f"{k}: shape {tuple(state[k].shape)} in the checkpoint, {want[k]} from the "
                        f"configuration{more}")
    return "; ".join(problems) or None


def load_model(run_or_path, prefer: str = "best", device="cpu") -> tuple[GPT, Vocab, Path, dict]:
    path = resolve_checkpoint(run_or_path, prefer=prefer)
    ckpt = load_checkpoint(path)
    model, vocab = model_from_checkpoint(ckpt, path, device)
    return model, vocab, path, ckpt.meta


# --- evaluation ----------------------------------------------------------------------------------
@torch.inference_mode()
def estimate_loss(model: GPT, corpus: Corpus, batch_size: int, eval_iters: int, seed: int,
                  device, generator: torch.Generator | None = None) -> dict[str, float]:
    """Mean loss over ``eval_iters`` batches of each split, from generators seeded with ``seed``
    and ``seed + 1``, or, given ``generator``, drawn from it (train first, as nanoGPT)."""
    was_training = model.training
    model.eval()
    out = {}
    block = model.config.block_size
    for i, split in enumerate(("train", "val")):
        g = generator if generator is not None else torch.Generator().manual_seed(seed + i)
        data = corpus.train if split == "train" else corpus.val
        total = torch.zeros((), device=device)
        for _ in range(eval_iters):
            x, y = get_batch(data, block, batch_size, g, device)
            total += model(x, y)[1]
        out[split] = total.item() / eval_iters
    model.train(was_training)
    return out


def eval_line(step: int, losses: dict) -> str:
    return f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"


def evaluate_checkpoint(args, path, ckpt) -> int:
    """``customnn eval RUN`` for a GPT: nanoGPT's loss line for the checkpoint."""
    device = resolve_device(args.device)
    model, vocab = model_from_checkpoint(ckpt, path, device)
    tc = stored_train_config(ckpt.meta, path)
    text = args.text if args.text is not None else tc.get("text")
    data_dir = args.data_dir if args.data_dir is not None else tc.get("data_dir")
    batch_size = args.batch_size if args.batch_size is not None else tc.get("batch_size", 12)
    eval_iters = args.eval_iters if args.eval_iters is not None else tc.get("eval_iters", 20)
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise UserError(f"--batch-size must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}")
    if not 1 <= eval_iters <= MAX_EVAL_ITERS:
        raise UserError(f"--eval-iters must be between 1 and {MAX_EVAL_ITERS}, got {eval_iters}")
    corpus = load_corpus(text, data_dir, model.config.block_size, vocab=vocab)
    # A run with --nanogpt-rng drew its evaluation batches from its one generator: the state it
    # had then is in the checkpoint, so the same batches are drawn again (None otherwise).
    eval_rng = ckpt.state.get("eval_rng") if isinstance(ckpt.state, dict) else None
    generator = None
    if eval_rng is not None:
        try:
            generator = torch.Generator()
            generator.set_state(eval_rng)
        except (TypeError, RuntimeError):
            raise UserError(f"{path}: checkpoint is damaged: its evaluation generator state is not one") from None
    losses = estimate_loss(model, corpus, batch_size, eval_iters, tc.get("seed", 1337) + 1, device, generator)
    print(eval_line(ckpt.meta["step"], losses))
    return 0


def stored_train_config(meta: dict, path) -> dict:
    """The training configuration a GPT checkpoint records (``{}`` if none), with the values
    ``customnn eval`` reads checked: a forged or damaged one is a one-line ``UserError``."""
    tc = meta.get("train_config", {})
    if not isinstance(tc, dict):
        raise UserError(f"{path}: checkpoint is damaged: its train_config is {type(tc).__name__}, not a mapping")
    for name in ("text", "data_dir"):
        if not isinstance(tc.get(name), (str, type(None))):
            raise UserError(f"{path}: checkpoint is damaged: train_config.{name} {tc[name]!r} is not a path")
    for name, low, high in (("batch_size", 1, MAX_BATCH_SIZE), ("eval_iters", 1, MAX_EVAL_ITERS),
                            ("seed", SEED_MIN, SEED_MAX)):
        if name in tc and not is_int(tc[name], low, high):
            allowed = f">= {low}" if high is None else f"in {low}..{high}"
            raise UserError(f"{path}: checkpoint is damaged: train_config.{name} {tc[name]!r} is not an integer "
                            f"{allowed}")
    return tc


def is_int(value, low: int, high: int | None = None) -> bool:
    """``value`` is an int (not a bool) in ``low..high``."""
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))
