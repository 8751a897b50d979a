"""Torch threads in the test session: one in the test process and, through OMP_NUM_THREADS, in the
processes tests start, unless the user set OMP_NUM_THREADS (tests/conftest.py applies it)."""

from __future__ import annotations

import os
from typing import Dict

_SET_BY_US = False


def use_one_thread() -> int:
    """Set OMP_NUM_THREADS=1 when unset, and this process's torch threads to 1 then; returns the
    thread count before, for :func:`restore`. A user's OMP_NUM_THREADS is left to torch, which read
    it at import as the processes tests start will: it caps it at the cores (3 gives 2 threads on 2
    cores), where ``torch.set_num_threads(3)`` would give this process 3, and outputs compared
    with a child's would differ in the last bit of a few sums."""
    import torch

    global _SET_BY_US
    before = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = "1"
        _SET_BY_US = True
        torch.set_num_threads(1)
    return before


def restore(threads: int) -> None:
    import torch

    global _SET_BY_US
    torch.set_num_threads(threads)
    if _SET_BY_US:
        os.environ.pop("OMP_NUM_THREADS", None)
        _SET_BY_US = False


def user_env(**extra: str) -> Dict[str, str]:
    """The environment as the user started the tests (without the OMP_NUM_THREADS set here), plus
    ``extra``: for the examples, which run real-size models on real frames as a user runs them."""
    env = dict(os.environ)
    if _SET_BY_US:
        env.pop("OMP_NUM_THREADS", None)
    env.update(extra)
    return env
