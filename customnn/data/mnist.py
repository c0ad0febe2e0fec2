"""MNIST from its original IDX files: a checked reader, and the train/test tensors.

The IDX format (LeCun, Cortes & Burges, "THE MNIST DATABASE of handwritten digits",
http://yann.lecun.com/exdb/mnist/, section "FILE FORMATS FOR THE MNIST DATABASE")::

    bytes 0-1   0x00 0x00
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
    byte  3     number of dimensions d
    4*d bytes   each dimension's size, big-endian uint32
    the rest    the elements, big-endian, row-major: exactly prod(sizes) of them

``read_idx`` accepts the file gzip-compressed or raw and checks every one of these; a
damaged file raises ``IDXError`` (a ``ValueError`` and a ``UserError``, so the command
line prints it in one line) naming the file. ``load_mnist`` reads one split through the
data directory (``customnn.data.cache``), checks that images and labels agree, and
returns float images normalised as the PyTorch MNIST example does; ``load_mnist_split`` holds
out a fixed, seeded part of the training set for validation (model selection), so that the
test set is scored once, at the end.

    from customnn.data.mnist import load_mnist
    x, y = load_mnist("train", limit=1000)   # (1000, 1, 28, 28) float32, (1000,) int64
    (x, y), (x_val, y_val) = load_mnist_split(val_samples=5000)   # 55000 to train on, 5000 held out
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from customnn.data.cache import ensure_file
from customnn.core.errors import UserError

# The mean and standard deviation of the MNIST training pixels (in [0, 1]), as the PyTorch
# MNIST example normalises them.
MEAN, STD = 0.1307, 0.3081

FILES = {
    "train": ("mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz"),
    "test": ("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"),
}
SIZES = {"train": 60_000, "test": 10_000}
SPLIT_SEED = 0  # the generator that picks the validation images out of the training set (validation_split)

# IDX element type code -> big-endian numpy dtype
_IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_MAX_ELEMENTS = 2**31  # far above any real IDX file; stops a forged header from asking for petabytes


class IDXError(UserError, ValueError):
    """A file that is not a well-formed IDX file (damaged, truncated or another format)."""


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """The array in IDX ``data`` (gzip-compressed or raw); ``IDXError`` naming ``name`` if malformed."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
            raise IDXError(f"{name} is damaged: not a readable gzip file ({e or type(e).__name__})") from None
    if len(data) < 4:
        raise IDXError(f"{name} is not an IDX file: {len(data)} bytes, too short for the 4-byte magic number")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise IDXError(f"{name} is not an IDX file: magic number {data[:4].hex()} "
                       f"(expected 0000 then a type byte 08/09/0b/0c/0d/0e and the rank)")
    dtype, ndim = _IDX_TYPES[data[2]], data[3]
    if ndim == 0:
        raise IDXError(f"{name} is damaged: its header says it has 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{name} is truncated: {len(data)} bytes, the header alone needs {header}")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    count = 1
    for d in dims:
        count *= d
    if count > _MAX_ELEMENTS:
        raise IDXError(f"{name} is damaged: its header says {dims}, more elements than any IDX file holds")
    expected = header + count * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "damaged (extra bytes at the end)"
        raise IDXError(f"{name} is {what}: {len(data)} bytes, but its header (shape {tuple(dims)}, "
                       f"{dtype.itemsize}-byte elements) needs {expected}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array; ``IDXError`` if it is malformed."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IDXError(f"cannot read {path}: {e.strerror}") from None
    return parse_idx(data, str(path))


def check_pair(images: np.ndarray, labels: np.ndarray, images_name: str, labels_name: str) -> None:
    """MNIST-specific checks: (N, 28, 28) uint8 images, (N,) uint8 labels in 0..9, same N."""
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise IDXError(f"{images_name} is not an MNIST image file: shape {images.shape}, dtype {images.dtype} "
                       f"(expected (N, 28, 28) uint8)")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise IDXError(f"{labels_name} is not an MNIST label file: shape {labels.shape}, dtype {labels.dtype} "
                       f"(expected (N,) uint8)")
    if len(images) != len(labels):
        raise IDXError(f"{images_name} has {len(images)} images but {labels_name} has {len(labels)} labels")
    if len(labels) and int(labels.max()) > 9:
        raise IDXError(f"{labels_name} is damaged: label {int(labels.max())} is not a digit 0-9")


_cache: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}


def load_mnist_uint8(split: str, data_dir=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64 of ``split`` ("train" or "test")."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images_path, labels_path = (ensure_file(rel, data_dir) for rel in FILES[split])
    key = (str(images_path.resolve()), str(labels_path.resolve()))
    if key not in _cache:  # decoding the 47 MB training images once per process is enough
        images, labels = read_idx(images_path), read_idx(labels_path)
        check_pair(images, labels, str(images_path), str(labels_path))
        _cache[key] = (torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))
    return _cache[key]


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels ``(N, 28, 28)`` -> float32 ``(N, 1, 28, 28)``, scaled to [0, 1] then standardised."""
    x = images_uint8.to(torch.float32).div_(255.0)
    return x.sub_(MEAN).div_(STD).unsqueeze(1)  # (N, 1, 28, 28)


def load_mnist(split: str, data_dir=None, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images ``(N, 1, 28, 28)`` float32 and labels ``(N,)`` int64: the first ``limit`` of ``split``."""
    images, labels = load_mnist_uint8(split, data_dir)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return normalize(images), labels.clone()


def validation_split(val_samples: int, n: int = SIZES["train"]) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, val)`` of MNIST's training images: ``val_samples`` of them, drawn from a
    generator of fixed seed ``SPLIT_SEED``, are held out for validation, the rest are for
    training, each in file order. The same on every run, process and resume whatever ``--seed``
    is, so that runs are compared on the same images; a smaller split is part of a larger one."""
    if not 0 <= val_samples <= n:
        raise ValueError(f"val_samples must be between 0 and {n}, got {val_samples}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))  # (n,)
    return order[val_samples:].sort().values, order[:val_samples].sort().values


def load_mnist_split(data_dir=None, val_samples: int = 5000, train_samples: int | None = None):
    """``(x_train, y_train), (x_val, y_val)``: MNIST's training images less the ``val_samples``
    held out by ``validation_split``, of which the first ``train_samples`` (in file order), and
    the held-out ones; normalised as ``load_mnist``."""
    images, labels = load_mnist_uint8("train", data_dir)
    train, val = validation_split(val_samples, len(images))
    if train_samples is not None:
        train = train[:train_samples]
    return (normalize(images[train]), labels[train]), (normalize(images[val]), labels[val])
