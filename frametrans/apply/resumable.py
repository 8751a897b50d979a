"""A video job that survives interruption: written as closed segments, resumed where it stopped.

``frametrans apply clip.mp4 -o out.mp4`` writes ``out.partial/`` (parts + manifest, see
:mod:`frametrans.apply.manifest`) and, when the input has gone through, joins the parts by stream
copy into ``out.mp4`` (audio and subtitles copied once from the input), then removes the folder.
After Ctrl-C, SIGTERM, kill -9, a full disk or a crash, ``--resume`` (or ``--skip-existing``)
checks the settings and the input against the manifest, seeks the input to the frame after the
last closed part and goes on; at most the part being written when it stopped is redone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from frametrans.apply.images import target_size
from frametrans.atomic import remove_temporaries
from frametrans.apply.jobs import Job, OptionError, OutputOptions
from frametrans.apply.manifest import (MANIFEST, TAIL, Manifest, clean_folder, differences, input_identity,
                                      keep_or_remove, partial_file, work_folder)
from frametrans.apply.report import Report, progress_bar, signals_deferred
from frametrans.apply.segmented import SegmentBook, SegmentedWriter
from frametrans.apply.translator import Translator
from frametrans.engine.pipeline import ThreadClock
from frametrans.io import video
from frametrans.io.errors import InputError, OutputError, TruncatedInputError
from frametrans.io.segments import Segment, iter_segment_frames, join_segments, part_suffix

log = logging.getLogger("frametrans")


def settings_of(translator: Translator, opts: OutputOptions) -> Dict[str, Any]:
    """Everything that changes the output's pixels or packets, as JSON values."""
    temporal = translator.temporal(opts.temporal_settings())
    settings = {**translator.fingerprint(), "resize": opts.resize, "max_side": opts.max_side,
                "codec": opts.codec, "crf": opts.crf, "preset": opts.preset, "pix_fmt": opts.pix_fmt,
                "audio": opts.audio, "temporal": temporal.flow}
    if temporal.active:  # absent when off: folders from before --temporal stats still resume
        settings.update(temporal_mode=temporal.mode, temporal_stats=temporal.stats)
    if temporal.flow > 0:  # was DIS medium: older flow jobs are refused (--overwrite)
        settings.update(temporal_flow=temporal.flow_name())
    return json.loads(json.dumps(settings))  # tuples -> lists, as they come back from the file


def check_resumable(job: Job, translator: Optional[Translator], opts: OutputOptions) -> None:
    """Before any work: a job folder left by an interrupted run is continued only with --resume or
    --skip-existing, and only with the settings and input it was started with
    (:class:`OptionError`, exit 2, naming what changed); ``--overwrite`` starts over. Without a
    ``translator`` the settings are not compared (whoever runs the job does it)."""
    folder = work_folder(job.dst)
    manifest = Manifest.load(folder) if folder.is_dir() else None
    if manifest is None or not manifest.parts or opts.overwrite:
        return  # nothing finished there: the job starts over
    if not opts.skip_existing:
        raise OptionError(f"{folder} holds an interrupted run of {job.src.name} "
                          f"({manifest.progress()} done); pass --resume to continue it or --overwrite to "
                          "start over", "--resume")
    changed = [] if translator is None else differences(manifest.settings, settings_of(translator, opts))
    if changed:
        raise OptionError(f"{folder} was started with other settings: {', '.join(changed)}; "
                          "rerun with those, or pass --overwrite to start over", "--resume")
    changed = differences(manifest.input, input_identity(job.src, video.probe_video(job.src)))
    if changed:
        raise OptionError(f"{folder} was started from another {job.src.name}: {', '.join(changed)}; "
                          "pass --overwrite to start over", "--resume")


def apply_resumable(job: Job, translator: Translator, opts: OutputOptions, report: Report,
                    info: video.VideoInfo, dsts: List[Path]) -> None:
    """One video into ``dsts`` (one per variant) through segments in ``work_folder(job.dst)``."""
    folder = work_folder(job.dst)
    for d in dsts:  # a join killed before its rename
        remove_temporaries(d)
    manifest = _start(folder, job, translator, opts, info)
    truncated = None if manifest.complete else _translate(folder, manifest, job, translator, opts,
                                                          report, info, dsts)
    with signals_deferred():
        _join(folder, manifest, job, dsts, opts, report)
    if truncated is not None:
        raise InputError(job.src, f"{truncated.reason}; the {manifest.frames_done} decodable frames "
                                  f"were written to {dsts[0]}") from None


def _translate(folder: Path, manifest: Manifest, job: Job, translator: Translator,
               opts: OutputOptions, report: Report, info: video.VideoInfo, dsts: List[Path]
               ) -> Optional[TruncatedInputError]:
    """The frames not done yet -> closed parts, the manifest marked complete. Returns the cut of a
    truncated input (its decodable frames are in the parts), None when the input ended well."""
    from frametrans.apply.video import FrameCount, decoding, translate_into

    book = SegmentBook(folder, manifest, len(dsts))
    writers = [SegmentedWriter(book, i, d, part_suffix(job.dst), _part_opener(info, opts, opts.codec_for(job.dst)),
                               info.fps or 25) for i, d in enumerate(dsts)]
    start, write_after = _resume_point(manifest, translator.temporal(opts.temporal_settings()).warm_frames(), info)
    how = decoding(translator, opts, dsts)
    frames = (video.iter_video_frames(job.src, *how) if start is None
              else iter_segment_frames(job.src, Segment(0, start, None), *how))
    total = info.frame_estimate
    translator.expect(None if total is None else max(1, total - manifest.frames_done))
    count = FrameCount(progress_bar(info.frames or None, job.src.name, opts.quiet,
                                    initial=manifest.frames_done))
    truncated: Optional[TruncatedInputError] = None
    try:
        translate_into(writers, frames, translator, opts, count, write_after=write_after)
    except KeyboardInterrupt:
        with signals_deferred():
            _interrupted(writers, manifest, folder, job.dst, info)
        raise
    except TruncatedInputError as exc:
        truncated = exc
    except BaseException:
        _failed(writers, manifest, folder)
        raise
    finally:
        count.close()
        report.add_stages(count.stages)
    with signals_deferred():
        flush = ThreadClock()  # the last part's encoder flush: encode time (x264 holds its lookahead)
        _close_parts(writers, manifest, folder)
        report.add_stages({"encode": flush.stop()})
        report.frames += count.done
        if not manifest.parts:  # a cut input with no decodable frame
            shutil.rmtree(folder, ignore_errors=True)
            raise InputError(job.src, truncated.reason if truncated else "no frames decoded") from None
        book.complete()
    return truncated


def resumable_folder(dst: Path) -> bool:
    """True when the job writing ``dst`` has an interrupted run's closed parts to continue."""
    folder = work_folder(dst)
    manifest = Manifest.load(folder) if folder.is_dir() else None
    return manifest is not None and bool(manifest.parts)


def _start(folder: Path, job: Job, translator: Translator, opts: OutputOptions,
           info: video.VideoInfo) -> Manifest:
    """The manifest to go on from (resume), or a new one in a fresh folder."""
    manifest = Manifest.load(folder) if folder.is_dir() and not opts.overwrite else None
    if manifest is not None and manifest.ray_plan is not None:  # left by Ray: go on after its
        manifest = manifest.contiguous()                         # first parts, in order
    if manifest is not None and manifest.parts and opts.skip_existing:
        keep = [f for files in manifest.part_files(folder, _variant_dsts(job, translator),
                                                   part_suffix(job.dst)) for f in files]
        missing = [f for f in keep if not f.exists()]
        if not missing:
            clean_folder(folder, keep)  # what a killed run was writing goes
            manifest.save(folder)
            log.info("%s: resuming after %s (%s)", job.src.name, manifest.progress(), folder)
            return manifest
        log.warning("%s: %s is missing; starting over", folder, missing[0].name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    manifest = Manifest(output=job.dst.name, segment_seconds=opts.segment_seconds,
                        settings=settings_of(translator, opts), input=input_identity(job.src, info),
                        outputs=[d.name for d in _variant_dsts(job, translator)],
                        source=str(job.src.resolve()))
    manifest.save(folder)
    return manifest


def _variant_dsts(job: Job, translator: Translator) -> List[Path]:
    from frametrans.apply.jobs import variant_path

    return [variant_path(job.dst, v.suffix) for v in translator.variants]


def _resume_point(manifest: Manifest, warm: int, info: video.VideoInfo
                  ) -> Tuple[Optional[int], Optional[int]]:
    """(pts to start decoding at, pts up to which frames are not written): None, None from the
    start. With --temporal the last frames written go through the model again (not written), so
    the temporal state is warmed up as in an uninterrupted run: from the timestamps the manifest
    kept (16 frames), from the frame rate when the mode needs more (``warm``: frames,
    :meth:`Temporal.warm_frames` of the mode as it applies to the model)."""
    if not manifest.parts:
        return None, None
    last = manifest.parts[-1]
    if not warm or not last.tail_pts:
        return last.last_pts + 1, last.last_pts
    start = last.tail_pts[-min(warm, len(last.tail_pts))]
    if warm > len(last.tail_pts):
        start = min(start, warm_up_from(info, last.last_pts + 1, warm))
    return start, last.last_pts


def warm_up_from(info: video.VideoInfo, start: int, frames: int = TAIL) -> int:
    """The pts about ``frames`` frames before ``start`` (from the average frame rate; see
    :meth:`frametrans.stabilize.Temporal.warm_frames`): a run that begins at ``start`` with
    --temporal decodes from there and runs those frames through the model without writing them
    (``translate_into(write_after=start - 1)``), so that its temporal state is warm at ``start``, as
    a resumed job's is from the timestamps its manifest kept. Not before pts 0 (where videos usually
    start: seeking before the first frame would decode from the start)."""
    fps = float(info.fps) if info.fps else 25.0
    return max(start - max(1, round(frames / (fps * float(info.time_base)))), min(0, start))


def _part_opener(info: video.VideoInfo, opts: OutputOptions, codec: Optional[str]):
    width, height = target_size(info.width, info.height, opts) or (info.width, info.height)

    def open_part(path: Path) -> video.VideoWriter:
        return video.VideoWriter(path, width=width, height=height, fps=info.fps,
                                 time_base=info.time_base, codec=codec, crf=opts.crf,
                                 preset=opts.preset, pix_fmt=opts.pix_fmt)
    return open_part


def _close_parts(writers: List[SegmentedWriter], manifest: Manifest, folder: Path) -> None:
    """Close every variant's last part; on an error drop the rest (the manifest stays valid)."""
    for i, w in enumerate(writers):
        try:
            w.close_part()
        except BaseException as exc:
            for rest in writers[i:]:
                rest.abort()
            keep_or_remove(folder, manifest)
            if isinstance(exc, OSError):
                raise OutputError.wrap(w.path, exc) from None
            raise


def _interrupted(writers: List[SegmentedWriter], manifest: Manifest, folder: Path, dst: Path,
                 info: video.VideoInfo) -> None:
    """Ctrl-C/SIGTERM: the parts being written are closed and kept (nothing done is lost)."""
    for w in writers:
        try:
            w.close_part()
        except Exception as exc:  # noqa: BLE001 - report, keep unwinding the interrupt
            log.error("%s: could not close the last part: %s", w.path, exc)
            w.abort()
    if not manifest.parts:
        shutil.rmtree(folder, ignore_errors=True)
        return
    total = f" of {info.frames}" if info.frames else ""
    log.warning("interrupted: %d%s frames done, kept in %s; rerun with --resume to continue, or run "
                "`frametrans join %s` for a playable %s", manifest.frames_done, total, folder, folder,
                partial_file(dst).name)


def _failed(writers: List[SegmentedWriter], manifest: Manifest, folder: Path) -> None:
    """Any other error: the part being written is dropped; the closed ones are kept to resume."""
    for w in writers:
        w.abort()
    keep_or_remove(folder, manifest)


def _join(folder: Path, manifest: Manifest, job: Job, dsts: List[Path], opts: OutputOptions,
          report: Report) -> None:
    """The parts of every variant -> its final file (stream copy, audio from the input); then the
    folder goes. A failed join keeps the folder: --resume joins again."""
    parts = manifest.part_files(folder, dsts, part_suffix(job.dst))
    for dst, files in zip(dsts, parts):
        try:
            join_segments(files, dst, copy_streams_from=job.src if opts.audio else None,
                          expected_frames=manifest.frames_done)
        except OSError as exc:
            raise OutputError.wrap(dst, exc) from None
        report.written.append(dst)
        with contextlib.suppress(OSError):  # a playable part made earlier by `frametrans join`
            partial_file(dst).unlink()
    shutil.rmtree(folder, ignore_errors=True)


def join_partial(folder: Path, out: Optional[Path] = None) -> List[Path]:
    """The closed parts of an interrupted job -> a playable video per output variant, by stream
    copy (audio and subtitles copied from the input up to the last frame, when it is still there).
    ``out``: the file for the first variant; default ``NAME.partial.EXT`` beside the folder. The
    folder is left as it is, so ``--resume`` still continues the job. Returns the files written.
    Raises ValueError when ``folder`` holds no closed part."""
    folder = Path(folder)
    manifest = Manifest.load(folder) if folder.is_dir() else None
    if manifest is None:
        raise ValueError(f"{folder}: not the working folder of an interrupted job (no {MANIFEST})")
    if not manifest.parts:
        raise ValueError(f"{folder}: no segment was finished; nothing to join")
    names = manifest.outputs or [manifest.output]
    dsts = [folder.parent / n for n in names]
    parts = manifest.part_files(folder, dsts, part_suffix(folder.parent / manifest.output))
    source = Path(manifest.source) if manifest.source and Path(manifest.source).is_file() else None
    written = []
    base = Path(manifest.output).stem
    for i, (dst, files) in enumerate(zip(dsts, parts)):
        if out is None:
            target = partial_file(dst)
        elif i == 0:
            target = Path(out)
        else:  # a further MUNIT style: its suffix (_style1...) on the name given
            target = Path(out).with_name(Path(out).stem + dst.stem[len(base):] + Path(out).suffix)
        join_segments(files, target, copy_streams_from=source, partial=True,
                      expected_frames=manifest.frames_done)
        written.append(target)
    return written
