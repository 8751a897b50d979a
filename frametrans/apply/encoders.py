"""Video encoders: opened once on a tiny frame before any work (so one that cannot run here is a
clear option error), and ``--codec auto`` (NVENC H.264 when it opens, else the container's default).

No torch here: the CLI checks encoders before any model is loaded.
"""

from __future__ import annotations

import functools
import glob
import logging
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import av

from frametrans.apply.jobs import OptionError
from frametrans.io import video

if TYPE_CHECKING:
    from frametrans.apply.jobs import Job, OutputOptions

log = logging.getLogger("frametrans")

#: Hardware H.264 encoders ``--codec auto`` tries, in order, for containers whose default is H.264.
AUTO_H264 = ("h264_nvenc",)
_HARDWARE = ("_nvenc", "_qsv", "_vaapi", "_amf", "_videotoolbox", "_v4l2m2m", "_mf")


# encoders worth suggesting when one cannot be used (those present in this FFmpeg are named)
_FALLBACK_ENCODERS = ("libx264", "libx265", "libvpx-vp9", "libaom-av1", "mpeg4")


_PROBE_SIZE = (352, 288)  # CIF: within every encoder's size limits (h261/h263 take only a few)


def probe_encoder(codec: str, pix_fmt: Optional[str], options: Optional[dict] = None, *,
                  named_codec: bool, given: Optional[dict] = None) -> None:
    """Open ``codec`` once on a tiny frame, as the video writer will: an encoder that cannot run
    here (``h264_nvenc`` without an NVIDIA GPU, a pixel format the codec lacks, an option it
    refuses) is an :class:`OptionError` naming it and what would work, before any model is loaded.

    named_codec: the user gave ``--codec`` (else it is the container's default, and what the user
    changed is to blame). given: the user's settings as {flag: value}, named in the message.
    """
    given = {k: v for k, v in (given or {}).items() if v is not None}
    try:
        info = av.codec.Codec(codec, "w")
    except Exception:  # noqa: BLE001 - PyAV raises its own "unknown codec" types
        raise OptionError(f"--codec {codec!r}: no such video encoder in this FFmpeg "
                          f"(try {', '.join(_available_encoders(codec))})", "--codec") from None
    formats = [f.name for f in (info.video_formats or [])]
    if pix_fmt is not None and formats and pix_fmt not in formats:
        shown = ", ".join(formats[:8]) + (", ..." if len(formats) > 8 else "")
        raise OptionError(f"--pix-fmt {pix_fmt}: the {codec} encoder cannot write it; it takes "
                          f"{shown}", "--pix-fmt")
    # PyAV's default for a new stream is yuv420p; the writer sets the container's default format
    pix_fmt = pix_fmt or ("yuv420p" if not formats or "yuv420p" in formats else formats[0])
    reason = open_failure(info, pix_fmt, options)
    if reason is not None:
        settings = ", ".join(f"{k} {v}" for k, v in given.items() if k != "--codec")
        tuning = {k: v for k, v in given.items() if k in ("--crf", "--preset")}
        if named_codec and tuning:  # the codec itself may be fine: is it --crf/--preset?
            probe_encoder(codec, pix_fmt, {}, named_codec=True,
                          given={k: v for k, v in given.items() if k not in tuning})
            named_codec, settings = False, ", ".join(f"{k} {v}" for k, v in tuning.items())
            given = tuning
        if named_codec and codec.endswith(_HARDWARE):
            reason += f"; {gpu_description()}"
        if named_codec:
            raise OptionError(f"--codec {codec}: the encoder cannot be opened here ({reason}"
                              f"{'; with ' + settings if settings else ''}); use another, e.g. "
                              f"{', '.join(_available_encoders(codec))}, or --codec auto",
                              "--codec") from None
        raise OptionError(f"{settings or 'the default settings'}: the {codec} encoder cannot be "
                          f"opened with {'them' if ',' in settings else 'it'} ({reason})",
                          next(iter(given), "--codec")) from None


def open_failure(info: av.codec.Codec, pix_fmt: str, options: Optional[dict]) -> Optional[str]:
    """Why the encoder ``info`` cannot encode a tiny ``pix_fmt`` frame with ``options`` here
    (FFmpeg's words), or None when it can."""
    options = {str(k): str(v) for k, v in (options or {}).items()}
    if info.name == "libx265":
        options.setdefault("x265-params", "log-level=none")  # no banner on stderr for the probe
    try:
        ctx = av.codec.CodecContext.create(info)
        ctx.width, ctx.height = _PROBE_SIZE
        ctx.pix_fmt = pix_fmt
        ctx.time_base = Fraction(1, 25)
        ctx.framerate = Fraction(25)
        ctx.options = options
        ctx.open()
        ctx.encode(av.VideoFrame(_PROBE_SIZE[0], _PROBE_SIZE[1], pix_fmt))
        ctx.encode(None)
    except Exception as exc:  # noqa: BLE001 - whatever FFmpeg says, it cannot run here
        return getattr(exc, "strerror", None) or " ".join(str(exc).split()) or type(exc).__name__
    return None


def _available_encoders(but: str) -> List[str]:
    names = []
    for name in _FALLBACK_ENCODERS:
        if name == but:
            continue
        try:
            av.codec.Codec(name, "w")
        except Exception:  # noqa: BLE001
            continue
        names.append(name)
    return names or ["mpeg4"]


def _writer_defaults(dst: Path) -> Tuple[str, str, dict]:
    """(codec, pix_fmt, options) that :class:`frametrans.io.video.VideoWriter` uses for ``dst``."""
    return video._WRITE_DEFAULTS.get(dst.suffix.lower(), video._WRITE_DEFAULTS[".mp4"])


def check_encoders(jobs: Sequence["Job"], opts: OutputOptions) -> None:
    """Probe the encoder each video output will use, once per codec, when --codec, --pix-fmt,
    --crf or --preset change what the defaults are known to do (:func:`probe_encoder`)."""
    if opts.pix_fmt is None and opts.preset is None and opts.crf is None:
        return
    seen = set()
    for j in jobs:
        if j.kind != "video":
            continue
        default_codec, default_pix_fmt, default_options = _writer_defaults(j.dst)
        codec = codec_for(opts, j.dst) or default_codec
        pix_fmt = opts.pix_fmt or (default_pix_fmt if codec == default_codec else None)
        options = opts.encoder_options(default_options if codec == default_codec else None)
        key = (codec, pix_fmt, tuple(sorted(options.items())))
        if key not in seen:
            seen.add(key)
            probe_encoder(codec, pix_fmt, options, named_codec=opts.codec not in (None, "auto"),
                          given=opts.encoder_flags())


def codec_for(opts: "OutputOptions", dst: Path) -> Optional[str]:
    """The encoder a video output ``dst`` gets: ``--codec``, or with ``--codec auto`` a hardware
    H.264 encoder that opens here (with the same --pix-fmt/--crf/--preset) when the container's
    default is H.264, else the container's default (None)."""
    if opts.codec != "auto":
        return opts.codec
    if _writer_defaults(dst)[0] != "libx264":
        return None
    return _auto_h264(opts.pix_fmt, tuple(sorted(opts.encoder_options().items())))


@functools.lru_cache(maxsize=None)
def _auto_h264(pix_fmt: Optional[str], options: Tuple[Tuple[str, str], ...]) -> Optional[str]:
    """The first of :data:`AUTO_H264` that opens here, saying which (once per settings)."""
    why = []
    for name in AUTO_H264:
        try:
            info = av.codec.Codec(name, "w")
        except Exception:  # noqa: BLE001 - not in this FFmpeg build
            why.append(f"{name} is not in this FFmpeg")
            continue
        reason = open_failure(info, pix_fmt or "yuv420p", dict(options))
        if reason is None:
            log.info("--codec auto: %s (hardware encoder)", name)
            return name
        why.append(f"{name} does not open here: {reason}; {gpu_description()}")
    log.info("--codec auto: libx264 (%s)", "; ".join(why))
    return None


def gpu_description() -> str:
    """The NVIDIA GPUs the driver lists (``/proc/driver/nvidia``), for messages; no torch needed."""
    names = []
    for info in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        try:
            text = Path(info).read_text(errors="replace")
        except OSError:
            continue
        names += [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model:")]
    if not names:
        return "no NVIDIA GPU found"
    return "GPU: " + ", ".join(dict.fromkeys(names))
