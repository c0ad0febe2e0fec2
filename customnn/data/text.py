"""Character-level text data: read a UTF-8 corpus, build its vocabulary, draw training blocks.

The setup of nanoGPT's ``data/shakespeare_char/prepare.py`` and ``train.py``'s ``get_batch``:

- the corpus is any UTF-8 text file (``--text PATH``), by default Tiny Shakespeare from the
  data directory (``tinyshakespeare/input.txt``, downloaded and sha256-checked when missing);
- the vocabulary is the sorted set of its characters; a token is a character's index in it.
  The vocabulary is stored in every checkpoint, so generation needs nothing but the checkpoint;
- the first 90% of the characters are for training, the last 10% for validation;
- a batch is ``batch_size`` blocks of ``block_size + 1`` consecutive characters at random
  offsets, drawn from a ``torch.Generator`` (whose state goes into checkpoints, so a resumed
  run draws exactly the batches an uninterrupted one would): ``x`` is the first
  ``block_size`` characters of each block, ``y`` the same shifted by one.

    corpus = load_corpus(None, data_dir=None, block_size=64)
    g = torch.Generator().manual_seed(1337)
    x, y = get_batch(corpus.train, 64, 12, g)        # (12, 64) int64 each
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from customnn.core.errors import UserError
from customnn.core.memory import check_memory
from customnn.core.progress import Progress
from customnn.core.validate import vocabulary

DEFAULT_TEXT = "tinyshakespeare/input.txt"  # relative to the data directory
TRAIN_FRACTION = 0.9  # nanoGPT's split: first 90% train, last 10% validation
ENCODE_CHUNK = 2**22  # characters encoded at a time: under 0.3 s on a loaded 2-core CPU, ~64 MiB of temporaries


class Vocab:
    """A character vocabulary: ``encode`` text to token ids and ``decode`` them back."""

    def __init__(self, chars: str):
        self.chars = vocabulary(chars)  # distinct characters that UTF-8 can write (ValueError otherwise)
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; a character outside the vocabulary is a ``UserError`` naming it."""
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            c = e.args[0]
            raise UserError(f"character {c!r} (U+{ord(c):04X}) at position {text.index(c)} is not in the "
                            f"model's vocabulary of {len(self)} characters") from None

    def encode_tensor(self, text: str) -> torch.Tensor:
        """``encode`` as one (N,) int64 tensor, through a table indexed by code point (a few bytes
        per character, where a list of ints costs dozens), ``ENCODE_CHUNK`` characters at a time:
        a stop (Ctrl-C, SIGTERM) waits for one chunk only, and a long encoding is announced with
        its estimate and shows progress (``core/progress.py``)."""
        import numpy as np

        table = np.full(max(map(ord, self.chars)) + 1, -1, dtype=np.int64)
        table[[ord(c) for c in self.chars]] = np.arange(len(self.chars))
        ids = np.empty(len(text), dtype=np.int64)  # (N,)
        starts = range(0, len(text), ENCODE_CHUNK)
        progress = Progress(len(starts), f"encoding {len(text):,} characters", "chunks")
        try:
            for start in starts:
                piece = text[start:start + ENCODE_CHUNK]
                codes = np.frombuffer(piece.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)  # (n,)
                chunk = ids[start:start + len(piece)]
                np.take(table, np.minimum(codes, len(table) - 1), out=chunk)
                chunk[codes >= len(table)] = -1
                unknown = np.flatnonzero(chunk < 0)
                if len(unknown):
                    i = start + int(unknown[0])
                    raise UserError(f"character {text[i]!r} (U+{ord(text[i]):04X}) at position {i} is not in "
                                    f"the model's vocabulary of {len(self)} characters")
                progress.update()
        finally:
            progress.close()
        return torch.from_numpy(ids)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def default_prompt(vocab: Vocab) -> str:
    """Where a sample starts when no prompt is given: a newline (the start of a line), or, for a
    text without one, the vocabulary's first character, so that any trained model can sample."""
    return "\n" if "\n" in vocab.stoi else vocab.chars[0]


@dataclass
class Corpus:
    """A text split into train and validation token tensors, with its vocabulary."""

    path: Path  # where the text came from
    vocab: Vocab
    train: torch.Tensor  # (N_train,) int64 token ids, the first 90%
    val: torch.Tensor  # (N_val,) int64 token ids, the last 10%


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


def load_corpus(text: str | Path | None, data_dir: str | Path | None, block_size: int,
                vocab: Vocab | None = None) -> Corpus:
    """Read, tokenize and split a corpus for a model with context ``block_size``.

    ``vocab`` (a trained model's) encodes the text instead of a vocabulary built from it; a
    character the model does not know is then a ``UserError``. Each split must hold at least
    one block of ``block_size + 1`` characters.
    """
    path = text_path(text, data_dir)
    try:
        size = path.stat().st_size
    except OSError:
        size = 0  # read_text says what is wrong
    # the bytes, the text (up to 4 bytes a character), its UTF-32 codes and the int64 token ids
    check_memory(17 * size, f"reading the text {path} ({size:,} bytes)", "cpu", "use a smaller text file")
    content = read_text(path)
    vocab = vocab if vocab is not None else Vocab.from_text(content)
    try:
        ids = vocab.encode_tensor(content)  # (N,)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    n = int(TRAIN_FRACTION * len(ids))
    train, val = ids[:n], ids[n:]
    need = block_size + 1
    if len(val) < need:
        raise UserError(f"{path} is too short: {len(content)} characters give a validation split of "
                        f"{len(val)}, shorter than one block of {need} (block_size {block_size} + 1); "
                        f"use a text of at least {need * 10} characters or a smaller --block-size")
    return Corpus(path, vocab, train, val)


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
    blocks = data[offsets]  # (B, T+1)
    x = blocks[:, :-1]  # (B, T)
    y = blocks[:, 1:]  # (B, T)
    if torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.contiguous().to(device), y.contiguous().to(device)
