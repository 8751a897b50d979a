"""Child Python processes that import this same frametrans (benchmarks' fresh processes, the
compiled-package check).

``python -m`` puts the working folder first on ``sys.path``, so a child runs in :func:`package_root`
with that folder first on ``PYTHONPATH``: a package found through ``PYTHONPATH``, a ``sys.path`` edit
or ``pip install --target DIR`` is found again, and a source checkout elsewhere cannot shadow it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence


def package_root() -> Path:
    """The folder this ``frametrans`` package was imported from (a checkout, site-packages, or the
    ``DIR`` of ``pip install --target DIR``)."""
    import frametrans

    return Path(frametrans.__file__).resolve().parents[1]


def child_env() -> Dict[str, str]:
    """The environment of a child Python process that must import this same frametrans: ours, with
    :func:`package_root` first on ``PYTHONPATH``."""
    root = str(package_root())
    env = dict(os.environ)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join([root, *rest])
    return env


def run_child(module: str, args: Sequence[str], timeout: Optional[float] = None,
              extra_env: Optional[Dict[str, str]] = None) -> "subprocess.CompletedProcess[str]":
    """``python -m module args`` with this interpreter and :func:`child_env` (plus ``extra_env``), in
    :func:`package_root`. Paths in ``args`` must be absolute. Output captured as text;
    ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, errors="replace",
                          env={**child_env(), **(extra_env or {})}, cwd=str(package_root()), timeout=timeout)
