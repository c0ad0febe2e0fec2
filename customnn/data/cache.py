"""The data directory and the download helper: every data file the project reads, by name.

Data live in one directory: ``--data-dir``, else ``$CUSTOMNN_DATA``, else
``~/.cache/customnn``. Inside it, ``mnist/`` holds the four IDX ``.gz`` files and
``tinyshakespeare/input.txt`` the text corpus. ``ensure_file`` returns the path of one of
these known files:

- present: its hash is checked (sha256 of the *decompressed* bytes, so a recompressed
  ``.gz`` is as good as the original; ../shared/data/README.md lists them) once per process;
- missing: it is fetched from its public mirrors in turn, checked, and written atomically
  (temporary file, flush, rename), so an interrupted download never leaves half a file;
- missing and no mirror reachable: a one-line ``UserError`` naming the file, the folder
  searched and how to supply it.

``CUSTOMNN_OFFLINE=1`` turns downloads off: a missing file is that same error at once,
without touching the network (for machines without internet, and for tests).

    from customnn.data.cache import ensure_file
    path = ensure_file("mnist/train-images-idx3-ubyte.gz", data_dir=None)
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from customnn.core.errors import UserError
from customnn.core.fileio import atomic_write_bytes

ENV_VAR = "CUSTOMNN_DATA"
OFFLINE_VAR = "CUSTOMNN_OFFLINE"  # set (to anything but "" or "0"): never download
DEFAULT_DIR = Path("~/.cache/customnn")
DOWNLOAD_TIMEOUT_S = 30  # per mirror; a blocked network fails fast rather than hanging


@dataclass(frozen=True)
class KnownFile:
    sha256: str  # of the decompressed bytes (the same as the file's for an uncompressed one)
    urls: tuple[str, ...]  # public mirrors, tried in order


# The MNIST mirrors torchvision uses (the original site, yann.lecun.com, now often refuses).
_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                  "https://storage.googleapis.com/cvdf-datasets/mnist/",
                  "http://yann.lecun.com/exdb/mnist/")


def _mnist(name: str, sha256: str) -> KnownFile:
    return KnownFile(sha256, tuple(base + name for base in _MNIST_MIRRORS))


KNOWN_FILES: dict[str, KnownFile] = {
    "mnist/train-images-idx3-ubyte.gz": _mnist(
        "train-images-idx3-ubyte.gz", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "mnist/train-labels-idx1-ubyte.gz": _mnist(
        "train-labels-idx1-ubyte.gz", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "mnist/t10k-images-idx3-ubyte.gz": _mnist(
        "t10k-images-idx3-ubyte.gz", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "mnist/t10k-labels-idx1-ubyte.gz": _mnist(
        "t10k-labels-idx1-ubyte.gz", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    "tinyshakespeare/input.txt": KnownFile(
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",)),
}

# Files whose hash was checked in this process: (path, size, mtime_ns). Hashing 50 MB of
# decompressed MNIST takes a fraction of a second, once.
_verified: set[tuple[str, int, int]] = set()


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The data directory: ``explicit`` (``--data-dir``), else ``$CUSTOMNN_DATA``, else ``~/.cache/customnn``."""
    return _choose_dir(explicit)[0]


def _choose_dir(explicit) -> tuple[Path, str]:
    """The directory and where the choice came from (for error messages)."""
    if explicit:
        return Path(explicit).expanduser(), "--data-dir"
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"
    return DEFAULT_DIR.expanduser(), "the default; set --data-dir or $CUSTOMNN_DATA to change it"


def content_sha256(data: bytes) -> str:
    """sha256 of the content: of the decompressed bytes for gzip data, else of ``data`` itself."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            return "not a readable gzip file"
    return hashlib.sha256(data).hexdigest()


def ensure_file(relpath: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The path of the known data file ``relpath`` inside the data directory, checked by hash.

    Downloads it from its mirrors when it is missing. Raises ``UserError`` (one line) for an
    unknown name, a file whose content does not match its hash, or a missing file that no
    mirror could supply.
    """
    if relpath not in KNOWN_FILES:
        raise UserError(f"unknown data file {relpath!r} (known: {', '.join(sorted(KNOWN_FILES))})")
    known = KNOWN_FILES[relpath]
    root, source = _choose_dir(data_dir)
    path = root / relpath
    if path.is_file():
        _verify(path, known)
        return path
    _download(relpath, known, path, root, source)
    return path


def _verify(path: Path, known: KnownFile) -> None:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _verified:
        return
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read data file {path}: {e.strerror}") from None
    digest = content_sha256(data)
    if digest != known.sha256:
        raise UserError(f"data file {path} is damaged or not the expected file (sha256 of its content "
                        f"{digest[:16]}..., expected {known.sha256[:16]}...); delete it to download it again")
    _verified.add(key)


def _fetch(url: str) -> bytes:
    """The bytes at ``url`` (a function of its own so tests can replace the network)."""
    request = urllib.request.Request(url, headers={"User-Agent": "customnn"})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
        return response.read()


def offline() -> bool:
    """True when ``$CUSTOMNN_OFFLINE`` turns downloads off."""
    return os.environ.get(OFFLINE_VAR, "") not in ("", "0")


def _download(relpath: str, known: KnownFile, path: Path, root: Path, source: str) -> None:
    failures = [f"downloads are off: ${OFFLINE_VAR} is set"] if offline() else []
    urls = () if failures else known.urls
    for url in urls:
        try:
            data = _fetch(url)
        except Exception as e:  # URLError, timeouts, HTTP errors, refused connections
            failures.append(f"{url}: {getattr(e, 'reason', None) or e}")
            continue
        digest = content_sha256(data)
        if digest != known.sha256:
            failures.append(f"{url}: content hash {digest[:16]}... does not match")
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
        except OSError as e:
            raise UserError(f"downloaded {relpath} but cannot write {path}: {e.strerror}") from None
        st = path.stat()
        _verified.add((str(path.resolve()), st.st_size, st.st_mtime_ns))
        return
    raise UserError(f"data file {relpath} not found in {root} ({source}) and could not be downloaded "
                    f"({'; '.join(failures)}); put the file at {path} (from {known.urls[0]}), "
                    f"or point --data-dir or ${ENV_VAR} at a folder that has {relpath}")
