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


def shared_data(name):
    """``../shared/data/<name>``, or skip the test saying it is absent (users' clones have no ../shared)."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is not available: the real Composition-1k examples sit in ../shared beside "
                    "the project's checkouts only")
    return path


@pytest.fixture(scope="session")
def dim_examples():
    """The five real Composition-1k examples (image, trimap, alpha, pred), or a skip."""
    return shared_data("dim-examples")


@pytest.fixture(scope="session")
def dim_examples_small():
    """The same examples at quarter size, or a skip."""
    return shared_data("dim-examples-small")
