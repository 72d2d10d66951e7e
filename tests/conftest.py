"""Shared fixtures. Everything runs on the CPU with small synthetic data."""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# ../shared sits beside the checkout on the project's machines, never in a user's clone.
SHARED_DATA = ROOT.parent / "shared" / "data"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: small convolutions run faster so on 2 shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def dim_examples():
    """The five real Composition-1k examples, or a skip where ../shared is absent."""
    path = SHARED_DATA / "dim-examples"
    if not path.is_dir():
        pytest.skip("../shared/data/dim-examples is not available")
    return path


@pytest.fixture
def dim_examples_small():
    path = SHARED_DATA / "dim-examples-small"
    if not path.is_dir():
        pytest.skip("../shared/data/dim-examples-small is not available")
    return path
