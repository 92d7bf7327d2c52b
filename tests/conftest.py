"""Shared pytest fixtures: where the real data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """SHELFRANK_DATA, else ``shared/data`` beside the checkout."""
    return Path(os.environ.get("SHELFRANK_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shelfrank_data() -> Path:
    d = data_dir()
    if not d.is_dir():
        pytest.fail(f"the shopping data is not at {d}; set SHELFRANK_DATA to the shared/data folder")
    return d
