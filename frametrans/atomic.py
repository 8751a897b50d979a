"""Atomic file writes: write to a temporary name in the same folder, then rename over the target.

An interrupted run (Ctrl-C, kill, full disk) never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union


@contextlib.contextmanager
def atomic_path(path: Union[str, os.PathLike], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync and rename it to ``path``.

    suffix: extension for the temporary name (writers that pick the format from it need one);
        defaults to the target's own suffix.
    On an exception the temporary file is removed and the target is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.stem[:40]}.", suffix=(suffix or path.suffix) + ".part", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp (and writers that recreate the file, like safetensors) leave 0600: give the file
        # the mode a plain open() would have
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: Union[str, os.PathLike], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
