"""Tokenizers of the text task: characters (``Vocab``, in ``customnn/data/text.py``) or byte-level BPE.

Both have one interface, which the training, evaluation and generation code use and nothing
else: ``encode(text) -> list[int]``, ``encode_array(text) -> (N,) int64 numpy array``,
``decode(ids) -> str``, ``vocab_size``, ``token_bytes()`` (the UTF-8 length of each token, for
bits per byte), ``stream()`` (a decoder fed one token at a time that gives whole characters),
``to_header()`` (a bounded JSON-able dict saved in every checkpoint and as the run's
``tokenizer.json``; never pickled), ``hash`` (of that header) and ``default_prompt()``.
``from_header`` reads a header back, checking every field: a damaged or forged one is a
``ValueError`` the caller turns into a one-line error naming the file.

A BPE token may end inside a multi-byte UTF-8 character (a byte-level vocabulary learns the
first two bytes of "東" as readily as a whole word), so ``stream()`` keeps the bytes of an
unfinished character until the token that completes it arrives (an incremental UTF-8
decoder); bytes that can never form a character come out as U+FFFD.

    tok = BPETokenizer(train_bpe_fast([text], 512))
    tok.decode(tok.encode("ROMEO:")) == "ROMEO:"
    tokenizer_from_header(tok.to_header()).hash == tok.hash
"""

from __future__ import annotations

import codecs
import hashlib
import json

import numpy as np

from itertools import chain

from customnn.data.bpe import BPE, N_BYTES, FastEncoder, split_ascii
from customnn.core.errors import UserError
from customnn.core.validate import vocabulary

MAX_VOCAB_SIZE = 2**18  # tokens of a BPE: four times GPT-4's, and a header of at most ~5 MB of merges
MAX_CACHED_CHUNKS = 1 << 20  # distinct chunks whose tokens BPETokenizer.encode_array remembers
KINDS = ("char", "bpe")


def header_hash(header: dict) -> str:
    """The first 16 hex digits of the sha256 of ``header`` as canonical JSON."""
    return hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


class Vocab:
    """A character vocabulary: ``encode`` text to token ids and ``decode`` them back; a token is a
    character's index in ``chars`` (the sorted characters of the text it was built from)."""

    kind = "char"

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

    def encode_tensor(self, text: str):
        """``encode`` as one (N,) int64 tensor, through a table indexed by code point (a few bytes
        per character, where a list of ints costs dozens)."""
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)  # (N,)
        table = np.full(max(map(ord, self.chars)) + 1, -1, dtype=np.int64)
        table[[ord(c) for c in self.chars]] = np.arange(len(self.chars))
        ids = table[np.minimum(codes, len(table) - 1)]
        ids[codes >= len(table)] = -1
        unknown = np.flatnonzero(ids < 0)
        if len(unknown):
            i = int(unknown[0])
            raise UserError(f"character {text[i]!r} (U+{ord(text[i]):04X}) at position {i} is not in the "
                            f"model's vocabulary of {len(self)} characters")
        import torch

        return torch.from_numpy(ids)  # (N,) int64

    def encode_array(self, text: str) -> np.ndarray:
        return self.encode_tensor(text).numpy()  # (N,) int64

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def token_bytes(self) -> list[int]:
        return [len(c.encode("utf-8")) for c in self.chars]

    def stream(self) -> CharStream:
        return CharStream(self.chars)

    def default_prompt(self) -> str:
        return "\n" if "\n" in self.stoi else self.chars[0]

    def to_header(self) -> dict:
        return {"kind": "char", "chars": self.chars}

    @property
    def hash(self) -> str:
        return header_hash(self.to_header())


class CharStream:
    """``TokenStream`` for characters: each token is a whole character."""

    def __init__(self, chars: str):
        self.chars = chars

    def feed(self, token: int) -> str:
        return self.chars[int(token)]

    def flush(self) -> str:
        return ""


class BPETokenizer:
    """Byte-level BPE (``customnn/data/bpe.py``): the library encodes where it is installed, the
    hand-written encoder otherwise (the same ids)."""

    kind = "bpe"

    def __init__(self, bpe: BPE):
        self.bpe = bpe
        self._chunks: dict[str, list[int]] = {}  # chunk -> its tokens, for encode_array's ASCII path
        try:
            self._fast = FastEncoder(bpe)
        except ImportError:  # the tokenizers library is missing: the reference encoder
            self._fast = None

    @property
    def vocab_size(self) -> int:
        return self.bpe.vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        return self._fast.encode(text) if self._fast is not None else self.bpe.encode(text)

    def encode_array(self, text: str, piece: int = 1 << 16) -> np.ndarray:
        """``encode`` as a (N,) int64 array, for corpora: the text is cut where a cut changes no
        token (``safe_cuts``) into pieces of about ``piece`` characters. An ASCII piece is split by
        ``split_ascii`` and each distinct chunk encoded once (text repeats its words: the tokens of
        most chunks are looked up); the other pieces go to the library as one batch."""
        parts = [text[a:b] for a, b in safe_cuts(text, piece)]
        encoded: list = [self._encode_ascii(p) if p.isascii() else None for p in parts]
        rest = [i for i, ids in enumerate(encoded) if ids is None]
        if rest:
            batch = [parts[i] for i in rest]
            done = self._fast.encode_batch(batch) if self._fast is not None else map(self.bpe.encode, batch)
            for i, ids in zip(rest, done):
                encoded[i] = ids
        return np.fromiter(chain.from_iterable(encoded), dtype=np.int64)

    def _encode_ascii(self, text: str):
        """The tokens of an ASCII text: its chunks' tokens looked up, the new chunks encoded first."""
        if len(self._chunks) > MAX_CACHED_CHUNKS:
            self._chunks.clear()
        known = self._chunks
        chunks = split_ascii(text)
        for chunk in set(chunks).difference(known):
            known[chunk] = self.bpe.encode_chunk(chunk.encode("ascii"))
        return chain.from_iterable(map(known.__getitem__, chunks))

    def decode_bytes(self, ids) -> bytes:
        return self.bpe.decode(ids)

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> list[int]:
        return [len(t) for t in self.bpe.tokens]

    def stream(self) -> TokenStream:
        return TokenStream(self.bpe.tokens)

    def default_prompt(self) -> str:
        return "\n"

    def to_header(self) -> dict:
        return {"kind": "bpe", "merges": [list(m) for m in self.bpe.merges]}

    @property
    def hash(self) -> str:
        return header_hash(self.to_header())


class TokenStream:
    """Tokens in, whole characters out: ``feed(id) -> str`` (possibly empty), ``flush() -> str``."""

    def __init__(self, tokens: list[bytes]):
        self.tokens = tokens
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self.utf8.decode(self.tokens[int(token)])

    def flush(self) -> str:
        return self.utf8.decode(b"", final=True)


def safe_cuts(text: str, piece: int) -> list[tuple[int, int]]:
    """(start, end) pieces of about ``piece`` characters whose BPE tokens, encoded one by one, are
    those of the whole text: each cut is at a newline that follows a visible ASCII character,
    where GPT-2's pattern always ends a chunk and starts the next (a text with no such newline
    is one piece)."""
    cuts, start = [], 0
    while len(text) - start > piece:
        at = text.find("\n", start + piece)
        while at != -1 and not ("!" <= text[at - 1] <= "~"):
            at = text.find("\n", at + 1)
        if at == -1:
            break
        cuts.append((start, at))
        start = at
    cuts.append((start, len(text)))
    return cuts


def tokenizer_from_header(header) -> Vocab | BPETokenizer:
    """The tokenizer a checkpoint's or run's header describes; ``ValueError`` for anything malformed."""
    if not isinstance(header, dict) or header.get("kind") not in KINDS:
        raise ValueError("the tokenizer is not a mapping with kind char or bpe")
    if header["kind"] == "char":
        if set(header) != {"kind", "chars"} or not isinstance(header["chars"], str):
            raise ValueError("a char tokenizer has exactly the fields kind and chars (a string)")
        return Vocab(header["chars"])
    merges = header.get("merges")
    if set(header) != {"kind", "merges"} or not isinstance(merges, list) or len(merges) > MAX_VOCAB_SIZE - N_BYTES:
        raise ValueError(f"a bpe tokenizer has exactly the fields kind and merges (a list of at most "
                         f"{MAX_VOCAB_SIZE - N_BYTES} pairs)")
    for m in merges:
        if not (isinstance(m, list) and len(m) == 2
                and all(isinstance(i, int) and not isinstance(i, bool) for i in m)):
            raise ValueError(f"a bpe merge is a pair of token ids, got {str(m)[:40]}")
    return BPETokenizer(BPE([tuple(m) for m in merges]))


def train_tokenizer(kind: str, texts, vocab_size: int | None = None, chars: set[str] | None = None):
    """A new tokenizer: ``char`` from the set of characters ``chars``; ``bpe`` with ``vocab_size``
    tokens learned on ``texts`` (an iterable of strings) by the tokenizers library. A vocabulary
    the text cannot fill is a ``UserError`` saying how many tokens it gave."""
    if kind == "char":
        return Vocab("".join(sorted(chars)))
    if vocab_size is None or not N_BYTES < vocab_size <= MAX_VOCAB_SIZE:
        raise UserError(f"--vocab-size must be between {N_BYTES + 1} and {MAX_VOCAB_SIZE} for --tokenizer bpe "
                        f"(the {N_BYTES} bytes and at least one merge), got {vocab_size}")
    from customnn.data.bpe import train_bpe_fast

    bpe = train_bpe_fast(texts, vocab_size)
    if bpe.vocab_size < vocab_size:
        raise UserError(f"--vocab-size {vocab_size} is more than this text can make: its training split gives "
                        f"{bpe.vocab_size} tokens (every adjacent pair merged); use --vocab-size {bpe.vocab_size} "
                        "or less, or more text")
    return BPETokenizer(bpe)
