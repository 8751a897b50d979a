"""Raw frame streams for shell pipelines: packed rgb24/gray8 and YUV4MPEG2 (``.y4m``).

    ffmpeg -i in.mp4 -f rawvideo -pix_fmt rgb24 - | frametrans ... | ffmpeg -f rawvideo ...
    ffmpeg -i in.mp4 -f yuv4mpegpipe - | frametrans ... | ffmpeg -f yuv4mpegpipe -i - out.mp4

Readers yield :class:`Frame` objects one at a time (memory bounded by one frame) and read with
``readinto`` until a frame is complete, so short reads from pipes are fine. A stream that ends in
the middle of a frame raises :class:`TruncatedInputError` (an :class:`InputError`) saying how many
bytes of the frame arrived, after every complete frame has been yielded.

Untrusted sizes: a frame of more than ``FRAMETRANS_MAX_IMAGE_PIXELS`` pixels (default: the bound
Pillow puts on images, ~179 megapixels; 0 lifts it) is refused before anything is read, and the
buffer of the first frame grows with the bytes that actually arrive (1 MiB, then doubling), so a
149-byte stream whose header claims 20000x20000 costs no more than those 149 bytes.

Y4M colour: BT.601, limited range (16..235) unless the header says ``XCOLORRANGE=FULL``, which is
what ffmpeg writes and expects for yuv4mpegpipe. The writer emits ``C444`` by default (no chroma
loss, any width/height) or ``C420jpeg``.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from typing import BinaryIO

import os

import cv2
import numpy as np

from .errors import InputError, TruncatedInputError
from .frame import Frame
from .images import _PILLOW_DEFAULT_LIMIT, PIXEL_LIMIT_ENV

__all__ = [
    "check_frame_size",
    "max_frame_pixels",
    "iter_raw_frames",
    "read_y4m_header",
    "write_raw_frame",
    "iter_y4m_frames",
    "Y4MHeader",
    "Y4MWriter",
    "rgb_to_yuv444",
    "yuv_to_rgb",
]

STDIN = "<stdin>"

# Pillow refuses images over 2 x Image.MAX_IMAGE_PIXELS (its decompression-bomb guard); streams get
# the same bound, and the same variable raises it (see frametrans.io.images).
DEFAULT_MAX_FRAME_PIXELS = 2 * _PILLOW_DEFAULT_LIMIT
_FIRST_READ = 1 << 20  # the first frame's buffer starts here and doubles as data arrives


def max_frame_pixels() -> int | None:
    """The largest frame (in pixels) a stream may declare: ``FRAMETRANS_MAX_IMAGE_PIXELS`` if set
    (0: no bound), else the images' decompression-bomb bound (~179 megapixels)."""
    value = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_FRAME_PIXELS
    try:
        limit = int(float(value))
    except ValueError:
        raise ValueError(f"{PIXEL_LIMIT_ENV}={value!r}: expected a number of pixels") from None
    return limit if limit > 0 else None


def check_frame_size(width: int, height: int, what: str) -> None:
    """ValueError (one line naming ``what`` and the size) if ``width x height`` is over
    :func:`max_frame_pixels`; ``what`` says where the size came from (``"--size"``, a header)."""
    limit = max_frame_pixels()
    if limit is not None and width * height > limit:
        raise ValueError(
            f"{what} {width}x{height}: {width * height / 1e6:.0f} megapixels per frame, over the "
            f"{limit / 1e6:.0f}-megapixel bound for untrusted sizes (possible decompression bomb); "
            f"to allow it, set {PIXEL_LIMIT_ENV}=PIXELS"
        )


# ------------------------------------------------------------------------------ raw rgb24 / gray


def iter_raw_frames(
    stream: BinaryIO,
    width: int,
    height: int,
    channels: int = 3,
    *,
    fps: Fraction | float | None = None,
    source: str = STDIN,
) -> Iterator[Frame]:
    """Yield (height, width, channels) uint8 frames of exactly ``width*height*channels`` bytes.

    channels: 3 for rgb24, 1 for gray8. With ``fps``, frames get ``pts = index`` and
    ``time_base = 1/fps``; without it they carry no timing. Ends quietly at a frame boundary;
    raises :class:`TruncatedInputError` if the stream ends inside a frame.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"raw frame size must be positive, got {width}x{height}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (gray8) or 3 (rgb24), got {channels}")
    check_frame_size(width, height, "raw frame size")
    time_base = _time_base(fps)
    frame_bytes = width * height * channels
    index = 0
    while True:
        buffer, got = _read_frame(stream, frame_bytes, grow=index == 0)
        if got == 0:
            return
        if got < frame_bytes:
            raise TruncatedInputError(
                source,
                f"stream ended inside frame {index}: got {got} of {frame_bytes} bytes "
                f"({width}x{height}x{channels}); check the frame size and pixel format",
                frames_read=index,
            )
        image = buffer.reshape(height, width, channels)
        yield Frame(
            image=image,
            index=index,
            source=source,
            pts=index if time_base is not None else None,
            time_base=time_base,
        )
        index += 1


def write_raw_frame(stream: BinaryIO, image: Frame | np.ndarray) -> None:
    """Write one (H, W, C) uint8 image as packed bytes (rgb24 for C=3, gray8 for C=1).

    Alpha is not written (rgb24 has none). Raises ``ValueError`` for other dtypes.
    """
    if isinstance(image, Frame):
        image = image.image
    if image.dtype != np.uint8:
        raise ValueError(f"raw frames are 8-bit; got {image.dtype} (convert to uint8 first)")
    stream.write(memoryview(np.ascontiguousarray(image)).cast("B"))


def _read_frame(stream: BinaryIO, nbytes: int, *, grow: bool) -> tuple[np.ndarray, int]:
    """Read one frame of ``nbytes`` into a new 1-D uint8 array; returns (array, bytes read).

    grow: the size comes from an untrusted header and no frame has arrived yet: the buffer starts
    at 1 MiB and doubles only while the stream keeps delivering, so memory follows the data that
    actually arrives (a short stream never costs a whole claimed frame).
    """
    if not grow or nbytes <= _FIRST_READ:
        buffer = np.empty(nbytes, np.uint8)
        return buffer, _read_exactly(stream, buffer)
    buffer = np.empty(_FIRST_READ, np.uint8)
    got = _read_exactly(stream, buffer)
    while got == len(buffer) < nbytes:
        bigger = np.empty(min(nbytes, 2 * len(buffer)), np.uint8)
        bigger[:got] = buffer
        buffer = bigger
        got += _read_exactly(stream, buffer[got:])
    return buffer, got


def _read_exactly(stream: BinaryIO, buffer) -> int:
    """Fill ``buffer`` (bytearray or 1-D uint8 array) from ``stream``; returns the number of bytes
    read (less only at EOF)."""
    view = memoryview(buffer).cast("B")
    got = 0
    readinto = getattr(stream, "readinto", None)
    while got < len(buffer):
        if readinto is not None:
            n = readinto(view[got:])
        else:
            chunk = stream.read(len(buffer) - got)
            n = len(chunk) if chunk else 0
            view[got : got + n] = chunk or b""
        if not n:
            break
        got += n
    return got


def _time_base(fps: Fraction | float | None) -> Fraction | None:
    if fps is None:
        return None
    fps = Fraction(fps).limit_denominator(1_000_000)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return 1 / fps


# ------------------------------------------------------------------------------------------ Y4M


class Y4MHeader:
    """Parsed ``YUV4MPEG2`` stream header: W, H, F (rate), A (aspect), C (chroma), I, X tags."""

    def __init__(self, line: bytes, source: str = STDIN) -> None:
        self.source = source
        fields = line.decode("ascii", "replace").split()
        if not fields or fields[0] != "YUV4MPEG2":
            raise InputError(source, "not a YUV4MPEG2 (y4m) stream: header must start with 'YUV4MPEG2'")
        self.width = self.height = 0
        self.fps: Fraction | None = None
        self.aspect: Fraction | None = None
        self.chroma = "420jpeg"  # the format's default when C is absent
        self.interlace = "p"
        self.extensions: dict[str, str] = {}
        try:
            for field in fields[1:]:
                tag, value = field[0], field[1:]
                if tag == "W":
                    self.width = int(value)
                elif tag == "H":
                    self.height = int(value)
                elif tag == "F":
                    num, den = value.split(":")
                    self.fps = Fraction(int(num), int(den)) if int(num) and int(den) else None
                elif tag == "A":
                    num, den = value.split(":")
                    self.aspect = Fraction(int(num), int(den)) if int(num) and int(den) else None
                elif tag == "C":
                    self.chroma = value
                elif tag == "I":
                    self.interlace = value
                elif tag == "X" and "=" in value:
                    key, val = value.split("=", 1)
                    self.extensions[key.upper()] = val.upper()
        except (ValueError, IndexError):
            raise InputError(source, f"bad y4m header field {field!r}") from None
        if self.width <= 0 or self.height <= 0:
            raise InputError(source, "y4m header lacks a valid size (W and H tags)")
        try:
            check_frame_size(self.width, self.height, "y4m header size")
        except ValueError as exc:
            raise InputError(source, str(exc)) from None
        if self.chroma not in ("420jpeg", "420paldv", "420mpeg2", "420", "422", "444", "mono"):
            raise InputError(
                source,
                f"y4m colour space C{self.chroma} is not supported; use 8-bit 420, 422, 444 or mono "
                "(ffmpeg: -pix_fmt yuv420p or yuv444p)",
            )
        self.full_range = self.extensions.get("COLORRANGE") == "FULL"

    @property
    def plane_shapes(self) -> list[tuple[int, int]]:
        """(rows, cols) of each plane stored for one frame."""
        w, h = self.width, self.height
        if self.chroma.startswith("420"):
            c = ((h + 1) // 2, (w + 1) // 2)
        elif self.chroma == "422":
            c = (h, (w + 1) // 2)
        elif self.chroma == "444":
            c = (h, w)
        else:  # mono
            return [(h, w)]
        return [(h, w), c, c]

    @property
    def frame_bytes(self) -> int:
        return sum(r * c for r, c in self.plane_shapes)


def read_y4m_header(stream: BinaryIO, *, source: str = STDIN) -> Y4MHeader:
    """Read and check the ``YUV4MPEG2`` header line (InputError if it is missing or bad); the
    stream is left at the first frame, for :func:`iter_y4m_frames` with ``header=``."""
    line = _read_line(stream, 4096, source)
    if line is None:
        raise InputError(source, "empty input: expected a y4m stream")
    return Y4MHeader(line, source)


def iter_y4m_frames(
    stream: BinaryIO, *, source: str = STDIN, header: Y4MHeader | None = None
) -> Iterator[Frame]:
    """Yield RGB (or gray, for ``Cmono``) uint8 frames from a YUV4MPEG2 stream.

    Frames carry ``pts = index`` and ``time_base = 1/F`` from the header. ``header``: already read
    with :func:`read_y4m_header` (to see the rate, aspect and interlacing first). Raises
    :class:`InputError` for a bad header and :class:`TruncatedInputError` if the stream ends
    inside a frame.
    """
    if header is None:
        header = read_y4m_header(stream, source=source)
    time_base = 1 / header.fps if header.fps else None
    shapes = header.plane_shapes
    frame_bytes = header.frame_bytes
    index = 0
    while True:
        marker = _read_line(stream, 4096, source)
        if marker is None:
            return
        if not marker.startswith(b"FRAME"):
            raise InputError(source, f"bad y4m frame marker before frame {index}: {marker[:20]!r}")
        buffer, got = _read_frame(stream, frame_bytes, grow=index == 0)
        if got < frame_bytes:
            raise TruncatedInputError(
                source,
                f"y4m stream ended inside frame {index}: got {got} of {frame_bytes} bytes "
                f"({header.width}x{header.height} C{header.chroma})",
                frames_read=index,
            )
        planes, offset = [], 0
        for rows, cols in shapes:
            planes.append(buffer[offset : offset + rows * cols].reshape(rows, cols))
            offset += rows * cols
        if len(planes) == 1:
            image = planes[0][:, :, None]
        else:
            image = yuv_to_rgb(planes[0], planes[1], planes[2], full_range=header.full_range)
        pts = index if time_base else None
        yield Frame(image=image, index=index, source=source, pts=pts, time_base=time_base)
        index += 1


def _read_line(stream: BinaryIO, limit: int, source: str) -> bytes | None:
    """Read one header line without its b'\\n'; None at a clean end of stream."""
    out = bytearray()
    while True:
        ch = stream.read(1)
        if not ch:
            return bytes(out) if out else None
        if ch == b"\n":
            return bytes(out)
        out += ch
        if len(out) > limit:
            raise InputError(source, f"y4m header line longer than {limit} bytes: {bytes(out[:40])!r}...")


# BT.601 coefficients (the same as OpenCV's COLOR_YUV2RGB_I420 / COLOR_RGB2YUV_I420).
_KR, _KB = 0.299, 0.114
_KG = 1 - _KR - _KB


def yuv_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray, *, full_range: bool = False) -> np.ndarray:
    """BT.601 Y'CbCr planes -> (H, W, 3) uint8 RGB. Chroma planes may be subsampled (420/422);
    they are upsampled by repetition. Limited range (16..235/240) unless ``full_range``."""
    h, w = y.shape
    if not full_range and u.shape == ((h + 1) // 2, (w + 1) // 2) and h % 2 == 0 and w % 2 == 0:
        i420 = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(h * 3 // 2, w)
        return cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420)
    if u.shape != y.shape:
        ry, rx = -(-h // u.shape[0]), -(-w // u.shape[1])
        u = np.repeat(np.repeat(u, ry, axis=0), rx, axis=1)[:h, :w]
        v = np.repeat(np.repeat(v, ry, axis=0), rx, axis=1)[:h, :w]
    yf = y.astype(np.float32)
    cb = u.astype(np.float32) - 128
    cr = v.astype(np.float32) - 128
    if not full_range:
        yf = (yf - 16) * (255 / 219)
        cb *= 255 / 224
        cr *= 255 / 224
    r = yf + 2 * (1 - _KR) * cr
    b = yf + 2 * (1 - _KB) * cb
    g = (yf - _KR * r - _KB * b) / _KG
    rgb = np.stack([r, g, b], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def rgb_to_yuv444(rgb: np.ndarray, *, full_range: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB -> BT.601 Y, Cb, Cr planes (H, W) uint8, limited range by default."""
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    yf = _KR * r + _KG * g + _KB * b
    cb = (b - yf) / (2 * (1 - _KB))
    cr = (r - yf) / (2 * (1 - _KR))
    if not full_range:
        yf = 16 + yf * (219 / 255)
        cb *= 224 / 255
        cr *= 224 / 255
    planes = (yf, cb + 128, cr + 128)
    return tuple(np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in planes)  # type: ignore[return-value]


class Y4MWriter:
    """Write RGB (or gray) uint8 frames to a binary stream as YUV4MPEG2.

    chroma: ``"444"`` (default: exact chroma, odd sizes fine) or ``"420"`` (written as
    ``C420jpeg``, chroma averaged over 2x2 blocks; 4x smaller chroma, what most encoders want).
    Gray frames are written as colour with neutral chroma. ``aspect`` (pixel aspect ratio, None:
    unknown, ``A0:0``) and ``interlace`` (``p``, ``t``, ``b`` or ``m``) are written as given, so a
    stream passed through keeps its tags. Use as a context manager or call :meth:`write` then
    :meth:`flush`; the header is written with the first frame.
    """

    def __init__(
        self,
        stream: BinaryIO,
        width: int,
        height: int,
        fps: Fraction | float = 25,
        *,
        chroma: str = "444",
        aspect: Fraction | None = None,
        interlace: str = "p",
    ) -> None:
        if chroma not in ("444", "420"):
            raise ValueError(f"chroma must be '444' or '420', got {chroma!r}")
        if interlace not in ("p", "t", "b", "m"):
            raise ValueError(f"interlace must be 'p', 't', 'b' or 'm', got {interlace!r}")
        self.stream = stream
        self.width, self.height = int(width), int(height)
        self.fps = Fraction(fps).limit_denominator(1_000_000)
        self.chroma = chroma
        self.aspect = aspect
        self.interlace = interlace
        self.frames_written = 0

    def header(self) -> bytes:
        tag = "C444" if self.chroma == "444" else "C420jpeg XYSCSS=420JPEG"
        aspect = f"{self.aspect.numerator}:{self.aspect.denominator}" if self.aspect else "0:0"
        return (
            f"YUV4MPEG2 W{self.width} H{self.height} F{self.fps.numerator}:{self.fps.denominator} "
            f"I{self.interlace} A{aspect} {tag}\n"
        ).encode("ascii")

    def write(self, image: Frame | np.ndarray) -> None:
        """Write one (H, W, 3) RGB or (H, W, 1)/(H, W) gray uint8 frame of the declared size."""
        if isinstance(image, Frame):
            image = image.image
        if image.ndim == 2:
            image = image[:, :, None]
        if image.dtype != np.uint8:
            raise ValueError(f"y4m output is 8-bit; got {image.dtype} (convert to uint8 first)")
        if image.shape[:2] != (self.height, self.width):
            raise ValueError(
                f"frame size {image.shape[1]}x{image.shape[0]} differs from the y4m stream size "
                f"{self.width}x{self.height}"
            )
        if image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        y, u, v = rgb_to_yuv444(image)
        if self.chroma == "420":
            u, v = _subsample_420(u), _subsample_420(v)
        if self.frames_written == 0:
            self.stream.write(self.header())
        self.stream.write(b"FRAME\n")
        for plane in (y, u, v):
            self.stream.write(memoryview(np.ascontiguousarray(plane)).cast("B"))
        self.frames_written += 1

    def flush(self) -> None:
        self.stream.flush()

    def __enter__(self) -> "Y4MWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()


def _subsample_420(plane: np.ndarray) -> np.ndarray:
    """Average 2x2 blocks (edge pixels repeated for odd sizes): (H, W) -> (ceil H/2, ceil W/2)."""
    h, w = plane.shape
    if h % 2 or w % 2:
        plane = np.pad(plane, ((0, h % 2), (0, w % 2)), mode="edge")
    return cv2.resize(plane, (plane.shape[1] // 2, plane.shape[0] // 2), interpolation=cv2.INTER_AREA)
