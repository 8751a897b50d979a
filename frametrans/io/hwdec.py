"""Hardware video decoding: NVDEC (CUDA) through PyAV's hwaccel, where the machine and the FFmpeg
build have it (``frametrans apply --hwdec``).

Decoded frames come back to host memory as nv12, which the reader turns into yuv420p (the same
samples rearranged, exactly what the software decoder gives), so a hardware-decoded frame converts
like a software-decoded one. A codec NVDEC cannot decode (or a machine without CUDA) decodes in
software, said once per process.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Callable, Optional, Tuple

import av

log = logging.getLogger(__name__)

DEVICE = "cuda"
#: FFmpeg decoders NVDEC has; a stream in another codec decodes in software, with frame threads.
NVDEC_CODECS = frozenset({"h264", "hevc", "av1", "vp8", "vp9", "mpeg1video", "mpeg2video", "mpeg4", "vc1", "mjpeg"})
_said: set = set()


@functools.lru_cache(maxsize=1)
def unavailable() -> Optional[str]:
    """Why NVDEC cannot be used in this process (no CUDA device, PyAV without hwaccel), or None."""
    try:
        from av.codec.hwaccel import HWAccel, hwdevices_available
    except ImportError:
        return f"PyAV {av.__version__} has no hwaccel"
    if DEVICE not in hwdevices_available():
        return f"this FFmpeg build has no {DEVICE} device type"
    try:
        HWAccel(DEVICE).create(av.Codec("h264", "r"))
    except (av.FFmpegError, OSError, ValueError, NotImplementedError) as exc:
        return f"no CUDA device could be opened ({exc})"
    return None


def _say_once(key: str, message: str, *args: object) -> None:
    if key not in _said:
        _said.add(key)
        log.info(message, *args)


def open_decoding(path: Path, device: Optional[int], open_input: Callable[..., av.container.InputContainer]
                  ) -> Tuple[av.container.InputContainer, bool]:
    """``(container, True)`` with its video decoder on the NVDEC of CUDA device ``device`` when NVDEC
    is available and has the stream's codec (FFmpeg still falls back to software where it must),
    else ``(container, False)``, decoded in software. ``open_input(path, hwaccel=None)`` opens and
    checks the file (its errors are the reader's)."""
    container = open_input(path)
    if device is None:
        return container, False
    why = unavailable()
    if why is not None:
        _say_once("unavailable", "--hwdec: NVDEC unavailable (%s); decoding in software", why)
        return container, False
    codec = next((s.codec_context.name for s in container.streams.video), None)
    if codec not in NVDEC_CODECS:
        _say_once(f"off:{codec}", "%s: NVDEC does not decode %s; decoding in software", path.name, codec)
        return container, False
    container.close()
    from av.codec.hwaccel import HWAccel

    return open_input(path, hwaccel=HWAccel(DEVICE, device=device, allow_software_fallback=True)), True


def note_decoder(stream: av.VideoStream, path: Path) -> None:
    """Say once per codec whether NVDEC decodes it (call after the first frame is decoded)."""
    codec = stream.codec_context.name
    if getattr(stream.codec_context, "is_hwaccel", False):
        _say_once(f"on:{codec}", "%s: decoding %s with NVDEC", path.name, codec)
    else:
        _say_once(f"off:{codec}", "%s: NVDEC does not decode this %s stream; decoding in software",
                  path.name, codec)
