"""Scale-out: run ``frametrans apply`` jobs on a Ray cluster (``pip install 'frametrans[ray]'``).

    from frametrans.scale import ray_apply
    report = ray_apply(["clips/"], "out/", "cyclegan", address="auto")

:mod:`frametrans.scale.segments` (keyframe split and lossless join, pure PyAV) needs no Ray, and
nothing here imports Ray until :func:`ray_apply` runs (it raises a one-line ``ImportError`` with the
install command when Ray is missing).
"""

from __future__ import annotations

# binds the function over the submodule of the same name (the submodule stays importable)
from frametrans.scale.ray_apply import INSTALL_HINT, ray_apply

__all__ = ["INSTALL_HINT", "ray_apply"]
