"""Tokenizers (characters, byte-level BPE) and the token cache: headers, streaming, corpora, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from customnn.data import tokens as tk
from customnn.data.bpe import BPE, BYTE_ID, train_bpe_fast
from customnn.data.text import load_corpus
from customnn.data.tokenizer import BPETokenizer, Vocab, tokenizer_from_header
from customnn.core.errors import UserError

SHAKESPEARE = Path(os.environ["CUSTOMNN_DATA"]) / "tinyshakespeare" / "input.txt"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(tk.CACHE_VAR, str(folder))
    return folder


@pytest.fixture(scope="module")
def bpe_tok() -> BPETokenizer:
    return BPETokenizer(train_bpe_fast([SHAKESPEARE.read_text()[:200_000]], 400))


# --- tokenizers ------------------------------------------------------------------------------------
def test_headers_round_trip_and_hash(bpe_tok):
    for tok in (Vocab("\n abc"), bpe_tok):
        header = json.loads(json.dumps(tok.to_header()))  # JSON and back, as in a checkpoint
        again = tokenizer_from_header(header)
        assert again.hash == tok.hash and again.vocab_size == tok.vocab_size
        text = "abc ab\n" if tok.kind == "char" else "Wherefore art thou, 東京? 🙂"
        assert again.encode(text) == tok.encode(text) and again.decode(tok.encode(text)) == text
    assert Vocab("ab").hash != Vocab("ba").hash and len(bpe_tok.hash) == 16


@pytest.mark.parametrize("header, message", [
    ("x", "mapping with kind"),
    ({"kind": "words"}, "mapping with kind"),
    ({"kind": "char", "chars": "aa"}, "distinct"),
    ({"kind": "char", "chars": "ab", "more": 1}, "exactly the fields"),
    ({"kind": "bpe", "merges": {"a": 1}}, "exactly the fields"),
    ({"kind": "bpe", "merges": [[1, 2, 3]]}, "pair of token ids"),
    ({"kind": "bpe", "merges": [[1, True]]}, "pair of token ids"),
    ({"kind": "bpe", "merges": [[1, 2], [900, 3]]}, "merge 1 .* not yet made"),
    ({"kind": "bpe", "merges": [[0, 0]] * (2**18)}, "at most"),
])
def test_a_malformed_tokenizer_header_is_refused(header, message):
    with pytest.raises(ValueError, match=message):
        tokenizer_from_header(header)


def test_streaming_gives_whole_characters_when_a_token_ends_inside_one():
    e6, x9d, xb1 = (BYTE_ID[b] for b in "東".encode("utf-8"))  # three bytes
    tok = BPETokenizer(BPE([(e6, x9d)]))  # token 256: the first two bytes of 東
    ids = tok.encode("東東")
    assert ids == [256, xb1, 256, xb1]
    stream = tok.stream()
    assert [stream.feed(i) for i in ids] == ["", "東", "", "東"]
    assert stream.feed(256) == "" and stream.flush() == "\ufffd"  # an unfinished character at the end
    assert tok.decode([xb1]) == "\ufffd"  # a byte that is no character: the replacement character
    chars = Vocab("ab").stream()
    assert chars.feed(1) + chars.feed(0) + chars.flush() == "ba"


def test_bits_per_byte_table(bpe_tok):
    assert Vocab("aé東🙂").token_bytes() == [1, 2, 3, 4]
    assert bpe_tok.token_bytes() == [len(t) for t in bpe_tok.bpe.tokens] and max(bpe_tok.token_bytes()) > 2


# --- the token cache -------------------------------------------------------------------------------------
def test_char_cache_is_the_seeds_split_and_is_reused(cache, monkeypatch):
    corpus = load_corpus(SHAKESPEARE, None, 64)
    text = SHAKESPEARE.read_text()
    assert (len(corpus.train), len(corpus.val)) == (1_003_854, 111_540)
    assert corpus.tokenizer.decode(corpus.val[-30:]) == text[-30:] and isinstance(corpus.train, np.memmap)
    # the ids the whole-file reader gave (nanoGPT's shakespeare_char): a character's index in the sorted set
    ids = Vocab.from_text(text).encode_tensor(text).numpy()
    assert np.array_equal(corpus.train, ids[:1_003_854]) and np.array_equal(corpus.val, ids[1_003_854:])
    files = sorted(cache.iterdir())
    assert [f.name.rsplit(".", 2)[-2:] for f in files if f.suffix == ".tokens"] == [["train", "tokens"],
                                                                                   ["val", "tokens"]]
    monkeypatch.setattr(tk, "run_pieces", lambda *a, **k: pytest.fail("tokenized again"))
    again = load_corpus(SHAKESPEARE, None, 64)
    assert np.array_equal(again.val, corpus.val)


def test_bpe_pieces_tokenize_as_the_whole_text(cache, monkeypatch, bpe_tok):
    text = SHAKESPEARE.read_text()[:300_000]
    path = cache.parent / "t.txt"
    path.write_text(text)
    pieces = tk.plan_pieces([path], piece_bytes=20_000)
    assert len(pieces) > 10 and "".join(tk.piece_text(p) for p in pieces) == text
    whole = bpe_tok.encode(text)
    assert np.concatenate([bpe_tok.encode_array(tk.piece_text(p)) for p in pieces]).tolist() == whole
    assert bpe_tok.encode_array(text, piece=5000).tolist() == whole


def test_parallel_tokenization_gives_the_same_cache(cache, monkeypatch, tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    text = SHAKESPEARE.read_text()
    for i in range(3):
        (folder / f"{i}.txt").write_text(text[i * 100_000:(i + 1) * 100_000])
    (folder / ".hidden").write_bytes(b"\xff\xfe")  # skipped: hidden
    one = load_corpus(folder, None, 32, tokenizer="bpe", vocab_size=300)
    monkeypatch.setattr(tk, "PARALLEL_BYTES", 1)  # a pool of processes, even for this small corpus
    monkeypatch.setattr(tk, "PIECE_BYTES", 30_000)
    monkeypatch.setenv(tk.CACHE_VAR, str(tmp_path / "other"))
    two = load_corpus(str(folder / "*.txt"), None, 32, tokenizer="bpe", vocab_size=300)
    assert two.tokenizer.hash == one.tokenizer.hash
    assert np.array_equal(one.train, two.train) and np.array_equal(one.val, two.val)
    assert one.tokenizer.decode(np.concatenate([one.train, one.val])) == text[:300_000]


def test_stale_truncated_or_foreign_caches_are_rebuilt(cache, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("to be or not to be, that is the question\n" * 50)
    first = load_corpus(path, None, 8)
    val_cache = next(cache.glob("*.val.tokens"))
    good = val_cache.read_bytes()
    for damage in (good[:-2], b"garbage" * 200, good[:tk.HEADER_BYTES], good.replace(b'"uint16"', b'"uint64"')):
        val_cache.write_bytes(damage)
        again = load_corpus(path, None, 8)
        assert np.array_equal(again.val, first.val) and val_cache.read_bytes() == good
    path.write_text("a different text altogether, longer than one block\n" * 50)  # stale: the file changed
    changed = load_corpus(path, None, 8)
    assert changed.tokenizer.decode(changed.train[:11]) == "a different"


def test_ctrl_c_while_writing_leaves_no_cache(tmp_path):
    def arrays():
        yield np.arange(10)
        raise KeyboardInterrupt

    path = tmp_path / "x.tokens"
    with pytest.raises(KeyboardInterrupt):
        tk.write_cache(path, arrays(), "h", "s", "uint16")
    assert list(tmp_path.iterdir()) == []
    killed = tmp_path / ".x.tokens.tmp-999999999"  # what a writer killed with SIGKILL leaves: removed on the next load
    killed.write_bytes(b"half")
    tk.remove_stale_temporaries(tmp_path)
    assert not killed.exists()
    tk.write_cache(path, iter([np.arange(70_000) % 65536]), "h", "s", "uint16")
    assert tk.open_cache(path, "h", "s")[-1] == 69_999 % 65536
    assert tk.open_cache(path, "other tokenizer", "s") is None and tk.open_cache(path, "h", "other text") is None
    assert tk.dtype_for(2**16) == "uint16" and tk.dtype_for(2**16 + 1) == "uint32"


def test_val_text_is_the_validation_split(cache, tmp_path):
    train, val = tmp_path / "train.txt", tmp_path / "val.txt"
    train.write_text("abc " * 100)
    val.write_text("cab " * 30)
    corpus = load_corpus(train, None, 8, val_text=val)
    assert (len(corpus.train), len(corpus.val)) == (400, 120)
    assert corpus.tokenizer.decode(corpus.val[:4]) == "cab "


@pytest.mark.parametrize("make, kwargs, message", [
    (lambda d: (d / "empty").mkdir(), {}, "holds no text files"),
    (lambda d: (d / "empty").write_bytes(b""), {}, "is empty"),
    (lambda d: (d / "empty").write_bytes(b"ok " * 100 + b"\xff"), {}, r"not UTF-8 text \(byte 300 is 0xff\)"),
    (lambda d: (d / "empty").write_text("to be or not " * 40), {"tokenizer": "bpe", "vocab_size": 5000},
     r"--vocab-size 5000 is more than this text can make: its training split gives \d+ tokens"),
])
def test_bad_corpora_are_one_line_errors(cache, tmp_path, make, kwargs, message):
    make(tmp_path)
    with pytest.raises(UserError, match=message):
        load_corpus(tmp_path / "empty", None, 8, **kwargs)
    assert not list(cache.glob("*.tokens")) if cache.exists() else True


def test_a_glob_matching_nothing_and_a_trained_models_unknown_character(cache, tmp_path):
    with pytest.raises(UserError, match="no file matches --text"):
        load_corpus(str(tmp_path / "*.txt"), None, 8)
    (tmp_path / "t.txt").write_text("abcz " * 50)
    with pytest.raises(UserError, match=r"t.txt: character 'z' \(U\+007A\) at position 3 is not in"):
        load_corpus(tmp_path / "t.txt", None, 8, vocab=Vocab("abc "))


# --- a BPE run: saved with its tokenizer; generate, eval and resume need nothing else -----------------
def test_a_bpe_run_trains_generates_and_evaluates_from_its_checkpoint(cache, tmp_path, capsys):
    from customnn.train.checkpoint import load_checkpoint, save_checkpoint
    from customnn.commands.cli import main
    from customnn.train.gpt import make_config, train

    text = tmp_path / "t.txt"
    text.write_text(SHAKESPEARE.read_text()[:150_000])
    cfg = make_config("tiny", text=str(text), tokenizer="bpe", vocab_size=300, max_iters=20, eval_interval=10,
                      out=str(tmp_path))
    result = train(cfg, quiet=True)
    run = Path(result["run_dir"])
    saved = json.loads((run / "tokenizer.json").read_text())
    assert saved["kind"] == "bpe" and len(saved["merges"]) == 300 - 256
    ckpt = load_checkpoint(run / "last.safetensors")
    assert ckpt.meta["tokenizer"] == saved and ckpt.meta["config"]["vocab_size"] == 300
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_bpb" in r]
    # a BPE token stands for several bytes: bits per byte is well below the loss per token over ln 2
    assert evals and all(0 < r["val_bpb"] < 0.9 * r["val_loss"] / np.log(2) for r in evals)
    assert "val bits/byte" in (run / "report.md").read_text()
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "ROMEO: 東", "--max-new-tokens", "30", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO: 東")  # any text encodes with bytes under it
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("step 20: train loss ") and f"val bpb {evals[-1]['val_bpb']:.4f}" in line
    # a tokenizer that does not fit the embedding is one line
    meta = {**ckpt.meta, "tokenizer": {"kind": "bpe", "merges": saved["merges"][:-1]}}
    save_checkpoint(tmp_path / "bad.safetensors", ckpt.model_state, meta, ckpt.state)
    assert main(["generate", str(tmp_path / "bad.safetensors"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "its bpe tokenizer has 299 tokens, its model's vocab_size is 300" in err and err.count("\n") == 1
    # resumed: the checkpoint's tokenizer, nothing learned again
    more = train(make_config("tiny", resume=str(run), max_iters=30, out=str(tmp_path)), quiet=True)
    assert more["step"] == 30 and more["vocab"].hash == tokenizer_from_header(saved).hash


def test_vocab_size_flags_are_checked():
    from customnn.train.gpt import make_config

    with pytest.raises(UserError, match="--vocab-size is for --tokenizer bpe"):
        make_config("tiny", vocab_size=500)
    with pytest.raises(UserError, match="--vocab-size must be between 257 and 262144"):
        make_config("tiny", tokenizer="bpe", vocab_size=256)
    assert make_config("tiny", tokenizer="bpe").vocab_size == 1024
