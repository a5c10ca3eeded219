"""Shared fixtures: an isolated cache per test session, the small datasets, a tiny pool."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dfmlbench.data import load_dataset
from dfmlbench.data.omniglot import FILE_NAME
from dfmlbench.paths import data_root_candidates

# At most 2 threads, fewer when OMP_NUM_THREADS asks (e.g. tests beside a running suite).
torch.set_num_threads(min(2, os.cpu_count() or 1, int(os.environ.get("OMP_NUM_THREADS") or 2)))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session builds its own caches, so tests never depend on a user's cache."""
    path = tmp_path_factory.mktemp("dfmlbench-cache")
    previous = os.environ.get("DFMLBENCH_CACHE")
    os.environ["DFMLBENCH_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("DFMLBENCH_CACHE", None)
    else:
        os.environ["DFMLBENCH_CACHE"] = previous


def omniglot_available() -> bool:
    return any((folder / FILE_NAME).is_file() for folder in data_root_candidates(None))


requires_omniglot = pytest.mark.skipif(not omniglot_available(),
                                       reason=f"{FILE_NAME} not found (../shared/data or $DFMLBENCH_DATA)")


@pytest.fixture(scope="session")
def glyphs(isolated_cache):
    return load_dataset("glyphs")


@pytest.fixture(scope="session")
def omniglot():
    if not omniglot_available():
        pytest.skip(f"{FILE_NAME} not found")
    return load_dataset("omniglot")


@pytest.fixture(scope="session")
def tiny_pool(glyphs):
    """Four conv4 teachers on glyphs, 2 epochs each (about 2 s)."""
    from dfmlbench.pool import PoolSpec, obtain_pool
    return obtain_pool(glyphs, PoolSpec(num_teachers=4, epochs=2))
