"""Videos (and animated GIFs): decode ahead, translate, encode behind, timing and audio kept."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from frametrans.apply.images import prepare_frame, target_size, to_8bit, to_write
from frametrans.apply.jobs import Job, OutputOptions, variant_path
from frametrans.apply.report import Report, progress_bar, signals_deferred
from frametrans.apply.manifest import partial_file
from frametrans.apply.resumable import apply_resumable
from frametrans.apply.temporal import translate_stream
from frametrans.apply.translator import Translator
from frametrans.engine.pipeline import BackgroundWorker, ThreadClock, StageClock, StageTime, prefetch
from frametrans.io import video
from frametrans.io.errors import InputError, OutputError, TruncatedInputError, first_line
from frametrans.io.frame import Frame

log = logging.getLogger("frametrans")


def apply_video(job: Job, translator: Translator, opts: OutputOptions, report: Report) -> None:
    """One video through the model; timing and audio kept.

    Outputs that can be joined by stream copy (MP4, MOV, MKV, WebM with the usual codecs) are
    written in segments and can be resumed (:mod:`frametrans.apply.resumable`). Others, in one piece:
    Ctrl-C/SIGTERM: the frames done are closed as ``NAME.partial.EXT`` (playable) and the interrupt
    goes on. A truncated input: every decodable frame is written under the final name and the cut
    is reported (InputError). Any other error: nothing is left under the output name.
    """
    translator = to_write(job, translator, opts, report)
    if translator is None:
        return
    info = video.probe_video(job.src)
    translator.expect(info.frame_estimate)
    dsts = [variant_path(job.dst, v.suffix) for v in translator.variants]
    if opts.segmented(job.dst):
        apply_resumable(job, translator, opts, report, info, dsts)
        return
    writers = _open_writers(dsts, job.src, info, opts)
    count = FrameCount(progress_bar(info.frames or None, job.src.name, opts.quiet))
    try:
        frames = video.iter_video_frames(job.src, *decoding(translator, opts, dsts))
        translate_into(writers, frames, translator, opts, count)
    except KeyboardInterrupt:
        with signals_deferred():
            _finish_partial(writers, dsts, info)
        raise
    except TruncatedInputError as exc:
        _keep_decodable(writers, dsts, job, exc, count.done, report)
    except BaseException:
        abort_all(writers)
        raise
    finally:
        count.close()
        report.add_stages(count.stages)
    with signals_deferred():
        flush = ThreadClock()  # the encoders' last frames (x264 holds its lookahead until now)
        _close_writers(writers, report)
        report.add_stages({"encode": flush.stop()})
    report.frames += count.done


def _keep_decodable(writers: list, dsts: List[Path], job: Job, exc: TruncatedInputError, done: int,
                    report: Report) -> None:
    """A cut input: the frames decoded before the cut are written, and the cut is reported."""
    if done == 0:
        abort_all(writers)
        raise InputError(job.src, exc.reason) from None
    with signals_deferred():
        _close_writers(writers, report)
    report.frames += done
    raise InputError(job.src, f"{exc.reason}; the {done} decodable frames were written "
                              f"to {dsts[0]}") from None


def decoding(translator: Translator, opts: OutputOptions, dsts: List[Path]) -> Tuple[bool, Optional[int]]:
    """How the video readers decode for this job: ``(planes, hwdec)``, the arguments of
    :func:`frametrans.io.video.iter_video_frames` and :func:`frametrans.io.segments.iter_segment_frames`."""
    return planes_wanted(translator, opts, dsts), hwdec_device(translator, opts)


def planes_wanted(translator: Translator, opts: OutputOptions, dsts: List[Path]) -> bool:
    """Whether decoded frames may stay YUV planes, for the runners to convert on their device: every
    runner wants them (``RunnerOptions.yuv``: on CUDA by default), nothing between the decoder and
    the encoder needs RGB pixels (--resize/--max-side, flow-based --temporal), and every output
    ``dsts`` encodes 8-bit 4:2:0 (the runners hand planes back: a GIF or a yuv444p output would
    lose chroma)."""
    if opts.resize is not None or opts.max_side is not None or opts.temporal_settings().flow > 0:
        return False
    if not all(video.writes_planes(d, opts.codec_for(d), opts.pix_fmt) for d in dsts):
        return False
    return all(getattr(v.runner, "wants_planes", False) for v in translator.variants)


def hwdec_device(translator: Translator, opts: OutputOptions) -> Optional[int]:
    """The CUDA device whose NVDEC decodes (the model's, else 0), or None (software): ``--hwdec
    cuda``, or ``auto`` with the model on CUDA."""
    device = getattr(translator.variants[0].runner, "device", None)
    on_cuda = device is not None and device.type == "cuda"
    if opts.hwdec == "cuda" or (opts.hwdec == "auto" and on_cuda):
        return (device.index or 0) if on_cuda else 0
    return None


@dataclass
class FrameCount:
    """Frames through the model so far, with an optional progress bar and a per-frame hook."""

    bar: Any = None
    on_frame: Optional[Callable[[int], None]] = None
    done: int = 0
    stages: Dict[str, StageTime] = field(default_factory=dict)  # filled by translate_into

    def add(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.on_frame is not None:
            self.on_frame(self.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def translate_into(writers: list, frames: Iterable[Frame], translator: Translator,
                   opts: OutputOptions, count: FrameCount, write_after: Optional[int] = None) -> None:
    """Frames (decoded ahead on a thread) -> --resize/--max-side -> every variant -> one writer per
    variant (each encoding on its own thread), with the frames' own timestamps. The local video
    path and the Ray segments both run this. The encoders are drained before this returns or
    raises; the writers stay open (the caller closes or aborts them).

    write_after: frames with pts <= this go through the model (and ``--temporal``) but are not
    written: a resumed job, or a Ray segment, warms its temporal state up on the frames before
    its first one."""
    queue = translator.queue_bytes()
    clocks = {"decode": StageClock(), "encode": StageClock()}
    encoders = [BackgroundWorker(clocks["encode"].timed(video_writer_fn(w)), depth=8, name="encode",
                                 max_bytes=queue, size=lambda item: item[0].nbytes) for w in writers]
    main = ThreadClock()
    try:
        decoded = prefetch(clocks["decode"].iterate(frames), depth=8, name="decode", max_bytes=queue,
                           size=lambda f: f.image.nbytes)
        prepared = (prepare_frame(f, opts) for f in decoded)
        for frame, outs in translate_stream(prepared, translator, opts.temporal_settings()):
            main.items += 1
            if write_after is not None and frame.pts is not None and frame.pts <= write_after:
                continue
            for enc, (_, out) in zip(encoders, outs):
                enc.submit((out, frame))
            count.add()
    except BaseException:
        with signals_deferred():
            _close_quietly(encoders)  # let the queued frames be encoded, then unwind
        raise
    finally:
        count.stages = {"decode": clocks["decode"].snapshot(), "main": main.stop(),
                        "encode": clocks["encode"].snapshot()}
    with signals_deferred():  # the encoders must be idle before the writers are closed
        _close_all(encoders)
    count.stages["encode"] = clocks["encode"].snapshot()  # with the frames still queued at the end


def abort_all(writers: list) -> None:
    """Abort every writer: their temporary files go, nothing appears under the output names."""
    for w in writers:
        w.abort()


def _open_writers(dsts: List[Path], src: Path, info, opts: OutputOptions) -> list:
    writers = []
    try:
        for d in dsts:
            writers.append(_open_writer(d, src, info, opts))
    except BaseException:
        abort_all(writers)
        raise
    return writers


def _close_writers(writers: list, report: Report) -> None:
    """Finish every writer (rename into place); on an error abort the rest and raise it."""
    for i, w in enumerate(writers):
        try:
            report.written.append(Path(w.close()))
        except BaseException as exc:
            for rest in writers[i + 1:]:
                rest.abort()
            if isinstance(exc, OSError):
                raise OutputError.wrap(w.path, exc) from None
            raise
        with contextlib.suppress(OSError):  # a .partial file left by an interrupted earlier run
            partial_file(Path(w.path)).unlink()


def _finish_partial(writers: list, dsts: List[Path], info) -> None:
    for w, d in zip(writers, dsts):
        if not w.frames_written:
            w.abort()
            continue
        partial = partial_file(d)
        try:
            w.close_as(partial, partial=True)
        except Exception as exc:  # noqa: BLE001 - report, keep unwinding the interrupt
            log.error("%s: could not finalize the partial video: %s", partial, first_line(exc))
            w.abort()
            continue
        total = f" of {info.frames}" if info.frames else ""
        log.warning("interrupted: %d%s frames done; they are in %s (playable)",
                    w.frames_written, total, partial)


def _close_all(workers: List[BackgroundWorker]) -> None:
    first: Optional[BaseException] = None
    for w in workers:
        try:
            w.close()
        except BaseException as exc:  # noqa: BLE001 - the first one is raised below
            first = first or exc
    if first is not None:
        raise first


def _close_quietly(workers: List[BackgroundWorker]) -> None:
    for w in workers:
        try:
            w.close()
        except BaseException as exc:  # noqa: BLE001 - already unwinding another error
            log.debug("encoder stopped: %s", exc)


def _open_writer(dst: Path, src: Path, info, opts: OutputOptions):
    try:
        width, height = target_size(info.width, info.height, opts) or (info.width, info.height)
        return video.VideoWriter(
            dst, width=width, height=height, fps=info.fps, time_base=info.time_base,
            codec=opts.codec_for(dst), crf=opts.crf, preset=opts.preset, pix_fmt=opts.pix_fmt,
            copy_streams_from=src if opts.audio else None,
            container_options=video.gif_container_options(src) if dst.suffix.lower() == ".gif" else None,
        )
    except OSError as exc:
        raise OutputError.wrap(dst, exc) from None


def video_writer_fn(writer) -> Callable[[Tuple[np.ndarray, Frame]], None]:
    """The encoder-thread function: (output image, its frame) -> ``writer`` (8-bit RGB or YUV
    planes, frame pts). Video outputs carry no alpha: a source with transparent pixels (a GIF, a
    WebM with alpha) is written opaque, with one warning per output."""
    warned = []

    def write(item: Tuple[np.ndarray, Frame]) -> None:
        out, frame = item
        if frame.alpha is not None and not warned and frame.alpha.min() < np.iinfo(frame.alpha.dtype).max:
            warned.append(True)
            log.warning("%s: video outputs (GIF included) are written opaque; transparency dropped",
                        writer.path)
        out = to_8bit(out)
        try:
            writer.write(out if out.shape[2] == 3 else np.repeat(out, 3, axis=2), frame.pts,
                         frame.time_base)
        except OSError as exc:  # includes PyAV's errno errors (full disk...)
            raise OutputError.wrap(writer.path, exc) from None
    return write
