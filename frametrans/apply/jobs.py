"""Planning an ``apply`` run: which input goes to which output, and what may be overwritten.

No torch here: the CLI and the Ray driver plan jobs before any model is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

import av

from frametrans.io import folders, images, video

if TYPE_CHECKING:
    from frametrans.apply.translator import Translator
    from frametrans.stabilize import Temporal


class OptionError(ValueError):
    """A setting the run cannot work with, found before any work: the CLI shows it as a bad option
    (exit status 2); ``param_hint`` names the option (``--codec``, ``-o/--output``)."""

    exit_code = 2

    def __init__(self, message: str, param_hint: str) -> None:
        super().__init__(message)
        self.param_hint = param_hint

    def __reduce__(self):  # picklable (Ray workers)
        return (type(self), (str(self), self.param_hint))


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
    temporal: str = "off"  # off | stats | flow | auto: stabilize videos, animations and streams
    temporal_strength: Optional[float] = None  # stats: the EMA factor; flow: the blend weight
    temporal_flow: str = "auto"  # auto | dis | torch: where the flow runs (stabilize.FLOW_ESTIMATORS)
    segment_seconds: float = 10.0  # videos in closed segments of this length (resumable); 0: one piece
    io_threads: Optional[int] = None  # image decode/encode workers per pool (None: one per core)
    hwdec: str = "off"  # off | cuda | auto (cuda when the model runs on CUDA): decode videos on NVDEC

    def segmented(self, dst: Path) -> bool:
        """True when the video output ``dst`` is written in resumable segments: the container and
        codec allow a lossless join, and ``segment_seconds`` > 0."""
        from frametrans.io.segments import can_split_output

        return self.segment_seconds > 0 and can_split_output(dst, self.codec_for(dst))

    def temporal_settings(self) -> "Temporal":
        """What ``--temporal`` does to videos, animations and streams (:mod:`frametrans.stabilize`)."""
        from frametrans.stabilize import resolve_temporal

        return resolve_temporal(self.temporal, self.temporal_strength, self.temporal_flow)

    def stabilizer_strength(self) -> float:
        """The flow-blend strength for videos, animations and streams (0: no blending)."""
        return self.temporal_settings().flow

    def validate(self) -> None:
        """Reject impossible values before any work starts (one-line ValueError naming the option)."""
        self.temporal_settings()
        if self.io_threads is not None and self.io_threads < 1:
            raise ValueError(f"--io-threads must be >= 1, got {self.io_threads}")
        if self.segment_seconds < 0:
            raise ValueError(f"--segment-seconds must be >= 0, got {self.segment_seconds}")
        if self.hwdec not in ("off", "cuda", "auto"):
            raise ValueError(f"--hwdec must be off, cuda or auto, got {self.hwdec!r}")
        if self.overwrite and self.skip_existing:
            raise ValueError("--overwrite and --skip-existing exclude each other")
        if self.ext is not None:
            ext = "." + self.ext.lower().lstrip(".")
            if ext not in images.WRITABLE_IMAGE_EXTENSIONS:
                raise ValueError(f"--ext {self.ext!r}: cannot write that image format; use one of "
                                 f"{', '.join(e[1:] for e in sorted(images.WRITABLE_IMAGE_EXTENSIONS))}")
        if self.resize is not None and (self.resize[0] < 1 or self.resize[1] < 1):
            raise ValueError(f"--resize must be at least 1x1, got {self.resize[0]}x{self.resize[1]}")
        if self.max_side is not None and self.max_side < 1:
            raise ValueError(f"--max-side must be >= 1, got {self.max_side}")
        if self.codec is not None and self.codec != "auto":
            try:
                codec = av.codec.Codec(self.codec, "w")
            except Exception:  # noqa: BLE001 - PyAV raises its own "unknown codec" types
                raise ValueError(f"--codec {self.codec!r}: no such video encoder in this FFmpeg "
                                 "(try libx264, libvpx-vp9, mpeg4, gif)") from None
            if codec.type != "video":
                raise ValueError(f"--codec {self.codec!r} is a {codec.type} encoder, not a video encoder")
        if self.pix_fmt is not None:
            try:
                av.VideoFormat(self.pix_fmt)
            except Exception:  # noqa: BLE001
                raise ValueError(f"--pix-fmt {self.pix_fmt!r}: unknown pixel format "
                                 "(try yuv420p, yuv444p, rgb24)") from None
        if self.codec is not None and self.codec != "auto":
            from frametrans.apply.encoders import probe_encoder

            probe_encoder(self.codec, self.pix_fmt, self.encoder_options(), named_codec=True,
                          given=self.encoder_flags())

    def codec_for(self, dst: Path) -> Optional[str]:
        """The encoder the video output ``dst`` gets (``--codec``; ``auto`` resolved, see
        :func:`frametrans.apply.encoders.codec_for`); None: the container's default."""
        from frametrans.apply.encoders import codec_for

        return codec_for(self, dst)

    def encoder_flags(self) -> dict:
        """The encoder settings the user gave, as {flag: value} (None: not given)."""
        return {"--codec": self.codec, "--pix-fmt": self.pix_fmt, "--crf": self.crf,
                "--preset": self.preset}

    def encoder_options(self, defaults: Optional[dict] = None) -> dict:
        """The codec options a video writer gets: ``defaults`` plus --crf and --preset."""
        options = dict(defaults or {})
        if self.crf is not None:
            options["crf"] = str(int(self.crf))
        if self.preset is not None:
            options["preset"] = str(self.preset)
        return options


@dataclass
class Job:
    src: Path
    dst: Path
    kind: str  # "image", "animation" (animated WebP/PNG) or "video" (incl. animated GIF)


def plan_jobs(inputs: Sequence[str], output: str, opts: OutputOptions,
              problems: Optional[List[Tuple[str, str]]] = None) -> List[Job]:
    """Turn input paths (files, folders) and an output path into (src, dst) jobs.

    Rules: one image -> OUTPUT is a file, or an existing folder / path ending in '/' to put it in;
    one video -> OUTPUT is a video file (or folder); a folder or several inputs -> OUTPUT is a
    folder, relative paths kept. Raises ValueError (one line) on impossible combinations.

    problems: when given, inputs that cannot be processed (missing, broken links, unreadable
    subfolders, output formats that cannot be written) are appended to it as ``(path, message)``
    and the other inputs are still planned; without it the first such problem raises ValueError.
    """
    if not inputs:
        raise ValueError("no inputs given")
    check_output_target(inputs, output)
    out = Path(output)
    collect = problems is not None
    bad: List[Tuple[str, str]] = problems if problems is not None else []

    def problem(path: Path, reason: str) -> None:
        msg = f"{path}: {reason}"
        if not collect:
            raise ValueError(msg)
        bad.append((str(path), msg))

    srcs = _existing(inputs, problem)
    if not srcs:
        raise ValueError(bad[0][1] if bad else "no inputs given")
    single_file = len(srcs) == 1 and not srcs[0].is_dir() and not bad
    if single_file and not (output.endswith(("/", "\\")) or out.is_dir()):
        jobs = [Job(srcs[0], out, _kind(srcs[0]))]
        _check_collisions(jobs)
        _check_writable([jobs[0]], lambda j, r: _raise(f"{j.dst}: {r}"), named_by_user=True)
        _check_encoders(jobs, opts)
        return jobs
    jobs: List[Job] = []
    for s in srcs:
        if s.is_dir():
            for f in _media_in(s, opts.recursive, out, problem):
                kind = _kind(f)
                jobs.append(Job(f, _out_name(f, s, out, opts, kind), kind))
        else:
            kind = _kind(s)
            jobs.append(Job(s, _out_name(s, s.parent, out, opts, kind), kind))
    if not jobs and not bad:
        raise ValueError(f"no images or videos found in {', '.join(map(str, srcs))}"
                         + ("" if opts.recursive else " (use --recursive for subfolders)"))
    _check_collisions(jobs)
    unwritable: set = set()
    _check_writable(jobs, lambda j, r: (unwritable.add(id(j)), problem(j.src, r)), named_by_user=False)
    jobs = [j for j in jobs if id(j) not in unwritable]
    _check_encoders(jobs, opts)
    return jobs


def _check_encoders(jobs: List[Job], opts: OutputOptions) -> None:
    from frametrans.apply.encoders import check_encoders  # imports this module

    check_encoders(jobs, opts)


def _existing(inputs: Sequence[str], problem: Callable[[Path, str], None]) -> List[Path]:
    """The inputs that exist; the others go to ``problem`` (missing, broken links)."""
    srcs = []
    for p in inputs:
        s = Path(p)
        if s.exists():
            srcs.append(s)
        elif s.is_symlink():
            problem(s, f"broken symbolic link (points to {os.readlink(s)})")
        else:
            problem(s, "no such file or folder")
    return srcs


def check_output_target(inputs: Sequence[str], output: str) -> None:
    """A folder or several inputs write into a folder: an OUTPUT that is an existing regular file
    is an :class:`OptionError` now, not one "cannot write" per output after the model has run.
    Cheap (no folder walk): the CLI calls it before the model is loaded."""
    out = Path(output)
    if not out.exists() or out.is_dir():
        return
    folders_in = [p for p in inputs if Path(p).is_dir()]
    if len(inputs) > 1:
        why = f"{len(inputs)} inputs need"
    elif folders_in:
        why = f"the folder {folders_in[0]} needs"
    elif output.endswith(("/", "\\")):
        why = "a trailing '/' asks for"
    else:
        return
    raise OptionError(f"{output} is an existing file, but {why} an output folder; give a folder "
                      "(it is created if missing)", "-o/--output")


def _raise(msg: str) -> None:
    raise ValueError(msg)


def _check_writable(jobs: List[Job], report: Callable[[Job, str], object], named_by_user: bool) -> None:
    """Each output must have an extension we can write, checked before any work."""
    for j in jobs:
        ext = j.dst.suffix.lower()
        if j.kind == "video" and ext not in video.WRITABLE_VIDEO_EXTENSIONS:
            hint = ("use one of " + ", ".join(sorted(video.WRITABLE_VIDEO_EXTENSIONS)) if named_by_user
                    else "give it as a single input with -o NAME.mp4")
            report(j, f"cannot write {ext or 'extensionless'} videos; {hint}")
        elif j.kind == "animation" and ext not in images.ANIMATED_IMAGE_EXTENSIONS:
            report(j, f"an animated image cannot be written as {ext or 'extensionless'}; "
                      "write .webp or .png (--ext webp)")
        elif j.kind == "image" and ext not in images.WRITABLE_IMAGE_EXTENSIONS:
            hint = ("use one of " + ", ".join(sorted(images.WRITABLE_IMAGE_EXTENSIONS)) if named_by_user
                    else "pass --ext png (or jpg, webp, tif, bmp)")
            report(j, f"cannot write {ext or 'extensionless'} images; {hint}")


def _media_in(folder: Path, recursive: bool, out: Path,
              problem: Callable[[Path, str], None]) -> List[Path]:
    """Images and videos in ``folder`` (one walk; links followed, loops visited once), leaving out
    the output folder when it lies inside the input folder (a rerun must not eat its outputs)."""
    wanted = images.IMAGE_EXTENSIONS | video.VIDEO_EXTENSIONS
    return folders.list_images(folder, recursive=recursive, extensions=wanted, on_error=problem,
                               exclude=[out] if out.is_dir() else [])


def _out_name(src: Path, root: Path, out: Path, opts: OutputOptions, kind: str) -> Path:
    ext = opts.ext if kind in ("image", "animation") else None
    return folders.output_path_for(src, root, out, ext)


def _kind(path: Path) -> str:
    if video.is_video(path) and path.suffix.lower() != ".gif":
        return "video"
    if path.suffix.lower() == ".gif":  # animated gifs are clips; stills are images
        return "video" if _gif_frames(path) > 1 else "image"
    if images.is_animated_image(path):
        return "animation"
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


def check_outputs(jobs: List[Job], translator: "Translator", opts: OutputOptions, *,
                  check_settings: bool = True) -> None:
    """Refuse to overwrite existing outputs (unless --overwrite/--skip-existing), and to continue an
    interrupted video job without --resume or with other settings, before any work.

    check_settings: compare an interrupted job's settings with ``translator``'s; False where
    ``translator`` is not the one that will run (the Ray driver's planning copy): the workers check.
    """
    from frametrans.apply.resumable import check_resumable

    for j in jobs:
        if j.kind == "video" and opts.segmented(j.dst):
            check_resumable(j, translator if check_settings else None, opts)
    if opts.overwrite or opts.skip_existing:
        return
    for j in jobs:
        for v in translator.variants:
            p = variant_path(j.dst, v.suffix)
            if p.exists():
                raise ValueError(f"{p} exists; pass --overwrite to replace or --skip-existing to keep it")
