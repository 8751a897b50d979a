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
