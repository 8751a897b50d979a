"""Atomic file writes: write to a hidden temporary name in the same folder, then rename over the target.

An interrupted run (Ctrl-C, kill, full disk) never leaves a half-written file under the final name.
Every writer in frametrans (images, videos, checkpoints, training state, logs) goes through here, so
temporary files are always named ``.NAME.1a2b3c4d<suffix>`` beside their target; the Ray workers rely
on that to clean up after a killed try.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional, Set, Tuple, Union

PathLike = Union[str, os.PathLike]


def temporary_path_for(path: Path, suffix: str) -> Path:
    """A hidden, unique sibling of ``path`` (``.name.1a2b3c4d<suffix>``): same folder, hence same
    file system, so ``os.replace`` onto ``path`` is atomic. Hidden, so folder listings skip it."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")


def remove_temporaries(path: PathLike) -> None:
    """Delete the temporary files a killed writer of ``path`` left beside it (``.NAME.1a2b3c4d...``,
    see :func:`temporary_path_for`). Only for outputs nobody else is writing."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{8}}(\..*)?")
    for p in path.parent.glob(f".{glob.escape(path.name)}.*"):
        if pattern.fullmatch(p.name):
            with contextlib.suppress(OSError):
                p.unlink()


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "", sync_folder: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it, rename it to ``path`` and fsync
    the folder.

    suffix: ending of the temporary name (writers that pick the format from the extension need one);
        defaults to the target's own suffix.
    sync_folder: False leaves the folder's fsync (which makes the rename itself durable) to the
        caller, who writes many files into one folder and syncs it once at the end (see
        :class:`FolderSync`). The file's own fsync before the rename stays, so after a crash the
        final name holds the whole file or nothing.
    The temporary file exists (empty, created exclusively) when the block starts. On an exception it
    is removed and the target is left as it was.
    """
    path = Path(path)
    tmp, fd = _new_temporary(path, suffix or path.suffix)
    os.close(fd)
    with _replacing(tmp, path, sync_folder):
        yield tmp
        # writers that recreate the file (safetensors does) leave it 0600: restore the usual mode
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


def _new_temporary(path: Path, suffix: str) -> Tuple[Path, int]:
    """Create the temporary sibling of ``path`` (and missing parent folders); returns it and its
    open descriptor. O_EXCL: never clobber; mode 0o666 so the umask gives the usual permissions."""
    tmp = temporary_path_for(path, suffix)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        return tmp, os.open(tmp, flags, 0o666)
    except FileNotFoundError:  # the folder is missing (the usual case needs no mkdir syscalls)
        path.parent.mkdir(parents=True, exist_ok=True)
    return tmp, os.open(tmp, flags, 0o666)


@contextlib.contextmanager
def _replacing(tmp: Path, path: Path, sync_folder: bool) -> Iterator[None]:
    """Run the block (which fills and fsyncs ``tmp``); then rename ``tmp`` over ``path`` and, with
    ``sync_folder``, fsync the folder. On an exception ``tmp`` is removed and ``path`` left alone."""
    try:
        yield
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync_folder:
        fsync_dir(path.parent)


class FolderSync:
    """The folders a batch of ``sync_folder=False`` writes went to, synced once each by :meth:`sync`.

    One fsync per folder instead of one per file: on ext4 each folder fsync waits for a journal
    commit, and a writer pool's threads queue on the same folder.
    """

    def __init__(self) -> None:
        self._folders: Set[Path] = set()
        self._lock = threading.Lock()

    def add(self, path: PathLike) -> None:
        """Record the folder of ``path`` (from any thread)."""
        with self._lock:
            self._folders.add(Path(path).parent)

    def sync(self) -> None:
        """fsync every recorded folder, then forget them."""
        with self._lock:
            folders, self._folders = self._folders, set()
        for folder in sorted(folders):
            fsync_dir(folder)


def atomic_write_bytes(path: PathLike, data: bytes, sync_folder: bool = True,
                       before_commit: Optional[Callable[[], None]] = None) -> None:
    """Write ``data`` (bytes, or any contiguous bytes-like object) to ``path`` so that readers see
    either the old file or the whole new one (``sync_folder``: see :func:`atomic_path`).
    ``before_commit`` is called once the bytes are in the temporary file, before it replaces
    ``path``; whatever it raises is raised with nothing left behind.

    The same steps as :func:`atomic_path` on one file descriptor: the temporary file is created
    (exclusively, mode 0o666 less the umask), written, fsynced and closed, then renamed. A writer
    pool calls this for every image of a folder, so the syscalls per file count.
    """
    path = Path(path)
    tmp, fd = _new_temporary(path, ".tmp")
    with _replacing(tmp, path, sync_folder):
        try:
            view = memoryview(data).cast("B")  # any contiguous bytes-like object
            while view:
                view = view[os.write(fd, view):]
            if before_commit is not None:
                before_commit()
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
