"""Tokenizers measured: throughput per core, the hand-written BPE against the library on whole corpora,
and a corpus larger than memory (cache build time, time to first step, peak RSS).

    python benchmarks/text_tokens.py speed                   # MB/s per core on Tiny Shakespeare and stdlib
    python benchmarks/text_tokens.py equal                   # hand == fast, token for token, whole corpora
    python benchmarks/text_tokens.py equal --corpus /tmp/pytext --vocab-size 2048   # ... on a large corpus
    python benchmarks/text_tokens.py big --gb 4 --dir /tmp/big   # a generated corpus: cache, first step, RSS
    python benchmarks/text_tokens.py corpus --dir /tmp/pytext    # the larger corpus of the README's rows

``speed`` runs each encoder in one process with the library at one thread (``RAYON_NUM_THREADS=1``)
so the figure is per core: ``BPETokenizer.encode_array`` (what the token cache uses: the ASCII
pattern and a chunk table, the library for other text), the library's own ``encode_batch`` on
the same pieces, and the hand-written ``BPE.encode``. The corpora: Tiny Shakespeare (1.1 MB,
ASCII) and the Python standard library's ``*.py`` sources (non-ASCII in places).

``corpus`` writes the README's larger corpus: every ``.py``, ``.pyi``, ``.md``, ``.rst`` and ``.txt``
file of this Python's standard library and of the installed packages (``site-packages``), UTF-8
ones only, each once (by content), shuffled with a fixed seed and joined into 64 MB files, so that
the validation split (the last tenth) is drawn from the same mix as the training text.

``big`` writes ``--gb`` GB of text (Tiny Shakespeare's lines shuffled with a fixed seed, so the
vocabulary is known and the text is not one repeated block), then runs
``customnn train gpt --text DIR`` for a few steps in a child process twice: the first builds
the cache (timed), the second finds it; each reports its peak RSS (``ru_maxrss``) and the time
from start to the first training step.
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # before the library starts its thread pool

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = Path(os.environ.get("CUSTOMNN_DATA") or REPO.parent / "shared" / "data")


def corpora(stdlib_mb: float) -> dict[str, str]:
    shakespeare = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    parts, size = [], 0
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "test" in f.parts or size > stdlib_mb * 1e6:
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        size += len(text.encode("utf-8"))
    return {"shakespeare": shakespeare, "stdlib": "".join(parts)}


def speed(args) -> None:
    from customnn.data.bpe import FastEncoder, train_bpe_fast
    from customnn.data.tokenizer import BPETokenizer, safe_cuts

    for name, text in corpora(args.stdlib_mb).items():
        mb = len(text.encode("utf-8")) / 1e6
        tok = BPETokenizer(train_bpe_fast([text[: len(text) * 9 // 10]], args.vocab_size))
        fast = FastEncoder(tok.bpe)
        parts = [text[a:b] for a, b in safe_cuts(text, 1 << 16)]
        runs = {"encode_array": lambda: tok.encode_array(text),
                "library encode_batch": lambda: fast.encode_batch(parts),
                "hand-written BPE.encode": lambda: tok.bpe.encode(text[: len(text) // 4])}
        for label, fn in runs.items():
            fraction = 0.25 if label.startswith("hand") else 1.0
            best = min(_timed(fn) for _ in range(args.reps))
            print(f"{name} ({mb:.2f} MB), vocab {args.vocab_size}: {label}: {mb * fraction / best:.2f} MB/s "
                  f"per core (best of {args.reps})", flush=True)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def equal(args) -> None:
    from customnn.data.bpe import FastEncoder, train_bpe, train_bpe_fast

    for name, text in corpora(args.stdlib_mb).items():
        t0 = time.perf_counter()
        hand = train_bpe(text, args.vocab_size)
        t1 = time.perf_counter()
        fast = train_bpe_fast([text], args.vocab_size)
        t2 = time.perf_counter()
        same_merges = hand.merges == fast.merges
        ids = FastEncoder(fast).encode(text)
        t3 = time.perf_counter()
        same_tokens = fast.encode(text) == ids
        t4 = time.perf_counter()
        print(f"{name} ({len(text.encode('utf-8')) / 1e6:.2f} MB), vocab {args.vocab_size}: merges equal "
              f"{same_merges} ({len(hand.merges)}; hand {t1 - t0:.1f} s, library {t2 - t1:.1f} s); tokens equal "
              f"{same_tokens} ({len(ids):,} tokens; library {t3 - t2:.1f} s, hand {t4 - t3:.1f} s)", flush=True)


def equal_corpus(args) -> None:
    """The hand-written encoder against the fast path (``encode_array``, what the token cache
    holds) on every piece of the corpus ``--corpus``, with the tokenizer a run learns on it."""
    from customnn.data.tokens import list_sources, load_tokens, piece_text, plan_pieces

    tok = load_tokens(args.corpus, None, os.environ.get("CUSTOMNN_DATA"), kind="bpe",
                      vocab_size=args.vocab_size).tokenizer
    pieces = plan_pieces(list_sources(args.corpus))
    n = mb = hand_s = fast_s = 0
    differ = []
    for i, piece in enumerate(pieces):
        text = piece_text(piece)
        t0 = time.perf_counter()
        fast = tok.encode_array(text).tolist()
        t1 = time.perf_counter()
        hand = tok.bpe.encode(text)
        hand_s, fast_s = hand_s + time.perf_counter() - t1, fast_s + t1 - t0
        n, mb = n + len(hand), mb + (piece.end - piece.start) / 1e6
        if hand != fast:
            differ.append(i)
        print(f"  piece {i + 1}/{len(pieces)}: {len(hand):,} tokens, equal {hand == fast}", flush=True)
    print(f"{args.corpus} ({mb:.1f} MB, {len(pieces)} pieces), vocab {args.vocab_size}: tokens equal "
          f"{not differ} ({n:,} tokens; fast path {mb / fast_s:.2f} MB/s, hand {mb / hand_s:.2f} MB/s, one core)"
          + (f"; pieces that differ: {differ}" if differ else ""), flush=True)


def big(args) -> None:
    import random
    import subprocess

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    lines = (DATA / "tinyshakespeare" / "input.txt").read_text().splitlines(keepends=True)
    rng = random.Random(0)
    target, per_file = int(args.gb * 1e9), 256 * 10**6
    t0 = time.perf_counter()
    written, i = sum(f.stat().st_size for f in folder.glob("*.txt")), len(list(folder.glob("*.txt")))
    while written < target:
        block = []
        size = 0
        while size < min(per_file, target - written):
            rng.shuffle(lines)
            chunk = "".join(lines)
            block.append(chunk)
            size += len(chunk)
        data = "".join(block)
        (folder / f"part{i:03d}.txt").write_text(data)
        written += len(data)
        i += 1
    print(f"corpus: {written / 1e9:.2f} GB in {i} files under {folder} ({time.perf_counter() - t0:.0f} s to write)",
          flush=True)
    probe = (f"import resource, sys, time; t0 = time.perf_counter(); sys.argv = ['customnn'] + {args.train_args!r}.split()"
             f" + ['--text', {str(folder)!r}, '--out', {args.out!r}]; import customnn.train.engine as e; "
             "orig = e.Engine.evaluate\n"
             "def first(self, step, _o=orig):\n"
             "    if step == 0: print(f'first step after {time.perf_counter() - t0:.1f} s', flush=True)\n"
             "    return _o(self, step)\n"
             "e.Engine.evaluate = first\n"
             "from customnn.commands.cli import main; code = main(sys.argv[1:]); "
             "print(f'peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB', flush=True); "
             "sys.exit(code)")
    for attempt in ("cache built", "cache found"):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
        lines_out = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
        print(f"{attempt}: exit {out.returncode}, {time.perf_counter() - t0:.0f} s in all", flush=True)
        for line in lines_out:
            if any(k in line for k in ("first step", "peak RSS", "training a GPT", "error", "step 0:")):
                print("   ", line, flush=True)


def corpus(args) -> None:
    import hashlib
    import random

    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    texts, seen = [], set()  # each file's bytes, checked as UTF-8
    for root in roots:
        for f in sorted(root.rglob("*")):
            if f.suffix not in (".py", ".pyi", ".md", ".rst", ".txt") or not f.is_file():
                continue
            data = f.read_bytes()
            digest = hashlib.sha1(data).digest()
            if digest in seen:
                continue
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                continue
            texts.append(data)
            seen.add(digest)
    random.Random(0).shuffle(texts)
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    part, size, i, total = [], 0, 0, 0
    for text in texts + [None]:
        if text is None or size >= 64 * 10**6:
            (folder / f"part{i:03d}.txt").write_bytes(b"".join(part))
            total, part, size, i = total + size, [], 0, i + 1
        if text is not None:
            part.append(text)
            size += len(text)
    print(f"corpus: {len(texts):,} files, {total / 1e6:.1f} MB in {i} files under {folder} (roots: "
          f"{', '.join(map(str, roots))})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("speed", "equal", "big", "corpus"))
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--stdlib-mb", type=float, default=4.0, help="how much of the stdlib's sources (MB)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--corpus", help="equal: a corpus (file, folder, glob) to compare on, piece by piece, "
                    "with the BPE a run learns on it (its token cache's tokenizer)")
    ap.add_argument("--gb", type=float, default=4.0)
    ap.add_argument("--dir", default="/tmp/customnn-big-corpus")
    ap.add_argument("--out", default="/tmp/customnn-big-runs")
    ap.add_argument("--train-args", default="train gpt --preset tiny --max-iters 20 --eval-interval 10 "
                    "--eval-iters 2")
    args = ap.parse_args()
    {"speed": speed, "equal": equal_corpus if args.corpus else equal, "big": big, "corpus": corpus}[args.what](args)


if __name__ == "__main__":
    main()
