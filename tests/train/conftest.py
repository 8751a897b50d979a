"""Fixtures for the training tests (modules opt in with ``pytestmark``)."""

import os
from typing import Any

import pytest


@pytest.fixture(scope="module")
def one_thread() -> Any:
    """Tiny tensors: threads only add overhead, and oversubscribe a busy machine. The processes
    these tests start get one thread too (OMP_NUM_THREADS): a run compared with one in this process
    must sum in the same order, whatever OMP_NUM_THREADS the tests were started with."""
    import torch

    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env
