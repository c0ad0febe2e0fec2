"""The hand-written byte-level BPE against the tokenizers library: the same chunks, merges and tokens.

The corpora: Tiny Shakespeare, the Python standard library's json and email packages' sources
(what every machine with Python has), and a line of odd Unicode.
"""

from __future__ import annotations

import email
import json
import os
from pathlib import Path

import pytest

from customnn.data.bpe import BPE, BYTE_CHAR, FastEncoder, split_text, train_bpe, train_bpe_fast

ODD = ("It's 'tis we'LL they're  ½ x² ３ 一二 naïve café — 東京 🙂🙂\t\ttabs  \n\n\n  lead\u00a0nbsp"
       " ’quote’ 12,345.6e-7 ’s'd'm  \r\n end  ")


def stdlib_source() -> str:
    files = sorted(Path(json.__file__).parent.glob("*.py")) + sorted(Path(email.__file__).parent.glob("*.py"))
    return "".join(f.read_text(encoding="utf-8") for f in files)


@pytest.fixture(scope="module")
def corpora() -> dict[str, str]:
    data_dir = Path(os.environ.get("CUSTOMNN_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    return {"shakespeare": (data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8"),
            "stdlib": stdlib_source(), "odd": ODD * 3}


def library_chunks(text: str) -> list[str]:
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return [s for s, _ in pre.pre_tokenize_str(text)]


@pytest.mark.parametrize("name", ["shakespeare", "stdlib", "odd"])
def test_split_text_cuts_where_the_library_does(corpora, name):
    text = corpora[name]
    chunks = split_text(text)
    assert "".join(chunks) == text
    assert ["".join(BYTE_CHAR[b] for b in c.encode("utf-8")) for c in chunks] == library_chunks(text)


@pytest.mark.parametrize("name, vocab_size", [("shakespeare", 700), ("stdlib", 700), ("odd", 300)])
def test_hand_trainer_learns_the_librarys_merges(corpora, name, vocab_size):
    text = corpora[name][:150_000]
    fast = train_bpe_fast([text], vocab_size)
    hand = train_bpe(text, vocab_size)
    assert len(fast.merges) > 40  # the library learned something to compare
    assert hand.merges == fast.merges
    assert hand.tokens == fast.tokens


@pytest.mark.parametrize("name", ["shakespeare", "stdlib", "odd"])
def test_hand_encoder_gives_the_librarys_tokens(corpora, name):
    train, held_out = corpora[name][:150_000], corpora[name][-60_000:]
    bpe = train_bpe_fast([train], 800)
    fast = FastEncoder(bpe)
    for text in (held_out, ODD):
        ids = bpe.encode(text)
        assert ids == fast.encode(text)
        assert bpe.decode(ids) == text.encode("utf-8")
        assert len(ids) < len(text.encode("utf-8")) or text == ODD


def test_every_byte_encodes_and_merges_are_checked():
    bpe = BPE([(BYTE_CHAR_ID("a"), BYTE_CHAR_ID("b"))])
    assert bpe.vocab_size == 257 and bpe.tokens[256] == b"ab"
    assert bpe.encode("xabab") == [BYTE_CHAR_ID("x"), 256, 256]
    every = bytes(range(256)).decode("latin-1")
    assert bpe.decode(bpe.encode(every)) == every.encode("utf-8")
    with pytest.raises(ValueError, match="merge 1"):
        BPE([(1, 2), (5, 300)])


def test_a_merge_that_rebuilds_a_token_reuses_its_id():
    a, b, c = (BYTE_CHAR_ID(ch) for ch in "abc")
    bpe = BPE([(a, b), (256, c), (b, c), (a, 258)])  # "ab"+"c" and "a"+"bc" are both "abc"
    assert bpe.tokens[257] == b"abc" and bpe.vocab_size == 259
    assert bpe.ranks[(a, 258)] == (3, 257)
    assert bpe.encode("abc") == [257] == FastEncoder(bpe).encode("abc")


def BYTE_CHAR_ID(ch: str) -> int:  # noqa: N802 (reads as the table it looks up)
    from customnn.data.bpe import BYTE_ID

    return BYTE_ID[ord(ch)]


@pytest.mark.parametrize("name", ["shakespeare", "stdlib"])
def test_the_ascii_pattern_cuts_as_the_scanner(corpora, name):
    from customnn.data.bpe import split_ascii

    text = corpora[name].encode("ascii", "ignore").decode("ascii") + " \x1c\x1d  x\x0b\x0c y  \t"
    assert split_ascii(text) == split_text(text)
    assert split_ascii(ODD.encode("ascii", "ignore").decode()) == split_text(ODD.encode("ascii", "ignore").decode())


def test_encode_array_gives_the_librarys_tokens_on_mixed_text(corpora):
    from customnn.data.tokenizer import BPETokenizer

    tok = BPETokenizer(train_bpe_fast([corpora["stdlib"][:100_000]], 600))
    text = corpora["shakespeare"][:50_000] + ODD + corpora["stdlib"][-50_000:] + "\x1c end \x1f"
    assert tok.encode_array(text, piece=3000).tolist() == FastEncoder(tok.bpe).encode(text)
