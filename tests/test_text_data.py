"""The text reader: vocabulary, the 90/10 split, seeded batches, and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from customnn.data.text import Vocab, get_batch, load_corpus, read_text
from customnn.core.errors import UserError


def test_tiny_shakespeare_split_and_vocabulary(data_dir):
    corpus = load_corpus(None, data_dir, block_size=64)
    assert corpus.path == data_dir / "tinyshakespeare" / "input.txt"
    assert len(corpus.vocab) == 65
    assert corpus.vocab.chars[:2] == "\n "  # sorted: newline, space, ...
    assert (len(corpus.train), len(corpus.val)) == (1_003_854, 111_540)  # nanoGPT's split
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text()
    assert corpus.vocab.decode(corpus.train[:40]) == text[:40]
    assert corpus.vocab.decode(corpus.val[-40:]) == text[-40:]


def test_any_utf8_text_and_round_trip(tmp_path):
    path = tmp_path / "t.txt"
    text = "héllo wörld — ünïcode ✓\n" * 20
    path.write_text(text, encoding="utf-8")
    corpus = load_corpus(path, None, block_size=8)
    assert corpus.vocab.chars == "".join(sorted(set(text)))
    assert corpus.vocab.decode(np.concatenate([corpus.train, corpus.val])) == text
    assert corpus.train.dtype == np.uint16  # the token cache's, read through a memory map


def test_batches_are_seeded_blocks_shifted_by_one(tmp_path):
    data = torch.arange(1000)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x1, y1 = get_batch(data, 16, 7, g1)
    x2, y2 = get_batch(data, 16, 7, g2)
    assert x1.shape == y1.shape == (7, 16)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(y1[:, :-1], x1[:, 1:])
    assert torch.equal(x1[:, 1:] - x1[:, :-1], torch.ones(7, 15, dtype=torch.int64))  # consecutive
    # the generator state continues: a checkpointed state gives the same next batch
    state = g1.get_state()
    x3, _ = get_batch(data, 16, 7, g1)
    g1.set_state(state)
    x4, _ = get_batch(data, 16, 7, g1)
    assert torch.equal(x3, x4) and not torch.equal(x3, x1)


def test_every_offset_can_be_drawn_including_the_last():
    data = torch.arange(10)
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(200):
        x, y = get_batch(data, 4, 8, g)
        starts.update(x[:, 0].tolist())
        assert int(y.max()) <= 9
    assert starts == set(range(6))  # 10 - 4 starts


def test_not_utf8_is_a_clear_error(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    with pytest.raises(UserError, match=r"not UTF-8 text \(byte 3 is 0xe9\)"):
        read_text(path)


def test_empty_file_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(UserError, match="is empty"):
        load_corpus(path, None, block_size=8)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="text file not found"):
        load_corpus(tmp_path / "nope.txt", None, block_size=8)


def test_text_shorter_than_one_block_is_a_clear_error(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("to be or not to be " * 5)  # 95 characters: a validation split of 10
    with pytest.raises(UserError, match=r"too short.*one block of 65 \(block_size 64"):
        load_corpus(path, None, block_size=64)
    assert len(load_corpus(path, None, block_size=8).val) == 10


def test_vocab_names_an_unknown_character():
    vocab = Vocab("abc ")
    assert vocab.encode("cab a") == [2, 0, 1, 3, 0]
    assert vocab.decode([2, 0, 1]) == "cab"
    with pytest.raises(UserError, match=r"character 'z' \(U\+007A\) at position 2 is not in the model's vocabulary"):
        vocab.encode("abz")


def test_a_name_too_long_for_the_file_system_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="cannot read text file .*File name too long"):
        read_text(tmp_path / ("a" * 300))


def test_an_unexpected_os_error_in_a_command_is_one_line(capsys, monkeypatch):
    from customnn.commands import cli

    def broken(args):
        raise OSError(28, "No space left on device", "/tmp/somewhere")

    monkeypatch.setattr("customnn.commands.evaluate.run", broken)
    assert cli.main(["eval", "whatever"]) == 2
    err = capsys.readouterr().err
    assert err == "customnn: error: /tmp/somewhere: No space left on device\n"


def test_the_corpus_encoder_equals_encode_and_names_an_unknown_character():
    """``Vocab.encode_tensor`` (a table by code point: a few bytes a character, not a list of ints)
    gives ``encode``'s ids, astral characters included, and the same error."""
    text = "a\u00e9\U0001F600 b\n" * 50 + "z"
    vocab = Vocab.from_text(text)
    assert vocab.encode_tensor(text).tolist() == vocab.encode(text)
    with pytest.raises(UserError, match=r"character 'q' \(U\+0071\) at position 3 is not in the model's vocabulary"):
        vocab.encode_tensor("ab q\U0001F600")
    with pytest.raises(ValueError, match="lone surrogate"):
        Vocab("ab\udc80")
