"""Bundled models: small generators trained with ``frametrans train``, shipped as package data.

Each is ``frametrans/zoo/<name>.safetensors``; what it does, what it was trained on and how good it
is live in the file's own provenance metadata (see :func:`frametrans.checkpoint.read_info`).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

_HERE = Path(__file__).resolve().parent


def names() -> List[str]:
    """Names of the bundled models, e.g. ``["cyclegan", "munit", "pix2pix", "predictor"]``."""
    return sorted(p.stem for p in _HERE.glob("*.safetensors"))


def path_of(name: str) -> Optional[Path]:
    """Path of the bundled model called ``name``, or None."""
    if not name or "/" in name or "\\" in name:
        return None
    path = _HERE / f"{name}.safetensors"
    return path if path.is_file() else None
