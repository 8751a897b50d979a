import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


import logging

import pytest


def _logger_restored():
    logger = logging.getLogger("frametrans")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield
    logger.handlers[:] = handlers
    logger.propagate, logger.level = propagate, level


@pytest.fixture(autouse=True)
def _restore_frametrans_logger():
    """CLI commands configure the "frametrans" logger (own handler, no propagation); undo it after
    each test so caplog-based tests do not depend on the order tests run in."""
    yield from _logger_restored()


@pytest.fixture(autouse=True, scope="module")
def _restore_frametrans_logger_per_module():
    """The same after each module: a module-scoped fixture may run the CLI too."""
    yield from _logger_restored()


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One torch thread in this process and, through OMP_NUM_THREADS, in the processes tests start
    (unless OMP_NUM_THREADS is set already; the examples run with the user's setting, see
    support.threads.user_env). The tests' tensors are tiny, so a second thread gains nothing; on a
    2-core machine that is busy with anything else (the processes a test starts, writer threads,
    another job) the threads wait for each other: measured there, the model, fast-path and apply
    tests took 137-144 s with torch's default of one thread per core and 30 s with one."""
    from support import threads

    before = threads.use_one_thread()
    yield
    threads.restore(before)


@pytest.fixture(autouse=True, scope="session")
def _private_compile_cache(tmp_path_factory):
    """Compiled forwards go to a folder of this test run, not the user's ~/.cache/frametrans: a
    package cached by one test (or an earlier run) would otherwise replace the patched forwards
    that other tests rely on (an interrupt raised from inside the model, a simulated failure)."""
    old = os.environ.get("FRAMETRANS_CACHE_DIR")
    os.environ["FRAMETRANS_CACHE_DIR"] = str(tmp_path_factory.mktemp("compile-cache"))
    yield
    if old is None:
        os.environ.pop("FRAMETRANS_CACHE_DIR", None)
    else:
        os.environ["FRAMETRANS_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A tiny ResNet checkpoint file (modules may define their own)."""
    from support import tiny_resnet_file

    return tiny_resnet_file(tmp_path_factory.mktemp("model"))


def _start_rank(item) -> int:
    """0 for a test in an ``xdist_group`` (a group runs on one worker, one after another: the ray
    and ddp groups are the longest units of work, 30-75 s), 1 for a test marked ``slow``, 2 for the rest."""
    if item.get_closest_marker("xdist_group") is not None:
        return 0
    return 1 if item.get_closest_marker("slow") is not None else 2


def pytest_collection_modifyitems(config, items):
    """The longest units of work first, the rest in their order: with pytest-xdist's workers (the
    README's test command) a long unit that starts last leaves the other workers idle at the end."""
    items.sort(key=_start_rank)
