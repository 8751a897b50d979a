"""Scale-out: run ``frametrans apply`` jobs on a Ray cluster (``pip install 'frametrans[ray]'``).

    from frametrans.scale import ray_apply
    report = ray_apply(["clips/"], "out/", "cyclegan", address="auto")

The keyframe split and the lossless join (:mod:`frametrans.io.segments`, pure PyAV) are shared
with the local, resumable video path. Nothing here imports Ray until :func:`ray_apply` runs (it
raises a one-line ``ImportError`` with the install command when Ray is missing).
"""

from __future__ import annotations

# binds the function over the submodule of the same name (the submodule stays importable)
from frametrans.scale.ray_apply import INSTALL_HINT, ray_apply

__all__ = ["INSTALL_HINT", "ray_apply"]
