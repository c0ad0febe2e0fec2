"""Corpora of any size: a file, a folder or a glob of UTF-8 text, tokenized once into a token cache.

The layout of nanoGPT's ``train.bin`` (tokens as uint16, read with ``np.memmap``) with a header
as llm.c's shards have one:

- ``list_sources`` turns ``--text`` into files: a file; every file under a folder (hidden ones
  skipped), in sorted order; or the files a glob matches. The corpus is their concatenation.
- The corpus is cut into pieces of about ``PIECE_BYTES`` (``plan_pieces``; a cut is at a newline
  after a visible ASCII character, where no BPE token can span it), which are read, checked as
  UTF-8 and counted (``scan_piece``), then tokenized (``encode_piece``), in parallel processes
  when the corpus is large, with a progress bar.
- The first ``TRAIN_FRACTION`` of the characters are the training split, the rest validation
  (or ``--val-text`` is validation and all of ``--text`` trains).
- Each split's tokens go to a cache file in ``<data dir>/tokens/`` (or ``$CUSTOMNN_TOKEN_CACHE``;
  a temporary folder if that cannot be written): a ``HEADER_BYTES`` header (``MAGIC``, then JSON: version, tokenizer hash,
  dtype, token count, the sources' fingerprint), then the tokens as uint16 when the vocabulary
  fits, else uint32. The file is written under a temporary name and renamed when complete, so
  Ctrl-C leaves nothing that is trusted later; a cache whose header, size or fingerprint does
  not match (stale, truncated, another tokenizer's, not a cache) is rebuilt.
- Training reads blocks through ``np.memmap``: memory does not grow with the corpus.

The trained tokenizer is cached beside (``*.tokenizer.json``), so a second run on the same
corpus starts at once.

    data = load_tokens("books/", None, kind="bpe", vocab_size=2048)
    data.train[:10], data.tokenizer.decode(data.train[:10])
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from customnn.data.tokenizer import safe_cuts, tokenizer_from_header, train_tokenizer
from customnn.core.errors import UserError
from customnn.core.fileio import atomic_write_text, remove_stale_temporaries
from customnn.core.progress import Progress

TRAIN_FRACTION = 0.9  # nanoGPT's split: first 90% train, last 10% validation
MAGIC = b"CNNTOK\x00\x01"
VERSION = 1
HEADER_BYTES = 1024  # MAGIC, then the JSON header, zero-padded; the tokens start here
PIECE_BYTES = 8 << 20  # one task of a worker: its text, its string and its tokens fit easily
PARALLEL_BYTES = 32 << 20  # a corpus this large is tokenized by a pool of processes
BPE_TRAIN_BYTES = 256 << 20  # the BPE is learned on at most this much of the training split
GLOB_CHARS = "*?["
CACHE_VAR = "CUSTOMNN_TOKEN_CACHE"  # where token caches go, if not in the data directory


@dataclass(frozen=True)
class Piece:
    path: str
    start: int  # byte offsets in the file
    end: int

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.start)
            return f.read(self.end - self.start)


@dataclass
class Tokens:
    """A corpus's tokenizer and its splits' tokens (read-only memory maps), with where they came from."""

    tokenizer: object
    train: np.ndarray  # (N_train,) uint16 or uint32
    val: np.ndarray  # (N_val,)
    files: list[Path]
    train_chars: int | None = None  # characters in each split (known when just built)


# --- sources -------------------------------------------------------------------------------------
def list_sources(spec) -> list[Path]:
    """The files ``--text`` names: a file, a folder's files (recursively, hidden ones skipped), or a glob's."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise UserError(f"folder {path} holds no text files")
        return files
    if any(c in str(spec) for c in GLOB_CHARS):
        files = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"no file matches --text {spec}")
        return files
    raise UserError(f"text file not found: {path}")


def fingerprint(*groups: list[Path]) -> str:
    """16 hex digits naming these files as they are now (path, size, modification time)."""
    h = hashlib.sha256()
    for files in groups:
        h.update(b"|group|")
        for p in files:
            st = p.stat()
            h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def plan_pieces(files: list[Path], piece_bytes: int | None = None) -> list[Piece]:
    """The files cut into pieces of about ``piece_bytes`` (default ``PIECE_BYTES``) at cuts that
    change no token (at a newline after a visible ASCII byte; else, in a long run without one, at
    a character's start)."""
    piece_bytes = piece_bytes or PIECE_BYTES
    pieces = []
    for path in files:
        size = path.stat().st_size
        start = 0
        with open(path, "rb") as f:
            while size - start > piece_bytes:
                f.seek(start + piece_bytes)
                window = f.read(1 << 16)
                cut = next((i for i in range(1, len(window)) if window[i] == 0x0A and 0x21 <= window[i - 1] <= 0x7E),
                           None)
                if cut is None:  # the first byte that starts a UTF-8 character
                    cut = next((i for i in range(len(window)) if not 0x80 <= window[i] < 0xC0), len(window))
                end = start + piece_bytes + cut
                pieces.append(Piece(str(path), start, end))
                start = end
        if size > start or size == 0:
            pieces.append(Piece(str(path), start, size))
    return pieces


# --- the work of one piece (in a worker process, or here) ------------------------------------------
def piece_text(piece: Piece) -> str:
    data = piece.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        at = piece.start + e.start
        raise UserError(f"{piece.path} is not UTF-8 text (byte {at} is 0x{data[e.start]:02x}); "
                        "convert it to UTF-8 first") from None


def scan_piece(piece: Piece, want_chars: bool) -> tuple[int, set[str] | None]:
    """The piece's character count, and its set of characters if asked; not UTF-8: ``UserError``."""
    text = piece_text(piece)
    return len(text), (set(text) if want_chars else None)


_WORKER_TOKENIZER = None


def _init_worker(header: dict | None) -> None:
    global _WORKER_TOKENIZER
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one process per core already: one thread each
    _WORKER_TOKENIZER = tokenizer_from_header(header) if header is not None else None


def _scan_task(args):
    return scan_piece(*args)


def encode_piece(piece: Piece, dtype: str) -> np.ndarray:
    """The piece's tokens (by the worker's tokenizer) as ``dtype``."""
    return _WORKER_TOKENIZER.encode_array(piece_text(piece)).astype(dtype)


def _encode_task(args):
    return encode_piece(*args)


def run_pieces(task, items: list, tokenizer, sizes: list[int], desc: str, quiet: bool):
    """``task`` over ``items`` in order, in a pool of processes when the pieces are large; work that
    will take long is announced with its estimate and shows a bar (``core/progress.py``)."""
    total = sum(sizes)
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    progress = Progress(len(items), desc, "pieces", quiet)
    try:
        if total < PARALLEL_BYTES or workers < 2:
            global _WORKER_TOKENIZER
            _WORKER_TOKENIZER = tokenizer
            for item in items:
                yield task(item)
                progress.update()
            return
        import multiprocessing

        header = tokenizer.to_header() if tokenizer is not None else None
        with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (header,)) as pool:
            for out in pool.imap(task, items):
                yield out
                progress.update()
    finally:
        progress.close()


# --- the cache file --------------------------------------------------------------------------------
def cache_dir(data_dir) -> Path:
    """``$CUSTOMNN_TOKEN_CACHE`` if set, else ``<data dir>/tokens``, or a temporary folder's where
    that cannot be written (a read-only data set)."""
    from customnn.data.cache import data_dir as resolve

    first = Path(os.environ[CACHE_VAR]) if os.environ.get(CACHE_VAR) else resolve(data_dir) / "tokens"
    for folder in (first, Path(tempfile.gettempdir()) / "customnn-tokens"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK | os.X_OK):
                return folder
        except OSError:
            pass
    raise UserError(f"cannot write a token cache in {first} nor in the temporary folder (set ${CACHE_VAR})")


def dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


def open_cache(path: Path, tokenizer_hash: str, source: str) -> np.ndarray | None:
    """The tokens of the cache at ``path`` as a read-only memory map, or None if it is missing or
    not the one wanted (another tokenizer or corpus, truncated, damaged, not a cache)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
        size = path.stat().st_size
    except OSError:
        return None
    try:
        if len(head) != HEADER_BYTES or head[:len(MAGIC)] != MAGIC:
            return None
        meta = json.loads(head[len(MAGIC):].rstrip(b"\0"))
        dtype, count = meta["dtype"], meta["count"]
        if (meta.get("version") != VERSION or meta.get("tokenizer") != tokenizer_hash or meta.get("source") != source
                or dtype not in ("uint16", "uint32") or not isinstance(count, int) or count < 0
                or size != HEADER_BYTES + count * np.dtype(dtype).itemsize):
            return None
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


def write_cache(path: Path, arrays, tokenizer_hash: str, source: str, dtype: str) -> None:
    """Write the tokens ``arrays`` yields to ``path``: a temporary file, its header last, then a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(b"\0" * HEADER_BYTES)
            count = 0
            for a in arrays:
                f.write(np.ascontiguousarray(a, dtype=dtype).tobytes())
                count += len(a)
            meta = json.dumps({"version": VERSION, "tokenizer": tokenizer_hash, "dtype": dtype, "count": count,
                               "source": source}).encode()
            f.seek(0)
            f.write(MAGIC + meta.ljust(HEADER_BYTES - len(MAGIC), b"\0"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C included: no half-written cache is left under the trusted name
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


# --- the whole -----------------------------------------------------------------------------------------
def split_pieces(pieces: list[Piece], counts: list[int], at: int) -> tuple[list[Piece], list[Piece]]:
    """The pieces before and after character ``at`` of their concatenation (one piece cut in two)."""
    before, seen = [], 0
    for i, (piece, n) in enumerate(zip(pieces, counts)):
        if seen + n > at:
            text = piece_text(piece)
            cut = piece.start + len(text[:at - seen].encode("utf-8"))
            head, tail = Piece(piece.path, piece.start, cut), Piece(piece.path, cut, piece.end)
            return before + ([head] if cut > piece.start else []), [tail] + pieces[i + 1:]
        before.append(piece)
        seen += n
    return before, []


def load_tokens(text, val_text, data_dir, kind: str = "char", vocab_size: int | None = None, tokenizer=None,
                quiet: bool = False) -> Tokens:
    """The tokens of corpus ``text`` (and ``val_text``), from their caches, building what is missing.

    ``tokenizer`` (a trained model's) encodes the corpus; else one of ``kind`` is learned on the
    training split (``vocab_size`` tokens for bpe), or read from the tokenizer cache.
    """
    files = list_sources(text)
    val_files = list_sources(val_text) if val_text is not None else []
    source = fingerprint(files, val_files)
    folder = cache_dir(data_dir)
    remove_stale_temporaries(folder)  # what writers killed mid-cache left (never trusted: not a cache's name)
    name = Path(files[0]).stem if len(files) == 1 else Path(str(text).rstrip("/")).name
    stem = f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name)[:40] or 'corpus'}-{source}"  # a readable, safe file name
    scanned = {}

    def scan():  # characters per piece (and the set of characters), once
        if not scanned:
            pieces = plan_pieces(files)
            val_pieces = plan_pieces(val_files) if val_files else []
            allp = pieces + val_pieces
            out = list(run_pieces(_scan_task, [(p, kind == "char" and tokenizer is None) for p in allp], None,
                                  [p.end - p.start for p in allp], "reading the corpus", quiet))
            counts = [n for n, _ in out]
            if sum(counts[:len(pieces)]) == 0:
                raise UserError(f"--text {text} is empty" if len(files) == 1 else f"--text {text}: its files are empty")
            if val_files and sum(counts[len(pieces):]) == 0:
                raise UserError(f"--val-text {val_text} is empty")
            chars = set().union(*(s for _, s in out if s)) if kind == "char" and tokenizer is None else None
            if val_files:
                train, val = pieces, val_pieces
            else:
                train, val = split_pieces(pieces, counts, int(TRAIN_FRACTION * sum(counts)))
            scanned.update(train=train, val=val, chars=chars, train_chars=int(TRAIN_FRACTION * sum(counts))
                           if not val_files else sum(counts[:len(pieces)]))
        return scanned

    if tokenizer is None:
        tok_path = folder / f"{stem}-{kind}{vocab_size or ''}.tokenizer.json"
        tokenizer = _cached_tokenizer(tok_path, kind)
        if tokenizer is None:
            s = scan()
            tokenizer = train_tokenizer(kind, _bpe_texts(s["train"]) if kind == "bpe" else None, vocab_size,
                                        s["chars"])
            atomic_write_text(tok_path, json.dumps(tokenizer.to_header()))
    dtype = dtype_for(tokenizer.vocab_size)
    splits = {}
    for name in ("train", "val"):
        path = folder / f"{stem}-{tokenizer.hash}.{name}.tokens"
        tokens = open_cache(path, tokenizer.hash, source)
        if tokens is None:
            pieces = scan()[name]
            arrays = run_pieces(_encode_task, [(p, dtype) for p in pieces], tokenizer,
                                [p.end - p.start for p in pieces], f"tokenizing the {name} split", quiet)
            write_cache(path, _checked(arrays, tokenizer, text), tokenizer.hash, source, dtype)
            tokens = open_cache(path, tokenizer.hash, source)
            if tokens is None:
                raise UserError(f"the token cache {path} could not be read back after writing it (disk full?)")
        splits[name] = tokens
    return Tokens(tokenizer, splits["train"], splits["val"], files, scanned.get("train_chars"))


def _checked(arrays, tokenizer, text):
    """The arrays, after an encoding error (a character a trained model does not know) names the corpus."""
    try:
        yield from arrays
    except UserError as e:
        raise UserError(f"{text}: {e}") from None


def _cached_tokenizer(path: Path, kind: str):
    try:
        tok = tokenizer_from_header(json.loads(path.read_text(encoding="utf-8")))
        return tok if tok.kind == kind else None
    except (OSError, ValueError, RecursionError):
        return None  # missing or damaged: learned again


def _bpe_texts(pieces: list[Piece]):
    """The training split's text for the BPE trainer: at most ``BPE_TRAIN_BYTES``, in pieces cut where no token spans."""
    seen = 0
    for piece in pieces:
        if seen >= BPE_TRAIN_BYTES:
            return
        text = piece_text(piece)
        seen += piece.end - piece.start
        for a, b in safe_cuts(text, 1 << 20):
            yield text[a:b]
