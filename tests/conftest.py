"""Shared test setup: the data directory, a fixed seed, and one thread for the tests that ask."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests read the real data sets from ../shared/data unless told otherwise.
if not os.environ.get("CUSTOMNN_DATA") and SHARED_DATA.is_dir():
    os.environ["CUSTOMNN_DATA"] = str(SHARED_DATA)
# Token caches of the text tests go to a folder of this session's, not into the shared data set.
if not os.environ.get("CUSTOMNN_TOKEN_CACHE"):
    import tempfile

    os.environ["CUSTOMNN_TOKEN_CACHE"] = tempfile.mkdtemp(prefix="customnn-test-tokens-")


@pytest.fixture
def data_dir() -> Path:
    path = Path(os.environ.get("CUSTOMNN_DATA", SHARED_DATA))
    if not (path / "mnist").is_dir():
        pytest.fail(f"test data not found in {path}: set CUSTOMNN_DATA to the folder with mnist/ and tinyshakespeare/")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One thread for the test: its models are tiny, so one thread is as fast, and much faster
    on a busy shared machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
