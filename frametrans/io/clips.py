"""A clip: a video file or a folder of frames in natural order, read as one stream of frames."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from frametrans.io.errors import InputError
from frametrans.io.frame import Frame


def iter_clip(path: str | Path) -> Iterator[Frame]:
    """Frames of a video (``frametrans.io.video``) or of a folder of images (natural order, e.g.
    ``2.png`` before ``10.png``; ``index`` is the position in the folder). InputError when the
    path is missing, an empty folder, or neither."""
    from frametrans.io import folders, images, video

    path = Path(path)
    if path.is_dir():
        files = folders.list_images(path)
        if not files:
            raise InputError(path, "folder holds no images")
        for i, f in enumerate(files):
            frame = images.read_image(f)
            frame.index = i
            yield frame
        return
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if video.is_video(path):
        yield from video.iter_video_frames(path)
        return
    raise InputError(path, "not a video or a folder of frames")
