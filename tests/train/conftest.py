"""Fixtures for the training tests (modules opt in with ``pytestmark``)."""

from typing import Any

import pytest


@pytest.fixture(scope="module")
def one_thread() -> Any:
    """Tiny tensors: threads only add overhead, and oversubscribe a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
