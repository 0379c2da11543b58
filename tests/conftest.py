"""Shared test fixtures.

Tests that read the real third-party data in ../shared/data (next to the checkout, present in CI
and on developer machines, absent from a user's clone) ask for the ``shared_data`` fixture, which
skips with a stated reason when the folder is missing.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("OPENWSL_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real third-party data not found at {SHARED_DATA} (only CI and developer "
                    "checkouts have ../shared/data; set OPENWSL_SHARED_DATA to point elsewhere)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
