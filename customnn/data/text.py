"""Text data: a UTF-8 corpus, its tokenizer, its train and validation tokens, training blocks.

The setup of nanoGPT's ``data/shakespeare_char/prepare.py`` (and ``data/shakespeare/``'s for
BPE) and ``train.py``'s ``get_batch``:

- the corpus is any UTF-8 text (``--text``: a file, a folder of files or a glob), by default
  Tiny Shakespeare from the data directory (``tinyshakespeare/input.txt``, downloaded and
  sha256-checked when missing);
- tokens are characters (``--tokenizer char``: a token is a character's index in the sorted set
  of the text's characters) or byte-level BPE (``--tokenizer bpe --vocab-size N``), learned on the
  training split (``customnn/data/tokenizer.py``). The tokenizer is stored in every checkpoint,
  so generation needs nothing but the checkpoint;
- the first 90% of the characters are for training, the last 10% for validation (or
  ``--val-text``); their tokens are read from a memory-mapped token cache
  (``customnn/data/tokens.py``), built once per corpus and tokenizer;
- a batch is ``batch_size`` blocks of ``block_size + 1`` consecutive tokens at random
  offsets, drawn from a ``torch.Generator`` (whose state goes into checkpoints, so a resumed
  run draws exactly the batches an uninterrupted one would): ``x`` is the first
  ``block_size`` tokens of each block, ``y`` the same shifted by one.

    corpus = load_corpus(None, data_dir=None, block_size=64)
    g = torch.Generator().manual_seed(1337)
    x, y = get_batch(corpus.train, 64, 12, g)        # (12, 64) int64 each
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from customnn.data.tokenizer import Vocab  # noqa: F401 (customnn.data.text.Vocab, as before)
from customnn.core.errors import UserError

DEFAULT_TEXT = "tinyshakespeare/input.txt"  # relative to the data directory


def default_prompt(tokenizer) -> str:
    """Where a sample starts when no prompt is given: a newline (the start of a line), or, for a
    character vocabulary without one, its first character, so that any trained model can sample."""
    return tokenizer.default_prompt()


@dataclass
class Corpus:
    """A corpus's tokenizer and its train and validation tokens (memory-mapped from the token cache)."""

    path: Path  # where the text came from (a file, a folder or a glob)
    tokenizer: object  # Vocab (characters) or BPETokenizer (customnn/data/tokenizer.py)
    train: np.ndarray  # (N_train,) token ids, the first 90% of the text
    val: np.ndarray  # (N_val,) token ids, the last 10% (or --val-text)

    @property
    def vocab(self):  # the name this field had when every tokenizer was a character vocabulary
        return self.tokenizer


def read_text(path: str | Path) -> str:
    """The whole file as text; a missing, unreadable, non-UTF-8 or empty file is a ``UserError``."""
    path = Path(path)
    try:
        if not path.is_file():
            raise UserError(f"text file not found: {path}")
        data = path.read_bytes()
    except OSError as e:  # unreadable, or a name too long for the file system
        raise UserError(f"cannot read text file {path}: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x}); "
                        "convert it to UTF-8 first") from None
    if not text:
        raise UserError(f"text file {path} is empty")
    return text


def text_path(text: str | Path | None, data_dir: str | Path | None = None) -> Path:
    """``--text PATH`` if given, else Tiny Shakespeare from the data directory (fetched if missing)."""
    if text is not None:
        return Path(text)
    from customnn.data.cache import ensure_file

    return ensure_file(DEFAULT_TEXT, data_dir=data_dir)


def load_corpus(text: str | Path | None, data_dir: str | Path | None, block_size: int, vocab=None,
                tokenizer: str = "char", vocab_size: int | None = None, val_text: str | Path | None = None,
                quiet: bool = False) -> Corpus:
    """Read, tokenize and split a corpus (a file, a folder or a glob) for a model with context ``block_size``.

    ``vocab`` (a trained model's tokenizer) encodes the text instead of one learned from it; a
    character a character-level model does not know is then a ``UserError``. Otherwise a
    ``tokenizer`` ("char" or "bpe" with ``vocab_size`` tokens) is learned on the training split.
    The tokens come from the token cache (``customnn/data/tokens.py``), built on first use. Each
    split must hold at least one block of ``block_size + 1`` tokens.
    """
    from customnn.data.tokens import load_tokens

    path = text_path(text, data_dir)
    data = load_tokens(path, val_text, data_dir, tokenizer, vocab_size, tokenizer=vocab, quiet=quiet)
    need = block_size + 1
    for name, split in (("training", data.train), ("validation", data.val)):
        if len(split) < need:
            where = f"--val-text {val_text}" if name == "validation" and val_text is not None else str(path)
            raise UserError(f"{where} is too short: its {name} split is {len(split)} tokens, shorter than one "
                            f"block of {need} (block_size {block_size} + 1); use a text of at least {need * 10} "
                            "characters or a smaller --block-size")
    return Corpus(path, data.tokenizer, data.train, data.val)


def get_batch(data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random blocks: inputs ``x`` and next-character targets ``y``, each (B, T).

    Offsets are uniform over every start that leaves room for ``block_size + 1`` characters
    (nanoGPT's ``torch.randint(len(data) - block_size, ...)``), drawn from ``generator``.
    """
    return blocks_at(data, random_offsets(len(data), block_size, batch_size, generator), block_size, device)


def random_offsets(n: int, block_size: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """(B,) starts of random blocks in a text of ``n`` characters, drawn as nanoGPT draws them."""
    if n < block_size + 1:
        raise ValueError(f"data of length {n} is shorter than one block of {block_size + 1}")
    return torch.randint(n - block_size, (batch_size,), generator=generator)  # (B,)


def blocks_at(data: torch.Tensor, ix: torch.Tensor, block_size: int,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks starting at offsets ``ix`` (B,): inputs ``x`` and targets ``y``, each (B, T)."""
    offsets = ix[:, None] + torch.arange(block_size + 1)  # (B, T+1)
    if isinstance(data, np.ndarray):  # a memory map of the token cache: read these blocks only
        blocks = torch.from_numpy(data[offsets.numpy()].astype(np.int64))  # (B, T+1)
    else:
        blocks = data[offsets]  # (B, T+1)
    x = blocks[:, :-1]  # (B, T)
    y = blocks[:, 1:]  # (B, T)
    if torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.contiguous().to(device), y.contiguous().to(device)
