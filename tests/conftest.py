import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


import logging

import pytest


@pytest.fixture(autouse=True)
def _restore_frametrans_logger():
    """CLI commands configure the "frametrans" logger (own handler, no propagation); undo it after
    each test so caplog-based tests do not depend on the order tests run in."""
    logger = logging.getLogger("frametrans")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield
    logger.handlers[:] = handlers
    logger.propagate, logger.level = propagate, level


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
