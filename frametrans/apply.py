"""Apply a generator to images, folders, videos and raw streams: the library behind ``frametrans apply``.

    from frametrans.apply import Translator, apply_paths
    t = Translator.load("cyclegan")                      # bundled name or checkpoint path
    report = apply_paths(["clip.mp4"], "out.mp4", t)     # same for images, folders, lists

Data flow per input: a reader (in a background thread) yields frames, the runner batches and runs
them, a writer (in another background thread) encodes; outputs are written under a temporary name
and renamed when complete.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from frametrans.engine.pipeline import BackgroundWorker, prefetch
from frametrans.engine.runner import Runner, RunnerOptions
from frametrans.io import folders, images, raw, video
from frametrans.io.errors import InputError, TruncatedInputError
from frametrans.io.frame import Frame

log = logging.getLogger("frametrans")


# ---------------------------------------------------------------------------------------------
# the model side: one Runner per output variant (MUNIT styles), all sharing one module


@dataclass
class Variant:
    """One output per input: ``suffix`` is added to output names when there are several."""

    suffix: str
    runner: Runner


class Translator:
    """A loaded model ready to translate batches of images, with its output variants."""

    def __init__(self, model: torch.nn.Module, options: Optional[RunnerOptions] = None,
                 direction: str = "a2b", style_image: Optional[str] = None, num_styles: int = 1,
                 seed: int = 0) -> None:
        self.model = model
        self.options = options or RunnerOptions()
        self.contract = model.config.contract()
        if self.contract.frames_in != 1:
            raise ValueError(
                f"{type(model).arch_name} predicts frames from {self.contract.frames_in} past frames;"
                " use `frametrans predict-next`"
            )
        if not self.contract.takes_style:
            if style_image or num_styles != 1:
                raise ValueError("--style/--num-styles need a MUNIT model")
            self.variants = [Variant("", Runner(model, self.options))]
            return
        if direction not in ("a2b", "b2a"):
            raise ValueError(f"--direction must be a2b or b2a, got {direction!r}")
        if num_styles < 1:
            raise ValueError(f"--num-styles must be >= 1, got {num_styles}")
        styles = self._styles(direction, style_image, num_styles, seed)
        self.variants = [
            Variant(f"_style{i}" if len(styles) > 1 else "",
                    Runner(model, self.options, forward=_munit_forward(s, direction)))
            for i, s in enumerate(styles)
        ]

    @classmethod
    def load(cls, model: str, options: Optional[RunnerOptions] = None,
             yaml_config: Optional[str] = None, **kwargs) -> "Translator":
        from frametrans.checkpoint import load_model

        return cls(load_model(model, yaml_config=yaml_config), options, **kwargs)

    def _styles(self, direction: str, style_image: Optional[str], k: int, seed: int
                ) -> List[torch.Tensor]:
        """Style codes [1, style_dim, 1, 1], fixed for a whole clip."""
        if style_image:
            frame = images.read_image(style_image)
            x = torch.from_numpy(_rgb(frame.image, self.contract.in_channels)).permute(2, 0, 1)
            x = x[None].float() / 255.0 * 2 - 1
            from frametrans.engine.padding import pad_to_multiple

            x, _ = pad_to_multiple(x, self.contract.size_multiple)
            with torch.inference_mode():
                target = "b" if direction == "a2b" else "a"
                return [self.model.eval().encode_style(x, target)]
        gen = torch.Generator().manual_seed(seed)
        codes = torch.randn(k, self.contract.style_dim, 1, 1, generator=gen)
        return [codes[i:i + 1] for i in range(k)]


def _munit_forward(style: torch.Tensor, direction: str) -> Callable:
    def forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model.translate(x, style=style.to(x.device), direction=direction)
    return forward


def _rgb(image: np.ndarray, channels: int) -> np.ndarray:
    image = image if image.ndim == 3 else image[..., None]
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.shape[2] == channels:
        return np.ascontiguousarray(image)
    if image.shape[2] == 1:
        return np.repeat(image, channels, axis=2)
    return np.ascontiguousarray(image[..., :channels])


# ---------------------------------------------------------------------------------------------
# jobs


@dataclass
class OutputOptions:
    """What to do with outputs: names, overwriting, resizing, video encoding."""

    overwrite: bool = False
    skip_existing: bool = False
    recursive: bool = False
    ext: Optional[str] = None  # image output format for folders, e.g. "png"
    resize: Optional[Tuple[int, int]] = None  # (w, h) fed to the model
    max_side: Optional[int] = None
    codec: Optional[str] = None
    crf: Optional[int] = None
    preset: Optional[str] = None
    pix_fmt: Optional[str] = None
    audio: bool = True
    quiet: bool = False


@dataclass
class Job:
    src: Path
    dst: Path
    kind: str  # "image" or "video"


@dataclass
class Report:
    """What a run did: outputs written, skipped, and failures (path, one-line reason)."""

    written: List[Path] = field(default_factory=list)
    skipped: List[Path] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    frames: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


def plan_jobs(inputs: Sequence[str], output: str, opts: OutputOptions) -> List[Job]:
    """Turn input paths (files, folders) and an output path into (src, dst) jobs.

    Rules: one image -> OUTPUT is a file, or an existing folder / path ending in '/' to put it in;
    one video -> OUTPUT is a video file (or folder); a folder or several inputs -> OUTPUT is a
    folder, relative paths kept. Raises ValueError (one line) on impossible combinations.
    """
    if not inputs:
        raise ValueError("no inputs given")
    out = Path(output)
    srcs = [Path(p) for p in inputs]
    for s in srcs:
        if not s.exists():
            raise ValueError(f"{s}: no such file or folder")
    single_file = len(srcs) == 1 and srcs[0].is_file()
    if single_file and not (output.endswith(("/", "\\")) or out.is_dir()):
        jobs = [Job(srcs[0], out, _kind(srcs[0]))]
        _check_collisions(jobs)
        return jobs
    jobs: List[Job] = []
    for s in srcs:
        if s.is_dir():
            for f in _media_in(s, opts.recursive):
                jobs.append(Job(f, _out_name(f, s, out, opts), _kind(f)))
        else:
            jobs.append(Job(s, _out_name(s, s.parent, out, opts), _kind(s)))
    if not jobs:
        raise ValueError(f"no images or videos found in {', '.join(map(str, srcs))}"
                         + ("" if opts.recursive else " (use --recursive for subfolders)"))
    _check_collisions(jobs)
    return jobs


def _media_in(folder: Path, recursive: bool) -> List[Path]:
    files = folders.list_images(folder, recursive=recursive)
    vids = [p for p in (folder.rglob("*") if recursive else folder.iterdir())
            if p.is_file() and video.is_video(p) and not p.name.startswith(".")]
    return sorted(set(files) | set(vids))


def _out_name(src: Path, root: Path, out: Path, opts: OutputOptions) -> Path:
    ext = opts.ext if _kind(src) == "image" else None
    return folders.output_path_for(src, root, out, ext)


def _kind(path: Path) -> str:
    if video.is_video(path) and path.suffix.lower() != ".gif":
        return "video"
    if path.suffix.lower() == ".gif":  # animated gifs are clips; stills are images
        return "video" if _gif_frames(path) > 1 else "image"
    return "image"


def _gif_frames(path: Path) -> int:
    try:
        return video.probe_video(path).frames or 2
    except Exception:  # noqa: BLE001 - unreadable: let the image reader report it
        return 1


def _check_collisions(jobs: List[Job]) -> None:
    seen = {}
    srcs = {j.src.resolve() for j in jobs}
    for j in jobs:
        d = j.dst.resolve()
        if d in srcs:
            raise ValueError(f"output {j.dst} is one of the inputs; choose another output")
        if d in seen:
            raise ValueError(f"{seen[d]} and {j.src} would both be written to {j.dst}")
        seen[d] = j.src


def variant_path(dst: Path, suffix: str) -> Path:
    return dst.with_name(dst.stem + suffix + dst.suffix) if suffix else dst


def check_outputs(jobs: List[Job], translator: Translator, opts: OutputOptions) -> None:
    """Refuse to overwrite existing outputs (unless --overwrite/--skip-existing), before any work."""
    if opts.overwrite or opts.skip_existing:
        return
    for j in jobs:
        for v in translator.variants:
            p = variant_path(j.dst, v.suffix)
            if p.exists():
                raise ValueError(f"{p} exists; pass --overwrite to replace or --skip-existing to keep it")


def apply_paths(inputs: Sequence[str], output: str, translator: Translator,
                opts: Optional[OutputOptions] = None) -> Report:
    """Run every input through ``translator``; one bad file does not stop the others."""
    opts = opts or OutputOptions()
    jobs = plan_jobs(inputs, output, opts)
    check_outputs(jobs, translator, opts)
    report = Report()
    progress = _progress(len(jobs), "files", opts) if len(jobs) > 1 else None
    images_jobs = [j for j in jobs if j.kind == "image"]
    video_jobs = [j for j in jobs if j.kind == "video"]
    try:
        if images_jobs:
            _apply_images(images_jobs, translator, opts, report, progress)
        for j in video_jobs:
            _run_one(lambda: _apply_video(j, translator, opts, report), j, report)
            if progress is not None:
                progress.update(1)
    finally:
        if progress is not None:
            progress.close()
    return report


def _run_one(fn: Callable[[], None], job: Job, report: Report) -> None:
    try:
        fn()
    except (InputError, OSError, ValueError, RuntimeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if str(job.src) not in msg:
            msg = f"{job.src}: {msg}"
        log.error("%s", msg)
        report.failed.append((str(job.src), msg))


# -- images ------------------------------------------------------------------------------------


def _apply_images(jobs: List[Job], translator: Translator, opts: OutputOptions, report: Report,
                  progress) -> None:
    """Decode ahead in a thread, batch same-size images, write in another thread."""
    todo = [j for j in jobs if not _skip(j, translator, opts, report)]
    if progress is not None:
        progress.update(len(jobs) - len(todo))

    def read() -> Iterator[Tuple[Job, Optional[Frame], Optional[str]]]:
        for j in todo:
            try:
                yield j, _prepare(images.read_image(j.src), opts), None
            except (InputError, OSError, ValueError) as exc:
                yield j, None, str(exc).splitlines()[0]

    def write(item: Tuple[Job, str, Frame, np.ndarray]) -> None:
        job, suffix, frame, out = item
        dst = variant_path(job.dst, suffix)
        try:
            images.write_image(dst, _finish(frame, out))
            report.written.append(dst)
        except (OSError, ValueError) as exc:
            report.failed.append((str(job.src), f"{dst}: {str(exc).splitlines()[0]}"))

    jobs_by_frame = {}

    def frames() -> Iterator[Frame]:
        for j, frame, err in prefetch(read(), depth=8, name="decode"):
            if err is not None:
                msg = err if str(j.src) in err else f"{j.src}: {err}"
                log.error("%s", msg)
                report.failed.append((str(j.src), msg))
                continue
            jobs_by_frame[id(frame)] = j
            yield frame

    writer = BackgroundWorker(write, depth=8, name="encode")
    try:
        for frame, outs in _run_variants(frames(), translator):
            job = jobs_by_frame.pop(id(frame))
            for (suffix, out) in outs:
                writer.submit((job, suffix, frame, out))
            report.frames += 1
            if progress is not None:
                progress.update(1)
    finally:
        writer.close()


def _run_variants(frames: Iterable[Frame], translator: Translator
                  ) -> Iterator[Tuple[Frame, List[Tuple[str, np.ndarray]]]]:
    """Each frame through every variant (MUNIT styles); one variant is the plain case."""
    if len(translator.variants) == 1:
        v = translator.variants[0]
        for frame, out in v.runner.run(frames):
            yield frame, [(v.suffix, out)]
        return
    for frame in frames:
        yield frame, [(v.suffix, v.runner([frame.image])[0]) for v in translator.variants]


def _skip(job: Job, translator: Translator, opts: OutputOptions, report: Report) -> bool:
    if not opts.skip_existing:
        return False
    if all(variant_path(job.dst, v.suffix).exists() for v in translator.variants):
        report.skipped.append(job.dst)
        return True
    return False


def _prepare(frame: Frame, opts: OutputOptions) -> Frame:
    """Apply --resize / --max-side to what the model sees (alpha follows)."""
    size = _target_size(frame.width, frame.height, opts)
    if size is None:
        return frame
    import cv2

    def rs(a: Optional[np.ndarray]) -> Optional[np.ndarray]:
        if a is None:
            return None
        interp = cv2.INTER_AREA if size[0] < a.shape[1] else cv2.INTER_CUBIC
        out = cv2.resize(a, size, interpolation=interp)
        return out[..., None] if a.ndim == 3 and out.ndim == 2 else out

    return frame.replace(image=rs(frame.image), alpha=rs(frame.alpha))


def _target_size(w: int, h: int, opts: OutputOptions) -> Optional[Tuple[int, int]]:
    if opts.resize:
        return opts.resize
    if opts.max_side and max(w, h) > opts.max_side:
        s = opts.max_side / max(w, h)
        return max(1, round(w * s)), max(1, round(h * s))
    return None


def _finish(frame: Frame, out: np.ndarray) -> Frame:
    """The output frame: the model's picture with the input's alpha and metadata."""
    if out.ndim == 3 and out.shape[2] == 1:
        out = out[..., 0]
    return frame.replace(image=out)


# -- video -------------------------------------------------------------------------------------


def _apply_video(job: Job, translator: Translator, opts: OutputOptions, report: Report) -> None:
    if _skip(job, translator, opts, report):
        return
    info = video.probe_video(job.src)
    writers = [_open_writer(variant_path(job.dst, v.suffix), job.src, info, opts)
               for v in translator.variants]
    progress = _progress(info.frames or None, job.src.name, opts)
    done = 0
    try:
        encoders = [BackgroundWorker(_writer_fn(w), depth=8, name="encode") for w in writers]
        try:
            frames = (_prepare(f, opts) for f in prefetch(video.iter_video_frames(job.src),
                                                          depth=8, name="decode"))
            for frame, outs in _run_variants(frames, translator):
                for enc, (_, out) in zip(encoders, outs):
                    enc.submit((out, frame))
                done += 1
                progress.update(1)
        finally:
            for enc in encoders:
                enc.close()
    except KeyboardInterrupt:
        for w, v in zip(writers, translator.variants):
            partial = w.close_as(_partial_name(variant_path(job.dst, v.suffix)), partial=True)
            log.warning("interrupted: the %d frames done are in %s", done, partial)
        raise
    except TruncatedInputError as exc:
        for w in writers:  # keep every frame that decoded; the failure is still reported
            report.written.append(Path(w.close()))
        report.frames += done
        raise InputError(job.src, f"{exc.reason}; the {done} decodable frames were written") from None
    except BaseException:
        for w in writers:
            w.abort()
        raise
    finally:
        progress.close()
    for w in writers:
        w.close()
        report.written.append(Path(w.path))
    report.frames += done


def _partial_name(path: Path) -> Path:
    return path.with_name(path.stem + ".partial" + path.suffix)


def _open_writer(dst: Path, src: Path, info, opts: OutputOptions):
    return video.VideoWriter(
        dst, width=info.width, height=info.height, fps=info.fps, time_base=info.time_base,
        codec=opts.codec, crf=opts.crf, preset=opts.preset, pix_fmt=opts.pix_fmt,
        copy_streams_from=src if opts.audio else None,
    )


def _writer_fn(writer) -> Callable[[Tuple[np.ndarray, Frame]], None]:
    def write(item: Tuple[np.ndarray, Frame]) -> None:
        out, frame = item
        writer.write(out if out.shape[2] == 3 else np.repeat(out, 3, axis=2), frame.pts, frame.time_base)
    return write


# -- raw streams -------------------------------------------------------------------------------


def apply_stream(stdin: BinaryIO, stdout: BinaryIO, translator: Translator,
                 size: Optional[Tuple[int, int]], fps: float = 25.0, y4m_out: bool = False,
                 quiet: bool = False) -> int:
    """Raw rgb24 (``size`` given) or y4m (``size`` None) frames in, raw rgb24 or y4m out.

    Returns the number of frames written. A partial frame at the end raises InputError after the
    whole frames before it were written.
    """
    if size is None:
        frames = raw.iter_y4m_frames(stdin)
    else:
        frames = raw.iter_raw_frames(stdin, size[0], size[1])
    opts = OutputOptions(quiet=quiet)
    progress = _progress(None, "frames", opts)
    v = translator.variants[0]
    y4m: Optional[raw.Y4MWriter] = None
    n = 0
    try:
        for frame, out in v.runner.run(prefetch(frames, depth=8, name="decode")):
            out = out if out.shape[2] == 3 else np.repeat(out, 3, axis=2)
            if y4m_out:
                if y4m is None:
                    y4m = raw.Y4MWriter(stdout, out.shape[1], out.shape[0], fps)
                y4m.write(out)
            else:
                raw.write_raw_frame(stdout, out)
            n += 1
            progress.update(1)
        stdout.flush()
    finally:
        progress.close()
    return n


def _progress(total: Optional[int], desc: str, opts: OutputOptions):
    from tqdm import tqdm

    disable = opts.quiet or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="frame" if desc != "files" else "file",
                file=sys.stderr, disable=disable, dynamic_ncols=True, leave=False)
