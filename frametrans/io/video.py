"""Video files in and out with PyAV (FFmpeg), keeping timing, rotation and the audio track.

Reading
    :func:`probe_video` describes a file; :func:`iter_video_frames` decodes it frame by frame as
    upright RGB :class:`Frame` objects carrying the stream's own ``pts``/``time_base`` (variable
    frame rate survives). Rotation from the display matrix (phones) or an old ``rotate`` tag is
    applied to the pixels. A file cut short yields every frame it still holds, then raises
    :class:`TruncatedInputError` with the count.

Writing
    :class:`VideoWriter` encodes frames with the timestamps it is given (in the input's time base
    where the container allows), copies audio and subtitle packets from the source unchanged
    (no re-encode, byte for byte), writes to a hidden temporary file next to the destination and
    renames it on :meth:`VideoWriter.close`. Used as a context manager it closes normally, also
    on Ctrl-C (the part written so far plays), and deletes the temporary file on other errors.

Defaults: H.264 (libx264, CRF 18, preset medium, yuv420p, BT.601 tags) for mp4/m4v/mov/mkv/avi/
ts; VP9 (libvpx-vp9, CRF 32, cpu-used 4, row-mt) for webm; GIF (pal8: a 256-colour palette made for
each frame, Floyd-Steinberg dithered, see :func:`palette_frame`) for gif.
yuv420p needs an even width and height; odd-sized frames are padded by one row/column repeating
the edge (``VideoWriter.padded`` tells) so the file plays everywhere. Pass ``pix_fmt="yuv444p"``
to keep the exact size instead (less widely playable), or crop when reading back.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np

from .errors import InputError, TruncatedInputError
from . import hwdec as hardware
from .frame import Frame
from .planes import YUV420, filled_frame
from frametrans.atomic import fsync_dir, temporary_path_for

__all__ = [
    "VIDEO_EXTENSIONS",
    "WRITABLE_VIDEO_EXTENSIONS",
    "VideoInfo",
    "VideoWriter",
    "is_video",
    "iter_video_frames",
    "probe_video",
]

log = logging.getLogger(__name__)

#: Extensions treated as video (lower case, with the dot). GIF is both an image and a video.
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif", ".mpg", ".mpeg", ".ts",
        ".m2ts", ".mts", ".flv", ".wmv", ".ogv", ".3gp", ".mxf", ".vob", ".y4m",
    }
)

# extension -> (default codec, default pix_fmt, default codec options)
_X264 = ("libx264", "yuv420p", {"crf": "18", "preset": "medium"})
_WRITE_DEFAULTS: dict[str, tuple[str, str, dict[str, str]]] = {
    ".mp4": _X264,
    ".m4v": _X264,
    ".mov": _X264,
    ".mkv": _X264,
    # AVI stores no presentation timestamps: no B-frames (their reordering needs them), and
    # frames sit on a constant 1/fps grid (see VideoWriter: variable frame rate is rounded).
    ".avi": ("libx264", "yuv420p", {"crf": "18", "preset": "medium", "bf": "0"}),
    ".ts": _X264,
    ".webm": ("libvpx-vp9", "yuv420p", {"crf": "32", "b": "0", "cpu-used": "4", "row-mt": "1"}),
    ".gif": ("gif", "pal8", {}),
}
#: Extensions :class:`VideoWriter` can write.
WRITABLE_VIDEO_EXTENSIONS: frozenset[str] = frozenset(_WRITE_DEFAULTS)

# Codecs that accept odd frame sizes with subsampled chroma.
_ODD_SIZE_OK = {"libvpx", "libvpx-vp9", "libaom-av1", "libsvtav1", "librav1e", "gif"}
_AV_TIME_BASE = 1_000_000


def is_video(path: str | os.PathLike) -> bool:
    """True when the extension is a video container (``VIDEO_EXTENSIONS``; includes .gif)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


# ----------------------------------------------------------------------------------------- probe


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` finds out about a file.

    width, height: size of the frames :func:`iter_video_frames` yields (after rotation).
    fps:           average frame rate (``average_rate``), None if unknown.
    time_base:     seconds per pts unit of the video stream.
    frames:        frame count from the container header, None when not stored (mkv, webm).
    duration:      seconds, from the video stream, else the container; None if unknown.
    rotation:      counter-clockwise degrees (0, 90, 180, 270) the stored picture is turned by to
                   display it (PyAV's ``VideoFrame.rotation`` convention); already applied by
                   :func:`iter_video_frames`.
    """

    path: str
    width: int
    height: int
    fps: Fraction | None
    time_base: Fraction
    frames: int | None
    duration: float | None
    rotation: int
    has_audio: bool
    codec: str
    pix_fmt: str | None

    @property
    def frame_estimate(self) -> int | None:
        """Frames in the video: the header's count, else duration x rate; None if unknown."""
        if self.frames:
            return self.frames
        return round(self.duration * float(self.fps)) if self.duration and self.fps else None


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Describe a video file (decodes at most its first frame, to read the display rotation)."""
    path = Path(path)
    container = _open_input(path)
    with container:
        stream = _video_stream(container, path)
        rotation = _first_frame_rotation(container, stream) or _metadata_rotation(stream)
        width, height = stream.codec_context.width, stream.codec_context.height
        if rotation in (90, 270):
            width, height = height, width
        duration = _stream_duration(stream)
        if duration is None and container.duration:
            duration = container.duration / _AV_TIME_BASE
        return VideoInfo(
            path=str(path),
            width=width,
            height=height,
            fps=stream.average_rate or stream.guessed_rate or None,
            time_base=stream.time_base,
            frames=stream.frames or None,
            duration=duration,
            rotation=rotation,
            has_audio=any(s.type == "audio" for s in container.streams),
            codec=stream.codec_context.name,
            pix_fmt=stream.codec_context.pix_fmt,
        )


# ------------------------------------------------------------------------------------------ read


def gif_container_options(path: str | os.PathLike) -> dict[str, str]:
    """FFmpeg GIF muxer options that keep an animated GIF's own playback when it is written as GIF
    again: ``loop`` (its loop count: none stored = play once = -1, 0 = forever, N = N more times)
    and ``final_delay`` (its last frame's delay in centiseconds; FFmpeg would otherwise end on one
    frame period at the average rate). Empty when ``path`` is not a GIF that reads this way."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.format != "GIF":
                return {}
            loop = im.info.get("loop")
        options = {"loop": str(-1 if loop is None else int(loop))}
        with av.open(str(path)) as container:
            last = None
            for packet in container.demux(container.streams.video[0]):
                if packet.size:
                    last = packet
        if last is not None and last.duration and last.time_base:
            options["final_delay"] = str(max(0, round(last.duration * last.time_base * 100)))
        return options
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, UnidentifiedImageError,
            Image.DecompressionBombError, av.FFmpegError):  # Pillow's errors: keep FFmpeg's defaults
        return {}


def writes_planes(path: str | os.PathLike, codec: str | None = None, pix_fmt: str | None = None) -> bool:
    """Whether a :class:`VideoWriter` for ``path`` with these settings encodes 8-bit yuv420p, so that
    YUV 4:2:0 planes lose nothing on the way to it (GIF, yuv444p, RGB or 10-bit outputs: False)."""
    ext = Path(path).suffix.lower()
    if ext not in _WRITE_DEFAULTS:
        return False
    default_codec, default_pix_fmt, _ = _WRITE_DEFAULTS[ext]
    codec = codec or default_codec
    return (pix_fmt or (default_pix_fmt if codec == default_codec else "yuv420p")) == "yuv420p"


def iter_video_frames(path: str | os.PathLike, planes: bool = False, hwdec: int | None = None) -> Iterator[Frame]:
    """Decode the first video stream as upright (H, W, 3) uint8 RGB :class:`Frame` objects.

    planes: frames of a yuv420p/yuvj420p stream with even sides and no rotation carry their
    decoder's planes (:class:`~frametrans.io.planes.YUV420`) as ``image`` instead of RGB: the runner
    converts them on its device (``RunnerOptions.yuv``). Other frames are RGB as usual.
    hwdec: decode on NVDEC of this CUDA device where available (:mod:`frametrans.io.hwdec`; the
    same frames); None: in software.

    Each frame keeps the stream's ``pts`` and ``time_base``; ``alpha`` is set for sources with an
    alpha channel (GIF, VP9/ProRes with alpha). Memory: one decoded frame at a time (plus the
    decoder's own lookahead). Raises :class:`InputError` for unreadable files, no video stream
    or zero frames; for a truncated file, yields every decodable frame and then raises
    :class:`TruncatedInputError` (``frames_read`` = the number yielded). Closing the generator
    early closes the file.
    """
    path = Path(path)
    container, stream, hw = _open_stream(path, hwdec)
    try:
        fallback_rotation = _metadata_rotation(stream)
        decoder = _Decoder(container, stream, path)
        count = 0
        last: av.VideoFrame | None = None
        for av_frame in decoder:
            try:
                frame = _to_frame(av_frame, count, path, stream, fallback_rotation, planes, hw)
            except (ValueError, TypeError, av.FFmpegError) as exc:
                raise InputError(
                    path, f"frame {count}: cannot convert pixel format "
                    f"{av_frame.format.name} to RGB ({_ffmpeg_message(exc)})") from None
            if hw and count == 0:
                hardware.note_decoder(stream, path)
            yield frame
            last = av_frame
            count += 1
        reason = decoder.truncation or _missing_tail(stream, last)
        if reason:
            raise TruncatedInputError(path, f"{reason}; read {count} frames", frames_read=count)
        if count == 0:
            raise InputError(path, "the video stream has no decodable frames")
    finally:
        container.close()


def _open_stream(path: Path, hwdec: int | None) -> tuple[av.container.InputContainer, av.VideoStream, bool]:
    """(container, its first video stream, decoded on NVDEC) for reading ``path`` (both readers)."""
    container, hw = hardware.open_decoding(path, hwdec, _open_input)
    try:
        stream = _video_stream(container, path)
    except BaseException:
        container.close()
        raise
    if not hw:
        stream.thread_type = "AUTO"  # frame threads: decoding keeps up with big frames
    return container, stream, hw


class _Decoder:
    """Iterate decoded frames; remembers why decoding stopped early (``truncation``).

    A packet the demuxer flags as corrupt is decoded only if more packets follow (damage in the
    middle: decode what can be decoded, as ffmpeg does). Corrupt packets at the very end are the
    cut-off tail of a truncated file: they are dropped, the decoder is flushed so every complete
    frame comes out, and the file is reported as truncated. Demuxer errors end the stream the same
    way. (With frame threading, feeding the partial packet would make FFmpeg drop the frames
    still in flight, so it must not reach the decoder.)
    """

    def __init__(self, container: av.container.InputContainer, stream: av.VideoStream, path: Path):
        self.container, self.stream, self.path = container, stream, path
        self.truncation: str | None = None
        self._warned = False

    def __iter__(self) -> Iterator[av.VideoFrame]:
        held: list[av.Packet] = []  # corrupt packets waiting to see whether anything follows
        demux = self.container.demux(self.stream)
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                break
            except av.FFmpegError as exc:
                self.truncation = f"read error ({_ffmpeg_message(exc)})"
                break
            if packet.size == 0:  # the demuxer's end-of-stream marker; we flush ourselves below
                continue
            if packet.is_corrupt:
                held.append(packet)
                continue
            for p in held:
                yield from self._decode(p)
            held.clear()
            yield from self._decode(packet)
        if held and self.truncation is None:
            self.truncation = "file ends inside a frame (cut off)"
        yield from self._decode(None)

    def _decode(self, packet: av.Packet | None) -> list[av.VideoFrame]:
        try:
            return self.stream.decode(packet)
        except av.EOFError:
            return []
        except av.FFmpegError as exc:
            if not self._warned:
                log.warning("%s: damaged video data skipped (%s)", self.path, _ffmpeg_message(exc))
                self._warned = True
            return []


def _to_frame(
    av_frame: av.VideoFrame, index: int, path: Path, stream: av.VideoStream, fallback_rotation: int,
    planes: bool = False, hw: bool = False,
) -> Frame:
    rotation = _normalize_rotation(av_frame.rotation) or fallback_rotation
    pts, time_base = av_frame.pts, av_frame.time_base or stream.time_base
    if hw and av_frame.format.name == "nv12":  # NVDEC's output: the software decoder's yuv420p, exactly
        av_frame = av_frame.reformat(format="yuv420p")
    yuv = YUV420.from_av(av_frame) if planes and not rotation else None
    if yuv is not None:
        return Frame(image=yuv, index=index, source=str(path), pts=pts, time_base=time_base)  # type: ignore[arg-type]
    alpha = None
    if any(c.is_alpha for c in av_frame.format.components):
        rgba = av_frame.to_ndarray(format="rgba")
        image, alpha = rgba[:, :, :3], rgba[:, :, 3]
    else:
        image = av_frame.to_ndarray(format="rgb24")
    if rotation:
        image = np.rot90(image, rotation // 90)
        if alpha is not None:
            alpha = np.rot90(alpha, rotation // 90)
    return Frame(
        image=np.ascontiguousarray(image),
        index=index,
        source=str(path),
        pts=pts,
        time_base=time_base,
        alpha=None if alpha is None else np.ascontiguousarray(alpha),
    )


def _missing_tail(stream: av.VideoStream, last: av.VideoFrame | None) -> str | None:
    """Matroska/WebM end silently when cut (no index to check against, no error). FFmpeg's muxer
    records each track's end time in a ``DURATION`` tag: compare the last frame's end with it,
    with two frames (at least 0.25 s) of slack. Other containers either report the cut
    (MP4/MOV: corrupt last packet) or state no reliable per-stream end, and are not guessed at.
    """
    expected = _duration_tag(stream)
    if last is None or last.pts is None or expected is None:
        return None
    tb = last.time_base or stream.time_base
    rate = stream.average_rate or stream.guessed_rate
    frame_seconds = Fraction(last.duration) * tb if last.duration else (1 / rate if rate else 0)
    got = float(last.pts * tb + frame_seconds)  # the tag is an absolute end time, like pts
    if expected - got > max(0.25, 2 * float(frame_seconds)):
        return f"video stops at {got:.2f} s, the file header says {expected:.2f} s (cut off?)"
    return None


# ----------------------------------------------------------------------------------------- write


def use_codec_threads(stream: av.VideoStream) -> None:
    """Let an encoder thread the way FFmpeg's own default does (frame and slice threads, as many
    as it likes). PyAV asks for slice threads only, which libx264 turns into sliced threading:
    slower on many cores than its frame threads, and files ~0.3-1.7% larger at the same CRF
    (measured 2026-12-01). x264's output stays deterministic either way."""
    stream.codec_context.thread_type = "AUTO"


def rgb_frame(image: np.ndarray) -> av.VideoFrame:
    """(H, W, 3) uint8 C-contiguous RGB -> an rgb24 :class:`av.VideoFrame`: one copy into the frame
    where its rows are not padded (0.85 against 2.4 ms at 1280x720 for ``from_ndarray``, which
    copies row by row; measured 2026-12-01), else ``from_ndarray``."""
    frame = filled_frame(image.shape[1], image.shape[0], "rgb24", [image])
    return av.VideoFrame.from_ndarray(image, format="rgb24") if frame is None else frame


def palette_frame(image: np.ndarray) -> av.VideoFrame:
    """(H, W, 3) uint8 RGB -> a ``pal8`` :class:`av.VideoFrame` with the frame's own palette (FFmpeg's
    GIF encoder stores one per frame). A frame of at most 256 colours keeps them exactly; others
    get 256 colours from Pillow's fast octree, each pixel mapped to them with Floyd-Steinberg
    dithering. On the sample clip (640x360) that keeps 31.4 dB against the frames (the fixed 3-3-2
    ``rgb8`` palette: 21.3 dB, with coloured dither noise over flat areas) for ~20 ms a frame and
    files ~35% larger. The octree gives frames of a narrow range (dark, low contrast) a handful of
    colours (the sample frame darkened 8x: 8 colours, 36.1 dB); those get a median-cut palette of
    the frame at half size instead (256 colours, 45.6 dB, 13 ms). Measured 2026-12-02, AMD EPYC Zen 4."""
    from PIL import Image

    rgb = Image.fromarray(image)
    colours = np.zeros((256, 4), np.uint8)
    colours[:, 0] = 255  # ARGB, opaque
    few = rgb.getcolors(256)  # None: more than 256 colours
    if few is not None:  # Pillow's mapping to a given palette is approximate: look each one up
        packed = (image[..., 0].astype(np.int32) << 16) | (image[..., 1].astype(np.int32) << 8) | image[..., 2]
        keys = np.sort(np.array([(r << 16) | (g << 8) | b for _, (r, g, b) in few], np.int32))
        colours[:len(keys), 1:] = np.stack([keys >> 16, (keys >> 8) & 255, keys & 255], -1)
        return av.VideoFrame.from_ndarray((np.searchsorted(keys, packed).astype(np.uint8), colours),
                                          format="pal8")
    palette = rgb.quantize(256, method=Image.Quantize.FASTOCTREE)
    if len(palette.getcolors(256) or ()) < 256:  # the octree collapses narrow ranges (a dark frame: 8)
        palette = rgb.reduce(2).quantize(256, method=Image.Quantize.MEDIANCUT)
    mapped = rgb.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
    rgb_palette = np.frombuffer(bytes(mapped.getpalette() or []), np.uint8)[:768].reshape(-1, 3)
    colours[:len(rgb_palette), 1:] = rgb_palette
    return av.VideoFrame.from_ndarray((np.asarray(mapped), colours), format="pal8")


class VideoWriter:
    """Encode frames into a video file, keeping timestamps and copying audio/subtitles.

    path:              output file; container from the extension (``WRITABLE_VIDEO_EXTENSIONS``).
    fps:               declared frame rate, and the clock for frames written without ``pts``.
                       Default: the video rate of ``copy_streams_from``, else 25.
    time_base:         time base for the encoder and, where the container allows, the stream
                       (pass the input's: timestamps are then kept exactly). Default: the first
                       written frame's time base, else ``1/fps``. GIF always uses 1/100 s.
    codec, pix_fmt:    override the container's default encoder / pixel format.
    crf, preset:       quality / speed for x264-like encoders (``crf`` also for VP9).
    options:           extra encoder options (strings), e.g. ``{"tune": "film"}``.
    width, height:     optional declared frame size; frames of another size are refused.
    copy_streams_from: a media file whose audio and subtitle streams are remuxed unchanged
                       (packets byte for byte, timestamps kept). Streams the output container
                       cannot hold are skipped with a warning (``skipped_streams``), or raise
                       ``ValueError`` with ``strict_copy=True``.

    Frames are (H, W, 3) RGB or (H, W, 1) gray uint8, all the same size. Nothing is written until
    the first frame; the file appears under ``path`` only when :meth:`close` succeeds.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fps: Fraction | float | None = None,
        time_base: Fraction | None = None,
        codec: str | None = None,
        crf: int | None = None,
        preset: str | None = None,
        pix_fmt: str | None = None,
        options: dict[str, str] | None = None,
        container_options: dict[str, str] | None = None,
        copy_streams_from: str | os.PathLike | None = None,
        strict_copy: bool = False,
        width: int | None = None,
        height: int | None = None,
    ) -> None:
        self.path = Path(path)
        ext = self.path.suffix.lower()
        if ext not in _WRITE_DEFAULTS:
            raise ValueError(
                f"{self.path}: cannot write video with extension {ext or '(none)'!r}; "
                f"use one of {', '.join(sorted(_WRITE_DEFAULTS))}"
            )
        default_codec, default_pix_fmt, default_options = _WRITE_DEFAULTS[ext]
        self.codec = codec or default_codec
        self.pix_fmt = pix_fmt or (default_pix_fmt if self.codec == default_codec else None)
        self.codec_options = dict(default_options) if self.codec == default_codec else {}
        if crf is not None:
            self.codec_options["crf"] = str(int(crf))
        if preset is not None:
            self.codec_options["preset"] = str(preset)
        self.codec_options.update({str(k): str(v) for k, v in (options or {}).items()})
        self.container_options = {str(k): str(v) for k, v in (container_options or {}).items()}
        self.fps = Fraction(fps).limit_denominator(1_000_000) if fps is not None else None
        self.time_base = Fraction(time_base) if time_base is not None else None
        self.copy_streams_from = Path(copy_streams_from) if copy_streams_from is not None else None
        self.strict_copy = strict_copy

        self.frames_written = 0
        self.padded = False  # True when odd-sized frames were padded to even (see module doc)
        self.copied_streams: list[str] = []
        self.skipped_streams: list[str] = []
        self._tmp = temporary_path_for(self.path, suffix=ext)  # keeps the extension: FFmpeg
        self._container: av.container.OutputContainer | None = None  # picks the muxer by it
        self._stream: av.VideoStream | None = None
        # (height, width) every frame must have: declared, else set by the first frame
        self._size: tuple[int, int] | None = (int(height), int(width)) if width and height else None
        self._codec_tb: Fraction | None = None
        self._last_pts: int | None = None
        self._end_time = 0.0  # seconds: end of the last frame written
        self._source: av.container.InputContainer | None = None
        self._copier: StreamCopier | None = None
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)

    # -- context manager ------------------------------------------------------------------------

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, KeyboardInterrupt) and self.frames_written:
            try:  # keep what was encoded so far as a playable file
                self.close(partial=True)
            except Exception:
                log.exception("%s: could not finalize the partial video", self.path)
                self.abort()
        else:
            self.abort()

    # -- writing --------------------------------------------------------------------------------

    def write(self, image: np.ndarray | YUV420, pts: int | None = None, time_base: Fraction | None = None) -> None:
        """Encode one (H, W, 3) RGB or (H, W, 1)/(H, W) gray uint8 frame, or its YUV 4:2:0 planes
        (:class:`~frametrans.io.planes.YUV420`: handed to the encoder as they are when the stream
        is in their pixel format, else converted to RGB first).

        ``pts`` in ``time_base`` units (seconds = pts * time_base) places the frame in time;
        without it frames follow each other at ``fps``. Timestamps must increase; one that
        rounds onto the previous frame's tick in the output time base is moved one tick later.
        """
        if self._closed:
            raise ValueError(f"{self.path}: writer is closed")
        if not isinstance(image, YUV420):
            image = self._check_image(image)
        elif self._size is not None and image.shape[:2] != self._size:
            image = self._check_image(image.rgb())  # the size error
        if self._container is None:
            self._open(image.shape[0], image.shape[1], time_base)
        assert self._stream is not None and self._codec_tb is not None
        if pts is None:
            pts, time_base = self.frames_written, 1 / self._rate()
        elif time_base is None:
            time_base = self._codec_tb
        out_pts = int(round(Fraction(pts) * Fraction(time_base) / self._codec_tb))
        if self._last_pts is not None and out_pts <= self._last_pts:
            out_pts = self._last_pts + 1
        frame = self._av_frame(image)
        frame.pts = out_pts
        frame.time_base = self._codec_tb
        self._mux_video(self._stream.encode(frame))
        self._last_pts = out_pts
        self._end_time = float(out_pts * self._codec_tb + 1 / self._rate())
        self.frames_written += 1

    def write_frame(self, frame: Frame) -> None:
        """:meth:`write` with the frame's own image and timestamp (alpha is not stored)."""
        self.write(frame.image, frame.pts, frame.time_base)

    def close(self, *, partial: bool = False) -> Path:
        """Flush the encoder, copy the remaining audio/subtitle packets, finish the file and move
        it to ``path``. With ``partial=True`` (the run was cut short) the copied streams stop at
        the last frame instead of running to the source's end. Returns ``path``.

        Raises ``ValueError`` if no frame was written (nothing is left on disk then).
        """
        if self._closed:
            return self.path
        if self._container is None:
            self.abort()
            raise ValueError(f"{self.path}: no frames were written, no video created")
        try:
            assert self._stream is not None
            self._mux_video(self._stream.encode(None))
            self._copy_until(self._end_time if partial else None)
            self._container.close()
            self._container = None
            _fsync_file(self._tmp)
            os.replace(self._tmp, self.path)
            fsync_dir(self.path.parent)
        except BaseException:
            self.abort()
            raise
        finally:
            self._close_source()
        self._closed = True
        return self.path

    def close_as(self, path: str | os.PathLike, *, partial: bool = True) -> Path:
        """:meth:`close`, but finish the file under another name, e.g. ``clip.partial.mp4``
        after Ctrl-C. The extension must be the same (the container was chosen by it)."""
        path = Path(path)
        if path.suffix.lower() != self.path.suffix.lower():
            raise ValueError(f"{path}: must keep the extension {self.path.suffix!r} of {self.path}")
        self.path = path
        return self.close(partial=partial)

    def abort(self) -> None:
        """Stop without producing ``path``: close everything and delete the temporary file."""
        self._closed = True
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the file is being thrown away; its trailer does not matter
                pass
            self._container = None
        self._close_source()
        try:
            self._tmp.unlink()
        except FileNotFoundError:
            pass

    # -- internals ------------------------------------------------------------------------------

    def _av_frame(self, image: np.ndarray | YUV420) -> av.VideoFrame:
        assert self._stream is not None
        if isinstance(image, YUV420):
            if image.pix_fmt == self._stream.pix_fmt and image.bt601_limited() and not self.padded:
                return image.to_av()
            image = image.rgb()
        if self.padded:
            h, w = image.shape[:2]
            image = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if self._stream.pix_fmt == "pal8":
            return palette_frame(image)
        return rgb_frame(image)

    def _check_image(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[:, :, None]
        if image.dtype != np.uint8:
            raise ValueError(f"{self.path}: video frames must be uint8, got {image.dtype}")
        if image.ndim != 3 or image.shape[2] not in (1, 3):
            raise ValueError(
                f"{self.path}: frames must be (H, W, 3) RGB or (H, W, 1) gray, got {image.shape}"
            )
        if image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        if self._size is not None and image.shape[:2] != self._size:
            raise ValueError(
                f"{self.path}: frame {self.frames_written} is {image.shape[1]}x{image.shape[0]}, "
                f"but the video is {self._size[1]}x{self._size[0]}"
            )
        return np.ascontiguousarray(image)

    def _rate(self) -> Fraction:
        return self.fps or Fraction(25)

    def _open(self, height: int, width: int, first_time_base: Fraction | None) -> None:
        self._size = (height, width)
        source = None
        if self.copy_streams_from is not None:
            source = _open_input(self.copy_streams_from)
            self._source = source
            if self.fps is None:
                v = next((s for s in source.streams.video if not _is_cover_art(s)), None)
                if v is not None and v.average_rate:
                    self.fps = Fraction(v.average_rate)
        ext = self.path.suffix.lower()
        container_options = {"movflags": "+faststart"} if ext in (".mp4", ".m4v", ".mov") else {}
        container_options.update(self.container_options)
        try:
            self._container = av.open(str(self._tmp), "w", options=container_options)
            stream = self._container.add_stream(
                self.codec, rate=self._rate(), options=dict(self.codec_options)
            )
            use_codec_threads(stream)
            if self.codec == "gif":
                self._codec_tb = Fraction(1, 100)
            elif ext == ".avi":
                self._codec_tb = 1 / self._rate()
            else:
                first = Fraction(first_time_base) if first_time_base else None
                self._codec_tb = self.time_base or first or 1 / self._rate()
            stream.codec_context.time_base = self._codec_tb
            stream.time_base = self._codec_tb
            if self.pix_fmt:
                stream.pix_fmt = self.pix_fmt
            pix_fmt = stream.pix_fmt
            subsampled = av.VideoFormat(pix_fmt).chroma_width(width) != width or (
                av.VideoFormat(pix_fmt).chroma_height(height) != height
            )
            if (width % 2 or height % 2) and subsampled and self.codec not in _ODD_SIZE_OK:
                self.padded = True
                log.info("%s: %dx%d padded to even size for %s", self.path, width, height, pix_fmt)
            stream.width = width + (width % 2 if self.padded else 0)
            stream.height = height + (height % 2 if self.padded else 0)
            if self.codec != "gif" and not av.VideoFormat(pix_fmt).is_rgb:
                stream.codec_context.colorspace = 6  # AVCOL_SPC_SMPTE170M: BT.601, as converted
                stream.codec_context.color_range = 1  # AVCOL_RANGE_MPEG (limited)
            self._stream = stream
            if source is not None:
                self._add_copy_streams(source)
        except BaseException:
            self.abort()
            raise

    def _add_copy_streams(self, source: av.container.InputContainer) -> None:
        assert self._container is not None
        self._copier = StreamCopier(self._container, source, self.copy_streams_from, self.path,
                                    strict=self.strict_copy)
        self.copied_streams.extend(self._copier.copied)
        self.skipped_streams.extend(self._copier.skipped)

    def _mux_video(self, packets: list[av.Packet]) -> None:
        assert self._container is not None
        for packet in packets:
            if packet.dts is not None and packet.time_base:
                self._copy_until(float(packet.dts * packet.time_base))
            self._container.mux(packet)

    def _copy_until(self, seconds: float | None) -> None:
        """Mux copied packets up to ``seconds`` (None: all), keeping the files interleaved."""
        if self._copier is not None and self._container is not None:
            self._copier.copy_until(seconds)

    def _close_source(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None
            self._copier = None


class StreamCopier:
    """The audio and subtitle streams of ``source``, muxed into ``out`` unchanged, up to a time.

    Streams are added to ``out`` from the source's templates (codec parameters, metadata such as
    language and title, disposition flags). A stream the output container cannot hold is skipped
    with a warning (its label in ``skipped``), or raises ``ValueError`` with ``strict=True``.
    Call :meth:`copy_until` with each video packet's time to keep the file interleaved, and with
    ``None`` at the end. Used by :class:`VideoWriter` and by the segment joiner of
    :mod:`frametrans.io.segments`.
    """

    def __init__(self, out: av.container.OutputContainer, source: av.container.InputContainer,
                 source_path: str | os.PathLike | None, dst: Path, *, strict: bool = False) -> None:
        self.out = out
        self.source_path = source_path
        self.copied: list[str] = []
        self.skipped: list[str] = []
        self._map: dict[int, av.stream.Stream] = {}
        inputs = []
        for s in source.streams:
            if s.type not in ("audio", "subtitle"):
                continue
            label = f"#{s.index} {s.type} {s.codec_context.name if s.codec_context else '?'}"
            try:
                stream = out.add_stream_from_template(s)
            except (ValueError, av.FFmpegError) as exc:
                message = f"{source_path}: {s.type} stream {label} cannot be stored in {dst.suffix} ({exc})"
                if strict:
                    raise ValueError(message) from None
                log.warning("%s; skipped", message)
                self.skipped.append(label)
                continue
            stream.metadata.update(s.metadata)  # language, title, handler name
            stream.disposition = s.disposition  # default / forced / commentary flags
            self._map[s.index] = stream
            self.copied.append(label)
            inputs.append(s)
        self._packets: Iterator[av.Packet] | None = source.demux(*inputs) if inputs else None
        self._pending: av.Packet | None = None

    def copy_until(self, seconds: float | None) -> None:
        """Mux the source's packets whose time is at most ``seconds`` (None: all that are left)."""
        while self._packets is not None:
            packet, self._pending = self._pending, None
            if packet is None:
                try:
                    packet = next(self._packets)
                except StopIteration:
                    self._packets = None
                    return
                except av.FFmpegError as exc:
                    log.warning("%s: copying streams stopped early (%s)", self.source_path,
                                _ffmpeg_message(exc))
                    self._packets = None
                    return
            if packet.size == 0 or (packet.dts is None and packet.pts is None):
                continue
            stamp = packet.dts if packet.dts is not None else packet.pts
            if seconds is not None and float(stamp * packet.time_base) > seconds:
                self._pending = packet
                return
            packet.stream = self._map[packet.stream_index]
            self.out.mux(packet)


# --------------------------------------------------------------------------------------- helpers


def _open_input(path: Path, hwaccel: object = None) -> av.container.InputContainer:
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a folder, not a video file")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file (0 bytes)")
    try:
        return av.open(str(path), "r") if hwaccel is None else av.open(str(path), "r", hwaccel=hwaccel)
    except av.EOFError:
        raise InputError(path, "no video data: the file ends before the first frame "
                               "(zero frames, or cut short)") from None
    except PermissionError:
        raise InputError(path, "permission denied (the file is not readable)") from None
    except av.FFmpegError as exc:
        hint = ""
        if path.suffix.lower() in (".mp4", ".m4v", ".mov"):
            hint = " (an MP4/MOV cut short before its index was written cannot be read)"
        raise InputError(path, f"cannot open as video: {_ffmpeg_message(exc)}{hint}") from None


def _is_cover_art(stream: av.stream.Stream) -> bool:
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    for stream in container.streams.video:
        if not _is_cover_art(stream):
            return stream
    kinds = ", ".join(
        f"{s.type} {s.codec_context.name if s.codec_context else ''}".strip() for s in container.streams
    )
    raise InputError(path, f"no video stream (streams: {kinds or 'none'})")


def _first_frame_rotation(container: av.container.InputContainer, stream: av.VideoStream) -> int | None:
    try:
        for frame in container.decode(stream):
            return _normalize_rotation(frame.rotation)
    except av.FFmpegError:
        return None
    return None


def _metadata_rotation(stream: av.VideoStream) -> int:
    """Old files store ``rotate=90`` (clockwise, to display) as a tag; FFmpeg may still export
    it (Matroska upper-cases tag names). Returned counter-clockwise, like the display matrix."""
    value = next((v for k, v in stream.metadata.items() if k.lower() == "rotate"), None)
    try:
        return _normalize_rotation(-float(value)) if value is not None else 0
    except ValueError:
        return 0


def _normalize_rotation(degrees: float) -> int:
    """Nearest multiple of 90 in [0, 360)."""
    return int(round(degrees / 90.0)) * 90 % 360


_DURATION_TAG = re.compile(r"^(\d+):(\d{2}):(\d{2}(?:\.\d+)?)$")


def _stream_duration(stream: av.VideoStream) -> float | None:
    """Duration of the video stream in seconds from the header (``duration``, else Matroska's
    ``DURATION`` tag), None when the file does not say."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return _duration_tag(stream)


def _duration_tag(stream: av.VideoStream) -> float | None:
    """Matroska's per-track ``DURATION`` tag (``HH:MM:SS.nnnnnnnnn``) in seconds, or None."""
    tag = next((v for k, v in stream.metadata.items() if k.upper() == "DURATION"), None)
    match = _DURATION_TAG.match(tag.strip()) if tag else None
    if not match:
        return None
    h, m, s = match.groups()
    return int(h) * 3600 + int(m) * 60 + float(s)


def _ffmpeg_message(exc: BaseException) -> str:
    message = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(message).split())


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

