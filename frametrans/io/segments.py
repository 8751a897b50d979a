"""Split a long video at keyframes, and join encoded segments back losslessly (pure PyAV).

A long clip is cut into :class:`Segment` ranges of presentation time that start on keyframes of the
source, so every worker can seek to its range and decode it on its own::

    segments = plan_segments("long.mp4", seconds=60)          # [Segment(0, None, 1536000), ...]
    frames = iter_segment_frames("long.mp4", segments[1])    # Frames with start <= pts < end
    ... each worker encodes its frames, with their own pts, into part_0001.mp4 ...
    join_segments(["part_0000.mp4", "part_0001.mp4"], "out.mp4", copy_streams_from="long.mp4")

Why nothing is dropped, duplicated or desynchronised:

- The ranges are half-open in the source's own timestamps, ``[start, end)``, and consecutive: the
  end of one is the start of the next, the first has no start and the last no end. A frame belongs to
  exactly one range whatever the GOP structure; :func:`iter_segment_frames` seeks to the keyframe
  at or before ``start``, decodes, and keeps exactly the frames whose pts fall inside (open-GOP
  leading frames before a keyframe are decoded by the previous range, which reads on past its
  end until the decoder hands out a frame at or after ``end``).
- Each part is encoded with the frames' original pts (same time base as a local run), and an
  encoder starts a part with a keyframe (an IDR frame for x264), so the parts' packets follow each
  other like one encode: :func:`join_segments` copies them into one container without re-encoding,
  checking the codec parameters match and the decode timestamps keep increasing.
- Audio and subtitles are not split at all: the join copies them from the source, packet by packet,
  exactly as :class:`frametrans.io.video.VideoWriter` does for a local run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

import av

from frametrans.io.errors import InputError, TruncatedInputError
from frametrans.io.frame import Frame
from frametrans.atomic import fsync_dir, temporary_path_for

# private helpers of the video module, shared so segments decode exactly like whole files
from frametrans.io.video import (  # noqa: F401
    StreamCopier,
    _Decoder,
    _fsync_file,
    _metadata_rotation,
    _open_input,
    _open_stream,
    _to_frame,
    _video_stream,
)

__all__ = [
    "SPLITTABLE_EXTENSIONS",
    "Segment",
    "can_split_output",
    "iter_segment_frames",
    "join_segments",
    "keyframe_pts",
    "part_suffix",
    "plan_segments",
]

log = logging.getLogger("frametrans")

PathLike = Union[str, os.PathLike]

#: Output containers whose encoded parts are joined by stream copy. Left out: GIF (palette
#: packets), AVI (no pts; frames re-timed onto a 1/fps grid) and MPEG-TS (the muxer shifts
#: timestamps by its mux delay on every write, so a part's stamps would move again when joined).
SPLITTABLE_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm"})

# Encoders known to start a new encode with a keyframe that needs nothing before it.
_SPLITTABLE_CODECS = frozenset({
    None, "libx264", "h264", "libx265", "hevc", "libvpx", "libvpx-vp9", "vp9", "libaom-av1",
    "libsvtav1", "av1", "mpeg4", "libopenh264",
})


@dataclass(frozen=True)
class Segment:
    """A range of a video's frames by presentation timestamp: ``start <= pts < end``.

    index: position in the video (0-based). start/end: pts in the video stream's time base;
    ``start`` is None for the first segment (everything from the beginning) and ``end`` None for
    the last (everything to the end). Every start but the first is a keyframe's pts.
    """

    index: int
    start: Optional[int]
    end: Optional[int]


def can_split_output(path: PathLike, codec: Optional[str] = None) -> bool:
    """True when video parts encoded for ``path`` (with ``codec``, None = the default) can be
    joined by stream copy."""
    return Path(path).suffix.lower() in SPLITTABLE_EXTENSIONS and codec in _SPLITTABLE_CODECS


def part_suffix(output: PathLike) -> str:
    """The container for the encoded parts of ``output``: its own, except MP4 for Matroska
    (Matroska stores no decode timestamps, and the join needs them to interleave B-frames)."""
    ext = Path(output).suffix.lower()
    return ".mp4" if ext == ".mkv" else ext


def keyframe_pts(path: PathLike) -> List[int]:
    """The pts of every keyframe packet of the video stream, in file order (reads the whole file's
    packets, decodes nothing). Packets without pts are skipped."""
    path = Path(path)
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        return [p.pts for p in container.demux(stream) if p.size and p.is_keyframe and p.pts is not None]


def plan_segments(path: PathLike, seconds: float, *, min_seconds: Optional[float] = None
                  ) -> List[Segment]:
    """Cut ``path`` into segments of about ``seconds`` each, starting on keyframes.

    The cut points are the keyframes found by seeking to every multiple of ``seconds`` (the
    container's index; no full read), falling back to scanning every packet when the container
    cannot seek to keyframes. A cut closer than ``min_seconds`` (default ``seconds / 2``) to the
    previous one is dropped, so a clip with few keyframes gets fewer, longer segments. A clip
    shorter than ``2 * seconds``, or without timestamps, is one segment ``(0, None, None)``.
    """
    if seconds <= 0:
        raise ValueError(f"segment length must be > 0 seconds, got {seconds}")
    min_seconds = seconds / 2 if min_seconds is None else min_seconds
    path = Path(path)
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        tb = stream.time_base
        duration = _duration_seconds(container, stream)
        if tb is None or duration is None or duration < 2 * seconds:
            return [Segment(0, None, None)]
        origin = stream.start_time or 0
        targets = [origin + int(k * seconds / tb) for k in range(1, int(duration // seconds) + 1)]
        cuts = _seek_keyframes(container, stream, targets)
    if cuts is None:
        log.info("%s: container cannot seek to keyframes; scanning its packets", path)
        keys = sorted(set(keyframe_pts(path)))
        cuts = [min((k for k in keys if k >= t), default=None) for t in targets]
    points: List[int] = []
    last = origin
    for c in sorted({c for c in cuts if c is not None}):
        if (c - last) * tb >= min_seconds and (origin + duration / tb - c) * tb >= min_seconds:
            points.append(c)
            last = c
    bounds = [None, *points, None]
    return [Segment(i, bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def _duration_seconds(container: av.container.InputContainer, stream: av.VideoStream
                      ) -> Optional[Fraction]:
    if stream.duration and stream.time_base:
        return stream.duration * stream.time_base
    if container.duration:
        return Fraction(container.duration, 1_000_000)
    return None


def _seek_keyframes(container: av.container.InputContainer, stream: av.VideoStream,
                    targets: Sequence[int]) -> Optional[List[Optional[int]]]:
    """The pts of the keyframe a backward seek to each target lands on; None if seeking does not
    land on keyframes with timestamps (the caller then scans)."""
    found: List[Optional[int]] = []
    try:
        for target in targets:
            container.seek(target, stream=stream, backward=True, any_frame=False)
            packet = next((p for p in container.demux(stream) if p.size), None)
            if packet is None:
                found.append(None)
                continue
            if not packet.is_keyframe or packet.pts is None:
                return None
            found.append(packet.pts)
    except av.FFmpegError:
        return None
    return found


# ------------------------------------------------------------------------------------------ read


def iter_segment_frames(path: PathLike, segment: Segment, planes: bool = False, hwdec: Optional[int] = None
                        ) -> Iterator[Frame]:
    """Decode the frames of ``segment``: upright RGB :class:`Frame` objects with the stream's own
    pts/time_base, exactly the ones :func:`frametrans.io.video.iter_video_frames` yields with
    ``start <= pts < end``. ``Frame.index`` counts within the segment.

    Seeks to the keyframe at or before ``start`` (which need not be a frame's own pts, nor a
    keyframe's: a resumed job starts just after its last written frame); if the container lands
    after it, decodes from the beginning instead (slower, same frames). Raises :class:`InputError` when frames have no
    timestamps (such a video cannot be split), :class:`TruncatedInputError` when the last
    segment's file is cut short (after yielding what decodes). ``planes``, ``hwdec``: as for
    :func:`~frametrans.io.video.iter_video_frames`.
    """
    path = Path(path)
    count = 0
    for attempt in ("seek", "scan"):
        container, stream, hw = _open_stream(path, hwdec)
        try:
            rotation = _metadata_rotation(stream)
            if segment.start is not None and attempt == "seek":
                container.seek(segment.start, stream=stream, backward=True, any_frame=False)
            decoder = _Decoder(container, stream, path)
            reached_end = False
            first = True
            for av_frame in decoder:
                pts = av_frame.pts
                if pts is None and (segment.start is not None or segment.end is not None):
                    raise InputError(path, "frames without timestamps: this video cannot be split")
                if first and attempt == "seek" and segment.start is not None and pts > segment.start:
                    # the seek landed after the start (the first frame decoded is past it)
                    log.warning("%s: seeking overshot pts %d; decoding from the start",
                                path, segment.start)
                    break  # -> "scan"
                first = False
                if segment.start is not None and pts < segment.start:
                    continue
                if segment.end is not None and pts >= segment.end:
                    reached_end = True
                    break
                yield _to_frame(av_frame, count, path, stream, rotation, planes, hw)
                count += 1
            else:
                reached_end = True
                if decoder.truncation:
                    raise TruncatedInputError(path, f"{decoder.truncation}; read {count} frames "
                                              "of this segment", frames_read=count)
            if reached_end:
                return
        finally:
            container.close()


# ------------------------------------------------------------------------------------------ join


def join_segments(parts: Sequence[PathLike], dst: PathLike, *,
                  copy_streams_from: Optional[PathLike] = None, strict_copy: bool = False,
                  expected_frames: Optional[int] = None, partial: bool = False) -> int:
    """Concatenate the video packets of ``parts`` (in order) into ``dst`` by stream copy, then the
    audio and subtitle packets of ``copy_streams_from`` (unchanged, interleaved by time).

    The parts must come from the same encoder settings (same codec, size, pixel format and
    codec extradata, e.g. H.264 SPS/PPS) and hold consecutive, increasing timestamps; each must
    start with a keyframe. ``dst`` appears only when complete (temporary name, then rename).
    Returns the number of video packets (frames) written. Raises ``ValueError`` when the parts
    do not fit together, or hold another number of packets than ``expected_frames`` (then
    ``dst`` is not touched). ``partial``: the parts are the beginning of a video (an interrupted
    job): the copied streams stop where the last frame ends instead of running to their end.
    """
    if not parts:
        raise ValueError(f"{dst}: no segments to join")
    dst = Path(dst)
    ext = dst.suffix.lower()
    tmp = temporary_path_for(dst, suffix=ext)
    options = {"movflags": "+faststart"} if ext in (".mp4", ".m4v", ".mov") else {}
    source = _open_input(Path(copy_streams_from)) if copy_streams_from is not None else None
    out = None
    try:
        with av.open(str(parts[0])) as first:
            template = first.streams.video[0]
            out = av.open(str(tmp), "w", options=options)
            vstream = out.add_stream_from_template(template)
            vstream.time_base = template.time_base
            vstream.metadata.update(template.metadata)
            reference = _signature(template)
        copier = StreamCopier(out, source, copy_streams_from, dst, strict=strict_copy) if source else None
        written = 0
        last_dts: Optional[Fraction] = None
        video_end = Fraction(0)
        for i, part in enumerate(parts):
            with av.open(str(part)) as container:
                stream = container.streams.video[0]
                if _signature(stream) != reference:
                    raise ValueError(f"{part}: encoded with other codec parameters than {parts[0]}; "
                                     "segments cannot be joined")
                first_packet = True
                for packet in container.demux(stream):
                    if not packet.size:
                        continue
                    if first_packet and not packet.is_keyframe:
                        raise ValueError(f"{part}: does not start with a keyframe")
                    first_packet = False
                    # Matroska stores no dts: its demuxer leaves the first ones unset
                    if packet.dts is not None:
                        t = packet.dts * packet.time_base
                        if last_dts is not None and t <= last_dts:
                            raise ValueError(
                                f"{part}: decode timestamps go back at segment {i} "
                                f"({float(t):.6f} s after {float(last_dts):.6f} s)")
                        last_dts = t
                    else:
                        t = packet.pts * packet.time_base
                    if copier is not None:
                        copier.copy_until(float(t))
                    if packet.pts is not None:
                        video_end = max(video_end, (packet.pts + (packet.duration or 0)) * packet.time_base)
                    packet.stream = vstream
                    out.mux(packet)
                    written += 1
        if expected_frames is not None and written != expected_frames:
            raise ValueError(f"{dst}: the segments hold {written} frames, {expected_frames} were "
                             "encoded; not joined")
        if copier is not None:
            copier.copy_until(float(video_end) if partial else None)
        out.close()
        out = None
        _fsync_file(tmp)
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
        return written
    finally:
        if out is not None:
            try:
                out.close()
            except Exception:  # noqa: BLE001 - the file is thrown away
                pass
        if source is not None:
            source.close()
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def _signature(stream: av.VideoStream) -> tuple:
    cc = stream.codec_context
    return (cc.name, cc.width, cc.height, cc.pix_fmt, bytes(cc.extradata or b""))
