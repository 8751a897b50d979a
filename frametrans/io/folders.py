"""Find the images in a folder and map each to its place in an output folder.

``list_images`` sorts naturally (``img2.png`` before ``img10.png``), follows symbolic links (to
files and, when recursive, to folders; a link loop is visited once), and skips hidden files and
folders (names starting with ``.``, which also skips the temporary files our writers create).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import InputError
from .images import IMAGE_EXTENSIONS

__all__ = ["list_images", "output_path_for", "natural_sort_key"]

_DIGITS = re.compile(r"(\d+)")


def natural_sort_key(path: str | os.PathLike) -> tuple:
    """Sort key: case-insensitive, runs of digits compared as numbers, folder by folder.

    ``a/img2.png < a/img10.png < b/img1.png``; ties (``img01`` vs ``img1``) fall back to the text.
    """
    parts = Path(path).parts
    key = []
    for part in parts:
        pieces = _DIGITS.split(part.casefold())
        key.append(tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in pieces if p != ""))
    return (tuple(key), str(path))


def list_images(
    folder: str | os.PathLike,
    recursive: bool = False,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    *,
    on_error: Callable[[Path, str], None] | None = None,
    exclude: Iterable[str | os.PathLike] = (),
) -> list[Path]:
    """The image files in ``folder`` (recursively with ``recursive=True``), naturally sorted.

    ``extensions`` are matched case-insensitively (``.JPG`` counts). Paths are returned as
    ``folder / relative path`` (links are not resolved, so :func:`output_path_for` keeps the names
    the user sees). Raises :class:`InputError` if ``folder`` is missing or not a folder; returns an
    empty list for a folder without images (the caller decides whether that is an error).

    on_error: called with ``(path, reason)`` for a subfolder that cannot be listed (permissions)
        and for a broken symbolic link whose name has a wanted extension; the walk goes on. Without
        it, an unlistable folder raises :class:`InputError` and broken links are skipped.
    exclude: folders not to enter (e.g. the output folder when it lies inside the input folder).
    """
    root = Path(folder)
    if not root.exists():
        raise InputError(root, "no such folder")
    if not root.is_dir():
        raise InputError(root, "not a folder")
    wanted = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    found: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()
    for ex in exclude:
        try:
            st = os.stat(ex)
        except OSError:
            continue
        seen_dirs.add((st.st_dev, st.st_ino))

    def visit(directory: Path) -> None:
        try:
            st = directory.stat()
        except OSError:
            return
        if (st.st_dev, st.st_ino) in seen_dirs:  # symlink loop, the same folder linked twice, excluded
            return
        seen_dirs.add((st.st_dev, st.st_ino))
        try:
            # real folders before links to them, then by name: when one folder is reachable both
            # ways it is listed under its own path, the same on every run
            entries = sorted(os.scandir(directory),
                             key=lambda e: (_is_link(e), natural_sort_key(e.name)))
        except OSError as exc:
            reason = f"cannot list folder: {exc.strerror or exc}"
            if on_error is None or directory == root:
                raise InputError(directory, reason) from None
            on_error(directory, reason)
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
                is_file = entry.is_file(follow_symlinks=True)
            except OSError:  # e.g. a link loop (ELOOP) or an unreachable target
                is_dir = is_file = False
            wanted_name = os.path.splitext(entry.name)[1].lower() in wanted
            if is_dir:
                if recursive:
                    visit(directory / entry.name)
            elif is_file and wanted_name:
                found.append(directory / entry.name)
            elif wanted_name and on_error is not None:
                on_error(directory / entry.name, _why_not_a_file(directory / entry.name))

    visit(root)
    found.sort(key=lambda p: natural_sort_key(p.relative_to(root)))
    return found


def _is_link(entry: os.DirEntry) -> bool:
    try:
        return entry.is_symlink()
    except OSError:
        return True


def _why_not_a_file(path: Path) -> str:
    if path.is_symlink() and not path.exists():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"broken symbolic link (points to {target})"
    return "not a regular file (a pipe, socket or device)"


def output_path_for(
    src: str | os.PathLike,
    input_root: str | os.PathLike,
    output_root: str | os.PathLike,
    ext: str | None = None,
) -> Path:
    """Where the result for ``src`` goes: ``output_root / (src relative to input_root)``.

    ``ext`` (``"png"`` or ``".png"``) replaces the extension; None keeps it. When ``src`` is
    ``input_root`` itself (a single file given as input) the result is ``output_root / src.name``.
    Raises ``ValueError`` if ``src`` is not inside ``input_root``.
    """
    src, input_root, output_root = Path(src), Path(input_root), Path(output_root)
    if src == input_root:
        relative = Path(src.name)
    else:
        try:
            relative = src.relative_to(input_root)
        except ValueError:
            try:  # tolerate mixed relative/absolute spellings of the same folders
                relative = src.absolute().relative_to(input_root.absolute())
            except ValueError:
                raise ValueError(f"{src} is not inside the input folder {input_root}") from None
    if ext is not None:
        ext = ext if ext.startswith(".") else "." + ext
        relative = relative.with_name(relative.stem + ext)
    return output_root / relative
