"""Reading a text task's checkpoint back: the GPT (or a model of one's own) and its tokenizer.

Every value a header gives is checked before it is used (``GPTConfig``'s bounds, the tensors'
names and shapes on the meta device, the tokenizer's size against the embedding), so a damaged
or forged checkpoint is one ``UserError``, never a crash or a huge allocation.
"""

from __future__ import annotations

import math

from customnn.core.errors import UserError
from customnn.core.memory import FLOAT, check_memory
from customnn.core.runtime import SEED_MAX, SEED_MIN
from customnn.data.tokenizer import Vocab, tokenizer_from_header
from customnn.models.gpt import GPT, GPTConfig
from customnn.train.loading import (check_weights, is_int, own_model_from_checkpoint, saved_dtype, state_mismatch,
                                    stored_train_config)


def from_checkpoint(ckpt, path, device="cpu", model=None) -> tuple:
    """The model and vocabulary a checkpoint of the text task holds, the model in eval mode on
    ``device``: the GPT, or, given ``model`` (``--model``'s ``ModelSpec``), the class of one's own
    it was trained as (it gets the vocabulary's size and the run's ``block_size``)."""
    meta = ckpt.meta
    if meta.get("model") != "gpt":
        raise UserError(f"{path} holds a {meta.get('model')!r} model, not a GPT")
    if meta.get("model_class") is not None or model is not None:
        try:
            vocab = gpt_tokenizer(meta)
        except (TypeError, ValueError) as e:
            raise UserError(f"{path}: the checkpoint holds no valid tokenizer ({e})") from None
        tc = stored_train_config(meta, path)
        if not is_int(tc.get("block_size"), 1) or not is_int(tc.get("seed"), SEED_MIN, SEED_MAX):
            raise UserError(f"{path}: checkpoint is damaged: its train_config has no block_size and seed")
        provided = {"vocab_size": vocab.vocab_size, "block_size": tc["block_size"], "seed": tc["seed"]}
        return own_model_from_checkpoint(ckpt, path, model, provided, "gpt", device), vocab
    return gpt_from_checkpoint(ckpt, path, device)


def block_size_of(model, ckpt, path) -> int:
    """The context of a loaded model: the GPT's own, or the block size its run trained at."""
    if hasattr(model, "config"):
        return model.config.block_size
    return stored_train_config(ckpt.meta, path)["block_size"]


def gpt_tokenizer(meta: dict):
    """The tokenizer of a text checkpoint's header; ``ValueError`` if there is none or it is malformed."""
    if "tokenizer" in meta:
        return tokenizer_from_header(meta["tokenizer"])
    if not isinstance(meta.get("vocab"), str):
        raise ValueError("no tokenizer")
    return Vocab(meta["vocab"])


def gpt_from_checkpoint(ckpt, path, device="cpu") -> tuple[GPT, object]:
    """The GPT and tokenizer stored in checkpoint ``ckpt`` (read from ``path``), in eval mode on ``device``.

    The tokenizer is the header's ``tokenizer`` (``customnn/data/tokenizer.py``), or, in a
    checkpoint that has none, the character vocabulary ``vocab``."""
    meta = ckpt.meta
    try:
        if not isinstance(meta.get("config"), dict):
            raise ValueError("no model configuration")
        config = GPTConfig(**meta["config"])
        vocab = gpt_tokenizer(meta)
        if vocab.vocab_size != config.vocab_size:
            raise ValueError(f"its {vocab.kind} tokenizer has {vocab.vocab_size} tokens, its model's vocab_size is "
                             f"{config.vocab_size}")
        if not is_int(meta.get("step"), 0):
            raise ValueError(f"step {meta.get('step')!r} is not a step number")
        blocks = {k.split(".")[1] for k in ckpt.model_state if k.startswith("blocks.")}
        if len(blocks) != config.n_layer:  # first: n_layer bounds the work of state_shapes()
            raise ValueError(f"its tensors do not match its configuration: n_layer {config.n_layer}, "
                             f"but tensors of {len(blocks)} blocks")
        shapes = config.state_shapes()
        problem = state_mismatch(shapes, ckpt.model_state)
        if problem:
            raise ValueError(f"its tensors do not match its configuration: {problem}")
        check_weights(ckpt.model_state, path)
        need = FLOAT * sum(math.prod(shape) for shape in shapes.values())
        for where in {"cpu", str(device)}:  # built on the CPU, then moved
            check_memory(need, f"the GPT of {path} ({need // FLOAT:,} parameters)", where)
        model = GPT(config).to(dtype=saved_dtype(ckpt.model_state))
        model.load_state_dict(ckpt.model_state)  # the dtypes are checked here
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: the checkpoint does not describe a valid GPT ({e})") from None
    return model.to(device=device).eval(), vocab
