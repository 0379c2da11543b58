"""Shared test fixtures.

Tests that read the real third-party data in ../shared/data (next to the checkout, present in CI
and on developer machines, absent from a user's clone) ask for the ``shared_data`` fixture, which
skips with a stated reason when the folder is missing.

Tests marked ``cuda`` need a GPU: where none is visible they are skipped with that reason;
``scripts/gpu_check.py`` runs them on one (``pytest -m cuda``).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("OPENWSL_SHARED_DATA", REPO.parent / "shared" / "data"))


NO_CUDA = ("needs a CUDA GPU and none is visible here; scripts/gpu_check.py runs the cuda-marked tests "
           "on one (docs/benchmarks.md, section GPU)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(pytest.mark.skip(reason=NO_CUDA))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real third-party data not found at {SHARED_DATA} (only CI and developer "
                    "checkouts have ../shared/data; set OPENWSL_SHARED_DATA to point elsewhere)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture
def one_thread():
    """One intra-op thread for in-process training: runs on a shared 2-core machine stay repeatable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
