"""Shared test setup: the data directory, and the oracle helper every layer test uses."""

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


@pytest.fixture
def data_dir() -> Path:
    path = Path(os.environ.get("CUSTOMNN_DATA", SHARED_DATA))
    if not (path / "mnist").is_dir():
        pytest.fail(f"test data not found in {path}: set CUSTOMNN_DATA to the folder with mnist/ and tinyshakespeare/")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
