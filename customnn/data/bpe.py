"""Byte-level byte-pair encoding (BPE): a readable trainer and encoder, and the fast one beside it.

Sennrich et al. 2016 ("Neural Machine Translation of Rare Words with Subword Units") on bytes,
as GPT-2 (Radford et al. 2019) uses it: a token is a string of bytes, so every UTF-8 text
encodes and nothing is out of vocabulary.

1. **Split** the text into chunks with GPT-2's pattern (``split_text``: contractions, an
   optional space and a run of letters, of digits or of other symbols, whitespace); merges never
   cross a chunk's edge, so " the" and " theory" share their first token.
2. **Train**: start from the 256 single bytes; count every adjacent pair of tokens inside the
   chunks (a chunk that occurs n times counts n times); the most frequent pair becomes a new
   token, its occurrences are merged left to right, and so on until the vocabulary has
   ``vocab_size`` tokens. Ties go to the smallest pair of ids, as the ``tokenizers`` library
   breaks them, so the two trainers learn the same merges.
3. **Encode** a chunk: its bytes, then again and again merge the adjacent pair that was learned
   first (the lowest rank), leftmost first, until no learned pair is left.

Ids are those of the ``tokenizers`` library: the 256 bytes first, ordered by the code point of
the character GPT-2's ``bytes_to_unicode`` writes each as, then each new token in the order it
was learned (a merge that builds a string already in the vocabulary reuses its id).

``train_bpe`` / ``BPE.encode`` are plain Python on bytes, the reference to read;
``train_bpe_fast`` / ``FastEncoder`` run the same algorithm in the ``tokenizers`` library (Rust,
many threads), tested to give the same merges and the same tokens (tests/test_bpe.py).

    bpe = train_bpe_fast([text], vocab_size=512)
    ids = FastEncoder(bpe).encode("To be, or not to be")    # == bpe.encode(...)
    bpe.decode(ids)                                        # b"To be, or not to be"
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass

N_BYTES = 256
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")  # GPT-2's, lower case only


# --- GPT-2's pre-tokenizer, written out ---------------------------------------------------------
def _is_space(c: str) -> bool:
    """``\\s`` as the ``tokenizers`` library's pattern reads it (Unicode White_Space: Python's
    ``isspace`` less the four information separators U+001C..U+001F)."""
    return c.isspace() and not "\x1c" <= c <= "\x1f"


def _kind(c: str) -> str:
    """"L" for a letter (``\\p{L}``), "N" a number (``\\p{N}``), " " whitespace, "O" anything else."""
    if c.isalpha():
        return "L"
    if unicodedata.category(c)[0] == "N":
        return "N"
    return " " if _is_space(c) else "O"


def _chunk_end(text: str, i: int) -> int:
    """Where the chunk that starts at ``i`` ends: the first alternative of GPT-2's pattern
    ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``
    that matches there."""
    n = len(text)
    if text[i] == "'":
        for c in CONTRACTIONS:
            if text.startswith(c, i):
                return i + len(c)
    start = i + 1 if text[i] == " " and i + 1 < n and _kind(text[i + 1]) != " " else i  # the optional space
    kind = _kind(text[start])
    if kind != " ":  # a run of letters, of numbers, or of other symbols
        j = start + 1
        while j < n and _kind(text[j]) == kind:
            j += 1
        return j
    j = i + 1  # whitespace: the run, less its last character if a non-space follows (it leads the next chunk)
    while j < n and _is_space(text[j]):
        j += 1
    return j if j == n else max(j - 1, i + 1)


def split_text(text: str) -> list[str]:
    """``text`` cut into GPT-2's pre-tokenizer chunks (their concatenation is ``text``)."""
    chunks, i = [], 0
    while i < len(text):
        j = _chunk_end(text, i)
        chunks.append(text[i:j])
        i = j
    return chunks


# The same pattern for ASCII text, where \p{L} is [A-Za-z], \p{N} is [0-9] and \s is [ \t\n\r\f\v]:
# Python's regular expressions run it in C, many times faster than the scanner above.
ASCII_CHUNKS = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+", re.ASCII)


def split_ascii(text: str) -> list[str]:
    """``split_text`` for a text that ``isascii()`` (the same chunks; wrong for any other text)."""
    return ASCII_CHUNKS.findall(text)


# --- the byte alphabet ------------------------------------------------------------------------
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable character for each byte: printable Latin-1 bytes stand for themselves,
    the others (controls, space) are moved to U+0100 and up. The ``tokenizers`` library writes
    byte-level tokens with these characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    out, extra = {}, 0
    for b in range(N_BYTES):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(N_BYTES + extra)
            extra += 1
    return out


BYTE_CHAR = bytes_to_unicode()
# The ids of the single bytes: ordered by their characters' code points, as the library orders its alphabet.
BYTE_ORDER = sorted(range(N_BYTES), key=lambda b: ord(BYTE_CHAR[b]))  # id -> byte
BYTE_ID = {b: i for i, b in enumerate(BYTE_ORDER)}  # byte -> id


# --- the learned merges and the reference encoder -----------------------------------------------
@dataclass
class BPE:
    """A byte-level BPE: ``merges[r] = (a, b)`` is the pair of ids learned r-th (rank r)."""

    merges: list[tuple[int, int]]

    def __post_init__(self):
        merges, self.merges = list(self.merges), []
        self.tokens = [bytes([b]) for b in BYTE_ORDER]  # id -> its bytes
        self.index = {t: i for i, t in enumerate(self.tokens)}  # bytes -> id
        self.ranks: dict[tuple[int, int], tuple[int, int]] = {}  # pair -> (rank, id of the merged token)
        for a, b in merges:
            self.add(a, b)

    def add(self, a: int, b: int) -> int:
        """Learn the merge of tokens ``a`` and ``b`` (the next rank); returns the merged token's id."""
        if not (0 <= a < len(self.tokens) and 0 <= b < len(self.tokens)):
            raise ValueError(f"merge {len(self.merges)} ({a}, {b}) names a token not yet made")
        merged = self.tokens[a] + self.tokens[b]
        if merged not in self.index:  # a string built before by another pair keeps its id
            self.index[merged] = len(self.tokens)
            self.tokens.append(merged)
        self.ranks[(a, b)] = (len(self.merges), self.index[merged])  # learned twice: the later rank, as the library
        self.merges.append((a, b))
        return self.index[merged]

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode_chunk(self, chunk: bytes) -> list[int]:
        """One chunk's ids: merge the adjacent pair of lowest rank (leftmost first) until none is left."""
        ids = [BYTE_ID[b] for b in chunk]
        while len(ids) > 1:
            found = [(self.ranks[p][0], i) for i, p in enumerate(zip(ids, ids[1:])) if p in self.ranks]
            if not found:
                break
            _, i = min(found)
            ids[i:i + 2] = [self.ranks[(ids[i], ids[i + 1])][1]]
        return ids

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``: each chunk of ``split_text`` encoded alone."""
        return [t for chunk in split_text(text) for t in self.encode_chunk(chunk.encode("utf-8"))]

    def decode(self, ids) -> bytes:
        """The bytes the ids stand for (a cut may fall inside a UTF-8 character: decode with care)."""
        return b"".join(self.tokens[int(i)] for i in ids)


def merge_pair(ids: list[int], pair: tuple[int, int], new: int) -> list[int]:
    """``ids`` with every occurrence of ``pair`` replaced by ``new``, left to right."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_bpe(text: str, vocab_size: int) -> BPE:
    """Learn merges on ``text`` until there are ``vocab_size`` tokens (or no two tokens are adjacent any more).

    Pair counts are kept up to date rather than recounted: merging a pair touches only the
    chunks that hold it, whose old pairs are taken out of the counts and new pairs put in.
    """
    chunk_counts = Counter(split_text(text))  # each distinct chunk once, with how often it occurs
    words = [[BYTE_ID[b] for b in chunk.encode("utf-8")] for chunk in chunk_counts]
    counts = list(chunk_counts.values())
    pairs: Counter = Counter()  # (a, b) -> occurrences in the text
    where = defaultdict(set)  # (a, b) -> the chunks that hold it (some may no longer)
    for w, ids in enumerate(words):
        for p in zip(ids, ids[1:]):
            pairs[p] += counts[w]
            where[p].add(w)
    bpe = BPE([])
    while bpe.vocab_size < vocab_size and pairs:
        # the most frequent pair; of equals, the smallest ids
        best = max(pairs, key=lambda p: (pairs[p], -p[0], -p[1]))
        new = bpe.add(*best)
        for w in where.pop(best):
            ids = words[w]
            for p in zip(ids, ids[1:]):
                pairs[p] -= counts[w]
                if pairs[p] == 0:
                    del pairs[p]
            words[w] = ids = merge_pair(ids, best, new)
            for p in zip(ids, ids[1:]):
                pairs[p] += counts[w]
                where[p].add(w)
    return bpe


# --- the fast path: the tokenizers library --------------------------------------------------------
def _library_tokenizer(bpe: BPE | None = None):
    """A ``tokenizers.Tokenizer`` with GPT-2's byte-level pre-tokenizer and decoder, holding
    ``bpe``'s vocabulary and merges (None: an empty model, to be trained)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    if bpe is None:
        model = models.BPE()
    else:
        as_text = ["".join(BYTE_CHAR[c] for c in t) for t in bpe.tokens]
        model = models.BPE(vocab={s: i for i, s in enumerate(as_text)},
                           merges=[(as_text[a], as_text[b]) for a, b in bpe.merges])
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe_fast(texts, vocab_size: int, show_progress: bool = False) -> BPE:
    """``train_bpe`` in the ``tokenizers`` library: ``texts`` is an iterable of strings (files'
    pieces; chunks never cross from one string to the next), read once."""
    import json

    from tokenizers import pre_tokenizers, trainers

    tok = _library_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=show_progress, min_frequency=0)
    tok.train_from_iterator(texts, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    unicode_byte = {c: b for b, c in BYTE_CHAR.items()}
    vocab = {s: i for s, i in model["vocab"].items()}
    for b in range(N_BYTES):  # the library's first ids are the bytes, in BYTE_ORDER
        if vocab[BYTE_CHAR[b]] != BYTE_ID[b]:
            raise RuntimeError("the tokenizers library ordered the byte alphabet unlike BYTE_ORDER")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    bpe = BPE([(vocab[a], vocab[b]) for a, b in merges])
    for s, i in vocab.items():  # the same ids for the same strings
        if bpe.tokens[i] != bytes(unicode_byte[c] for c in s):
            raise RuntimeError(f"the tokenizers library's token {i} differs from the merges' rebuild")
    return bpe


class FastEncoder:
    """``BPE.encode`` and ``decode`` through the ``tokenizers`` library (the same ids)."""

    def __init__(self, bpe: BPE):
        self.bpe = bpe
        self.tok = _library_tokenizer(bpe)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Several texts at once, on every core (each text encoded alone). ``encode_batch_fast``
        (tokenizers >= 0.20) skips the character offsets we do not use: twice as fast here."""
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]
