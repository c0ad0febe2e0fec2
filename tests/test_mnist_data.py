"""The MNIST IDX reader and the data directory: real files, damaged files, downloads, offline errors."""

from __future__ import annotations

import gzip
import hashlib
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from customnn.data import cache, mnist
from customnn.data.mnist import IDXError, load_mnist, parse_idx, read_idx
from customnn.core.errors import UserError


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(mnist._IDX_TYPES[type_code]).tobytes()


# --- the real files -----------------------------------------------------------------------------
def test_real_mnist_has_the_published_shapes_and_statistics(data_dir):
    x, y = load_mnist("train", data_dir)
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the first labels of the training set
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-3  # normalised like the example
    xt, yt = load_mnist("test", data_dir, limit=7)
    assert xt.shape == (7, 1, 28, 28) and yt.tolist() == [7, 2, 1, 0, 4, 1, 4]
    assert torch.bincount(load_mnist("test", data_dir)[1]).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_the_validation_split_is_fixed_disjoint_and_nested(data_dir):
    train, val = mnist.validation_split(5000)
    assert len(train) == 55000 and len(val) == 5000
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(60000))  # every image once
    assert bool((train[1:] > train[:-1]).all()) and bool((val[1:] > val[:-1]).all())  # in file order
    again = mnist.validation_split(5000)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)  # the same in every process and run
    small = mnist.validation_split(1000)[1]
    assert bool(torch.isin(small, val).all())  # a smaller split is part of a larger one
    assert val[:5].tolist() != [0, 1, 2, 3, 4] and val.max() > 50000  # drawn, not the first or last images
    counts = torch.bincount(load_mnist("train", data_dir)[1][val], minlength=10)
    assert counts.min() > 400 and counts.max() < 600  # every digit, about a tenth each
    (x, y), (xv, yv) = mnist.load_mnist_split(data_dir, val_samples=5000, train_samples=300)
    full_x, full_y = load_mnist("train", data_dir)
    assert torch.equal(x, full_x[train[:300]]) and torch.equal(y, full_y[train[:300]])  # the first of the rest
    assert torch.equal(xv, full_x[val]) and torch.equal(yv, full_y[val])


def test_data_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("CUSTOMNN_DATA", str(tmp_path / "env"))
    assert cache.data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert cache.data_dir() == tmp_path / "env"
    monkeypatch.delenv("CUSTOMNN_DATA")
    assert cache.data_dir() == cache.DEFAULT_DIR.expanduser()


def test_reader_accepts_raw_and_gzip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "raw").write_bytes(idx_bytes(a))
    (tmp_path / "gz").write_bytes(gzip.compress(idx_bytes(a)))
    assert np.array_equal(read_idx(tmp_path / "raw"), a)
    assert np.array_equal(read_idx(tmp_path / "gz"), a)
    f = np.array([1.5, -2.25], dtype=np.float32)
    assert np.array_equal(parse_idx(idx_bytes(f, 0x0D)), f)  # big-endian float32


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"\0", "extra bytes"),
    (lambda b: b"\x00\x01" + b[2:], "magic number"),
    (lambda b: b[:2] + b"\x07" + b[3:], "magic number"),
    (lambda b: b[:6], "truncated"),
    (lambda b: b"", "too short"),
    (lambda b: gzip.compress(b)[:-9], "gzip"),
])
def test_damaged_files_are_rejected_by_name(tmp_path, damage, message):
    a = np.zeros((3, 28, 28), dtype=np.uint8)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(idx_bytes(a)))
    with pytest.raises(IDXError, match=message) as e:
        read_idx(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, ValueError) and isinstance(e.value, UserError)


def test_images_and_labels_must_agree():
    images, labels = np.zeros((3, 28, 28), np.uint8), np.zeros(4, np.uint8)
    with pytest.raises(IDXError, match="3 images but .* 4 labels"):
        mnist.check_pair(images, labels, "img", "lbl")
    with pytest.raises(IDXError, match="not a digit"):
        mnist.check_pair(images, np.array([0, 1, 12], np.uint8), "img", "lbl")
    with pytest.raises(IDXError, match="not an MNIST image file"):
        mnist.check_pair(np.zeros((3, 28, 27), np.uint8), labels[:3], "img", "lbl")


_GOOD = idx_bytes(np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28) % 255)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=64),
    st.builds(lambda b: b"\x00\x00" + b, st.binary(max_size=64)),  # past the first magic check
    st.builds(lambda pos, val: _GOOD[:pos] + bytes([val]) + _GOOD[pos + 1:],
              st.integers(0, 40), st.integers(0, 255)),  # a mutated header
    st.builds(lambda n: _GOOD[:n], st.integers(0, len(_GOOD))),  # truncated
    st.builds(lambda b, n: gzip.compress(b)[:n], st.binary(max_size=64), st.integers(0, 100)),
))
def test_random_and_mutated_bytes_give_a_clear_error_or_a_valid_array(data):
    try:
        a = parse_idx(data, "fuzz.idx")
    except IDXError as e:
        assert "fuzz.idx" in str(e)
        return
    assert isinstance(a, np.ndarray) and a.ndim >= 1 and a.size == int(np.prod(a.shape))


# --- the download helper --------------------------------------------------------------------------
def test_present_file_is_verified_by_hash(data_dir):
    path = cache.ensure_file("mnist/t10k-labels-idx1-ubyte.gz", data_dir)
    assert path == data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz"
    assert cache.ensure_file("tinyshakespeare/input.txt", data_dir).stat().st_size == 1115394


def test_damaged_file_in_the_cache_is_refused(tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not mnist"))
    with pytest.raises(UserError, match="damaged or not the expected file"):
        cache.ensure_file("mnist/t10k-labels-idx1-ubyte.gz", tmp_path)


def test_missing_file_is_downloaded_checked_and_written(monkeypatch, tmp_path, data_dir):
    real = (data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    calls = []

    def fake_fetch(url):
        calls.append(url)
        if len(calls) == 1:
            raise OSError("connection refused")  # the first mirror is down
        if len(calls) == 2:
            return gzip.compress(b"a page that is not the file")  # the second serves junk
        return real

    monkeypatch.setattr(cache, "_fetch", fake_fetch)
    path = cache.ensure_file("mnist/t10k-labels-idx1-ubyte.gz", tmp_path / "fresh")
    assert len(calls) == 3
    assert path.read_bytes() == real
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    assert hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest() == \
        cache.KNOWN_FILES["mnist/t10k-labels-idx1-ubyte.gz"].sha256


def test_offline_error_names_the_file_the_folder_and_the_fix(monkeypatch, tmp_path):
    def offline(url):
        raise OSError("network is unreachable")

    monkeypatch.setattr(cache, "_fetch", offline)
    monkeypatch.setenv("CUSTOMNN_DATA", str(tmp_path))
    with pytest.raises(UserError) as e:
        load_mnist("test")
    message = str(e.value)
    assert "mnist/t10k-images-idx3-ubyte.gz" in message and str(tmp_path) in message
    assert "--data-dir" in message and "CUSTOMNN_DATA" in message and "\n" not in message
    assert not any(tmp_path.rglob("*.gz"))


def test_unknown_file_name():
    with pytest.raises(UserError, match="unknown data file"):
        cache.ensure_file("mnist/nothing.gz")
