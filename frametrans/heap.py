"""Keep freed memory in the process, so that every frame's tensors reuse pages instead of new ones.

glibc's ``malloc`` serves a large block (from 128 KiB, a threshold that moves up to 32 MiB as
blocks are freed) with a fresh ``mmap`` and gives it back to the kernel on ``free``, and it trims
the top of its heap when more than twice that is free there. A model's activations are exactly
such blocks, allocated and freed once per frame: every forward then faults in and zeroes all its
pages again. Measured on the bundled cyclegan at 640x360 (AMD Zen 5, 2 threads, 2026-12-01):
15,000-18,000 page faults per forward and 63-65 ms (bf16) / 88-90 ms (fp32); with the settings
below 0-600 faults and 45-47 / 68-70 ms. munit: 17,700-21,800 faults, 73-80 / 94-104 ms -> 0-540,
54-62 / 78-88 ms.

:func:`keep_freed_memory` sets ``M_MMAP_THRESHOLD`` to 32 MiB and ``M_MMAP_MAX`` to 0 (no block is
mapped on its own: every one comes from the heap and is reused, also those over 32 MiB, the largest
threshold glibc takes) and ``M_TRIM_THRESHOLD`` to 1 GiB: the process keeps up to that much freed
memory at the top of its heap instead of returning it, so its resident size stays near its peak
until it exits. At 1920x1080 (the same machine) cyclegan's forward took 605-618 ms in bf16 with
glibc's defaults, 489-520 with the threshold alone and 326-365 with no mapped blocks (fp32:
1266-1360, 954-1107, 639-669 ms; faults 215,000-609,000, 114,000-422,000, 0-13,500 per forward).
Without mapped blocks the heap fragments more: one untiled 3840x2160 fp32 frame grew the process by
3140 MiB instead of 2136 (in 3.9 s instead of 6.6), 1024x1024 by 353 instead of 299; under
``--max-memory`` the bound holds as before (1 GiB at 3840x2160: +406 MiB; 128 MiB at 1024x1024:
+108). The ``frametrans`` command and every :class:`~frametrans.engine.session.Session` call it.
``FRAMETRANS_MALLOC=default`` leaves glibc's defaults; so do the same settings made in the
environment (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``,
``MALLOC_MMAP_MAX_`` or their ``glibc.malloc`` tunables), other C libraries (musl, macOS, Windows)
and preloaded allocators (jemalloc, tcmalloc, mimalloc).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from typing import Optional

__all__ = ["keep_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

#: Blocks up to this size come from the heap and are reused (glibc's maximum on 64-bit systems).
MMAP_THRESHOLD = 32 * 2**20
#: Freed memory at the top of the heap up to this size stays with the process.
TRIM_THRESHOLD = 2**30

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

#: The settings this module makes (as ``MALLOC_<NAME>_`` variables and ``glibc.malloc.<name>``
#: tunables): set by someone already, they are left alone.
_OWN = ("mmap_threshold", "trim_threshold", "top_pad", "mmap_max")

_lock = threading.Lock()
_result: Optional[bool] = None


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module doc says, once per process; True when it is in effect."""
    global _result
    with _lock:
        if _result is None:
            _result = _tune()
        return _result


def _tune() -> bool:
    if not _wanted():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_MMAP_MAX, 0) == 1
            and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)


def _wanted() -> bool:
    """glibc on Linux, and nobody chose otherwise."""
    if os.environ.get("FRAMETRANS_MALLOC", "").strip().lower() in ("default", "off", "0", "no"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
    except (ValueError, OSError, AttributeError):
        return False
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(f"MALLOC_{name.upper()}_" in os.environ or f"glibc.malloc.{name}" in tunables for name in _OWN):
        return False
    preload = os.environ.get("LD_PRELOAD", "")
    return not any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc"))
