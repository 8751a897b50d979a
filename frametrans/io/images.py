"""Read and write single images (and the frames of animated GIF/WebP) as :class:`Frame` objects.

Reading (:func:`read_image`) gives the picture as it is meant to be seen:

- EXIF orientation is applied (phone JPEGs come out upright), the tag is not kept;
- gray stays gray, (H, W, 1); palette, CMYK, YCbCr, LAB, HSV and 1-bit images become RGB;
- an alpha channel (RGBA, LA, palette transparency) is split off into ``Frame.alpha``;
- 16-bit PNG/TIFF stay uint16 (Pillow would cut 16-bit RGB to 8 bits, so those go through OpenCV);
- floating-point TIFFs are refused with a clear error: their value range is unknown, and guessing
  it would silently change the picture;
- an embedded ICC profile that is not sRGB (Adobe RGB, Display P3, a CMYK press profile, a gray
  gamma profile) is applied: the pixels are converted to sRGB, the space the models were trained in,
  and one warning per file says so (the outputs are then plain sRGB, written without a profile);
- animated GIF/WebP/PNG and multi-page TIFF: :func:`read_image` returns the first frame,
  :func:`iter_image_frames` all of them, with their display times as ``pts`` in milliseconds;
  :func:`animation_info` gives the frame count and loop count from the header.

Empty, truncated or non-image files raise :class:`InputError` with a one-line message naming the
file. Writing (:func:`write_image`) is atomic: the bytes go to a hidden temporary file in the same
folder, are fsynced, and replace the destination in one ``os.replace``, so a crash or Ctrl-C never
leaves a half-written image under the final name.

Speed (every function here runs on the decode/encode worker pools of a folder job, beside other
threads running Python, so a codec call that leaves the GIL once beats one that takes it back for
every piece of the file): PNGs are written by OpenCV with its speed-tuned defaults (SUB filter,
zlib level 1, RLE strategy): 48 ms for a 1280x720 photo against 252 ms for Pillow's default
(level 6) and 109 ms for Pillow's level 1, the file 12% larger than level 6 (measured on one core,
2026-11-30); gray + alpha PNGs, which OpenCV cannot write, go through Pillow at level 1. Complete
8-bit RGB/gray JPEGs are decoded by OpenCV (the same libjpeg-turbo result as Pillow, pixel for
pixel, on 72 variants of subsampling, quality and progressive; 11 against 17 ms at 720p), and so
are complete, still 8-bit RGB, RGBA and gray PNGs without a transparency key, ICC profile or XMP
(see :func:`_decode_png_opencv`): Pillow takes the GIL back for every 64 KiB of a PNG, and beside
a busy Python thread a 720p PNG read ran at 0.02x its speed alone, against 0.42x through OpenCV
(``examples/gil_pressure.py``, 2026-12-01). Anything else, or anything OpenCV does not decode, goes
to Pillow. JPEGs are written by OpenCV with Pillow's settings: the same bytes where
both carry libjpeg-turbo, as the wheels do (0.28 against 0.66 ms CPU for a 256x256 frame,
2026-12-01).
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import stat
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from frametrans.atomic import atomic_write_bytes

from .colour import SrgbConverter
from .errors import InputError
from .frame import Frame

__all__ = [
    "IMAGE_EXTENSIONS",
    "WRITABLE_IMAGE_EXTENSIONS",
    "read_image",
    "iter_image_frames",
    "write_image",
    "write_animation",
    "is_animated_image",
    "animation_info",
    "AnimationInfo",
    "ANIMATED_IMAGE_EXTENSIONS",
    "MULTIPAGE_IMAGE_EXTENSIONS",
    "describe_content",
    "apply_exif_orientation",
]

log = logging.getLogger(__name__)

# OpenCV prints decoder warnings and errors ("PNG input buffer is incomplete") straight to stderr;
# our InputErrors already say what is wrong with a file, in one line.
try:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
except AttributeError:  # pragma: no cover - very old OpenCV
    pass

#: Extensions (lower case, with the dot) that :func:`read_image` reads; folders are filtered by it.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".tif", ".tiff", ".bmp", ".gif",
     ".ppm", ".pgm", ".pbm", ".pnm"}
)

# extension -> (Pillow format name, OpenCV extension for 16-bit, supports alpha)
_WRITE_FORMATS: dict[str, tuple[str, str | None, bool]] = {
    ".png": ("PNG", ".png", True),
    ".jpg": ("JPEG", None, False),
    ".jpeg": ("JPEG", None, False),
    ".webp": ("WEBP", None, True),
    ".tif": ("TIFF", ".tiff", True),
    ".tiff": ("TIFF", ".tiff", True),
    ".bmp": ("BMP", None, False),  # Pillow's 32-bit BMP has no alpha mask: readers see RGB
}
#: Extensions :func:`write_image` can write; 16-bit only for .png and .tif/.tiff.
WRITABLE_IMAGE_EXTENSIONS: frozenset[str] = frozenset(_WRITE_FORMATS)

_EXIF_ORIENTATION = 0x0112
_PILLOW_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, Image.DecompressionBombError)


# --------------------------------------------------------------------------------------- reading


PIXEL_LIMIT_ENV = "FRAMETRANS_MAX_IMAGE_PIXELS"
_PILLOW_DEFAULT_LIMIT = Image.MAX_IMAGE_PIXELS


def _apply_pixel_limit() -> None:
    """Pillow refuses images over 2 x ``Image.MAX_IMAGE_PIXELS`` (~179 MP by default) as possible
    decompression bombs. ``FRAMETRANS_MAX_IMAGE_PIXELS=N`` raises that bound to N pixels (0: no
    bound) for users with real gigapixel images; tiling then keeps the model's memory bounded."""
    value = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
    if not value:
        Image.MAX_IMAGE_PIXELS = _PILLOW_DEFAULT_LIMIT
        return
    try:
        limit = int(float(value))
    except ValueError:
        raise ValueError(f"{PIXEL_LIMIT_ENV}={value!r}: expected a number of pixels") from None
    # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that: the user chose, so no warning
    Image.MAX_IMAGE_PIXELS = (limit + 1) // 2 if limit > 0 else None
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def read_image(path: str | os.PathLike) -> Frame:
    """Read one image file as an upright :class:`Frame` (index 0, no timestamp).

    Returns ``Frame.image`` (H, W, 3) RGB or (H, W, 1) gray, uint8 or uint16 (16-bit sources),
    in sRGB (an embedded non-sRGB ICC profile is applied, with a warning), and ``Frame.alpha``
    (H, W) of the same dtype when the file has transparency. For animated and multi-page files
    this is the first frame. Raises :class:`InputError` for missing, empty, truncated, non-image or
    floating-point files.
    """
    path = Path(path)
    _check_file(path)
    with _decoder_errors(path):
        try:
            im = Image.open(path)
        except UnidentifiedImageError:
            return _read_with_opencv(path, orientation=1)
        with im:
            colors = SrgbConverter(path, im.info.get("icc_profile"))
            high_bit_depth = _is_high_bit_depth_color(im)  # before getexif(): PNG's loads, clearing tile
            png = None if high_bit_depth else _decode_png_opencv(im, path, colors)
            if png is not None:
                return _frame(path, 0, *png)
            orientation = _orientation(im)
            if high_bit_depth:
                return _read_with_opencv(path, orientation, colors)
            decoded = _decode_jpeg_opencv(im, path, colors)
            image, alpha = decoded if decoded is not None else _decode_pillow(im, path, colors)
        return _frame(path, 0, image, alpha, orientation)


_JPEG_END = b"\xff\xd9"
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.11


def _decode_jpeg_opencv(im: Image.Image, path: Path, colors: "SrgbConverter"
                        ) -> tuple[np.ndarray, None] | None:
    """A complete 8-bit RGB or gray JPEG decoded by OpenCV (faster than Pillow's decoder, the same
    pixels), stored orientation, colours converted like Pillow's; None: let Pillow decode it (other
    modes, a file that does not end with the end-of-image marker, whose truncation Pillow
    reports, or anything OpenCV fails on)."""
    if im.format != "JPEG" or im.mode not in ("RGB", "L"):
        return None
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if data.size < 4 or data[-2:].tobytes() != _JPEG_END:
        return None
    gray = im.mode == "L"
    flag = cv2.IMREAD_GRAYSCALE if gray else (_IMREAD_RGB if _IMREAD_RGB is not None else cv2.IMREAD_COLOR)
    try:
        out = cv2.imdecode(data, flag | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        return None
    if out is None or out.shape[:2] != (im.height, im.width):
        return None
    if gray:
        out = out[:, :, None]
    elif _IMREAD_RGB is None:
        out = cv2.cvtColor(out, cv2.COLOR_BGR2RGB)
    return _in_srgb(colors, out), None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT_CHUNKS = (b"eXIf", b"tEXt", b"zTXt", b"iTXt")  # where EXIF can hide after the pixels
#: PNG header entries that send a file to Pillow: EXIF or orientation that only Pillow reads (raw
#: EXIF text, XMP's tiff:Orientation), and ICC profiles, whose quirks libpng reports on stderr for
#: every read ("iCCP: known incorrect sRGB profile") where Pillow stays quiet.
_PNG_PILLOW_ONLY = frozenset({"Raw profile type exif", "XML:com.adobe.xmp", "xmp", "icc_profile"})


def _decode_png_opencv(im: Image.Image, path: Path, colors: "SrgbConverter"
                       ) -> tuple[np.ndarray, np.ndarray | None, int] | None:
    """A complete, still, 8-bit RGB, RGBA or gray PNG without a transparency key decoded by OpenCV:
    (image in sRGB, alpha or None, EXIF orientation), the pixels Pillow gives. None: let Pillow
    decode it (other modes and depths, APNG, a file that does not end with its IEND chunk, EXIF
    or text after the pixels, XMP, an ICC profile, anything OpenCV fails on; for a corrupt file
    libpng prints its own line on stderr first, as libjpeg does for a corrupt JPEG).

    Why: Pillow decodes a PNG in 64 KiB pieces, taking the GIL back for each; beside busy Python
    threads (a writer pool, the runner) every piece waits for the interpreter, and a 1280x720 PNG
    took 50x longer; OpenCV decodes it in one call without the GIL (measured 2026-12-01)."""
    if im.format != "PNG" or im.mode not in ("RGB", "RGBA", "L") or "transparency" in im.info:
        return None
    if getattr(im, "is_animated", False) or not _PNG_PILLOW_ONLY.isdisjoint(im.info):
        return None
    if [_tile_rawmode(t) for t in im.tile] != [im.mode]:  # 8 bits a sample (not L;2, RGB;16B...)
        return None
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if not _png_complete_without_late_text(memoryview(data)):
        return None
    orientation = _orientation(im) if "exif" in im.info else 1  # eXIf before the pixels: no load
    flag = {"L": cv2.IMREAD_GRAYSCALE, "RGBA": cv2.IMREAD_UNCHANGED}.get(im.mode, cv2.IMREAD_COLOR)
    try:
        out = cv2.imdecode(data, flag | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        return None
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[im.mode]
    if out is None or out.dtype != np.uint8 or out.shape[:2] != (im.height, im.width) or (
            (out.shape[2] if out.ndim == 3 else 1) != channels):
        return None
    image, alpha = _split_opencv(path, out)
    return _in_srgb(colors, image), alpha, orientation


def _tile_rawmode(tile: object) -> object:
    args = tile.args if hasattr(tile, "args") else tile[3]  # type: ignore[index]
    return args if isinstance(args, str) else (args[0] if args else None)


def _png_complete_without_late_text(data: memoryview) -> bool:
    """Whether the PNG in ``data`` is a well-formed chain of chunks that ends with IEND at the end
    of the file, with no EXIF or text chunk after its image data (Pillow reads those only when it
    decodes the pixels, and EXIF there can turn the picture)."""
    if data[:8] != _PNG_SIGNATURE:
        return False
    pos, end, seen_pixels = 8, len(data), False
    while pos + 12 <= end:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = bytes(data[pos + 4:pos + 8])
        if kind == b"IEND":
            return pos + 12 + length == end
        if kind == b"IDAT":
            seen_pixels = True
        elif seen_pixels and kind in _PNG_TEXT_CHUNKS:
            return False
        pos += 12 + length
    return False


@dataclass(frozen=True)
class AnimationInfo:
    """What the header of an animated or multi-page image says.

    format: Pillow's format name ("PNG", "WEBP", "GIF", "TIFF"); frames: number of frames or pages;
    loop: how many times the animation plays (0: forever; APNG num_plays, WebP loop count), None
    for formats without one (TIFF pages, still images).
    """

    format: str
    frames: int
    loop: int | None

    @property
    def is_multipage(self) -> bool:
        """Pages of a document (TIFF), not timed frames of an animation."""
        return self.format == "TIFF"


def animation_info(path: str | os.PathLike) -> AnimationInfo:
    """Format, frame (page) count and loop count of an image file, from its header.

    Raises :class:`InputError` when the file cannot be opened as an image.
    """
    path = Path(path)
    _check_file(path)
    with _decoder_errors(path):
        with Image.open(path) as im:
            frames = int(getattr(im, "n_frames", 1))
            loop = im.info.get("loop") if im.format != "TIFF" else None
            return AnimationInfo(str(im.format), frames, None if loop is None else int(loop))


def iter_image_frames(path: str | os.PathLike, *, durations: list[int | None] | None = None) -> Iterator[Frame]:
    """Yield every frame of an animated GIF/WebP/PNG or every page of a TIFF (one frame for a still
    image).

    Frames are full composited pictures (disposal handled by Pillow), upright, RGB or gray in sRGB,
    with alpha split off as in :func:`read_image`; TIFF pages keep their own size, mode and depth
    (16-bit pages stay uint16). ``pts`` is the display time in milliseconds (``time_base`` 1/1000)
    when the file gives frame durations, else None. When ``durations`` is a list, the display time
    of each frame in milliseconds (None when the file gives none) is appended to it as the frame is
    yielded: this is the only place the last frame's duration is known.
    """
    path = Path(path)
    _check_file(path)
    with _decoder_errors(path):
        try:
            im = Image.open(path)
        except UnidentifiedImageError:
            im = None
    if im is None:
        if durations is not None:
            durations.append(None)
        yield _read_with_opencv(path, orientation=1)
        return
    with im, _decoder_errors(path):
        colors = SrgbConverter(path, im.info.get("icc_profile"))
        pages = im.format == "TIFF" and getattr(im, "n_frames", 1) > 1
        high_bit_depth = _is_high_bit_depth_color(im)
        orientation = _orientation(im)
        if pages:
            yield from _iter_tiff_pages(path, im, colors, durations)
            return
        if high_bit_depth:
            if durations is not None:
                durations.append(None)
            yield _read_with_opencv(path, orientation, colors)
            return
        animated = getattr(im, "is_animated", False)
        t_ms = 0
        index = 0
        try:
            for page in ImageSequence.Iterator(im):
                image, alpha = _decode_pillow(page, path, colors)  # loads: WebP sets "duration" here
                duration = page.info.get("duration") if animated else None
                frame = _frame(path, index, image, alpha, orientation)
                if duration is not None:
                    frame.pts, frame.time_base = t_ms, Fraction(1, 1000)
                    t_ms += int(round(duration))
                if durations is not None:
                    durations.append(None if duration is None else int(round(duration)))
                yield frame
                index += 1
        except _PILLOW_ERRORS as exc:
            raise InputError(path, f"cannot read frame {index}: {exc}") from None


def _iter_tiff_pages(path: Path, im: Image.Image, colors: "SrgbConverter",
                     durations: list[int | None] | None) -> Iterator[Frame]:
    """Every page of a multi-page TIFF, each with its own orientation; 16-bit colour pages (which
    Pillow would cut to 8 bits) are decoded by OpenCV."""
    n = int(im.n_frames)
    for index in range(n):  # Pillow checks the pixel bound for the first page only, at open
        im.seek(index)
        _check_page_size(path, im, index, n)
    deep: list[np.ndarray] | None = None
    for index in range(n):
        try:
            im.seek(index)
            if _is_high_bit_depth_color(im):
                if deep is None:
                    deep = _decode_tiff_pages_opencv(path, n)
                image, alpha = _split_opencv(path, deep[index])
                image = colors(image)
            else:
                image, alpha = _decode_pillow(im, path, colors)
            orientation = _orientation(im)
        except InputError:
            raise
        except _PILLOW_ERRORS as exc:
            raise InputError(path, f"cannot read page {index + 1} of {n}: {exc}") from None
        if durations is not None:
            durations.append(None)
        yield _frame(path, index, image, alpha, orientation)


def _check_page_size(path: Path, im: Image.Image, index: int, n: int) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    w, h = im.size
    if limit and w * h > 2 * limit:
        raise InputError(path, f"refused: page {index + 1} of {n} is {w}x{h} = {w * h} pixels, over the limit of "
                               f"{2 * limit} (to allow it, set {PIXEL_LIMIT_ENV}=PIXELS)")


def _decode_tiff_pages_opencv(path: Path, n: int) -> list[np.ndarray]:
    ok, pages = cv2.imdecodemulti(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if not ok or len(pages) != n:
        raise InputError(path, f"cannot decode the 16-bit pages of this {n}-page TIFF")
    return list(pages)


def _check_file(path: Path) -> None:
    """One stat and one access check (a folder of small images pays this per file)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: a NUL in the name
        st = None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        st = None
    if st is None:
        if path.is_symlink():
            raise InputError(path, f"broken symbolic link (points to {os.readlink(path)})")
        raise InputError(path, "no such file")
    if stat.S_ISDIR(st.st_mode):
        raise InputError(path, "is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(path, "not a regular file (a pipe, socket or device)")
    if st.st_size == 0:
        raise InputError(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise InputError(path, "permission denied (the file is not readable)")
    _apply_pixel_limit()


@contextlib.contextmanager
def _decoder_errors(path: Path) -> Iterator[None]:
    """Whatever a decoder raises on a hostile or broken file becomes one :class:`InputError` line.

    Image decoders fail in many ways on bad data (OSError, SyntaxError, struct.error, ZeroDivision,
    DecompressionBombError...); none of them may end the job or print a traceback.
    """
    try:
        yield
    except InputError:
        raise
    except PermissionError:
        raise InputError(path, "permission denied (the file is not readable)") from None
    except MemoryError:
        raise InputError(path, "not enough memory to decode this image") from None
    except Image.DecompressionBombError as exc:
        raise InputError(path, f"refused: {exc} (to allow it, set {PIXEL_LIMIT_ENV}=PIXELS)") from None
    except Exception as exc:  # noqa: BLE001 - untrusted input: every decoder failure is reported
        text = " ".join(str(exc).split()) or type(exc).__name__
        text = text.replace(f"'{path}'", "").replace(str(path), "").strip(" :") or type(exc).__name__
        raise InputError(path, f"cannot decode image (truncated or corrupt?): {text}") from None


_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftyp", "an MP4/MOV video"),
    (0, b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
    (0, b"RIFF", "a RIFF file (AVI video or WAV audio)"),
    (0, b"OggS", "an Ogg file"),
    (0, b"ID3", "an MP3 audio file"),
    (0, b"%PDF", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive"),
    (0, b"\x1f\x8b", "a gzip archive"),
    (0, b"YUV4MPEG2", "a y4m video stream"),
    (0, b"\x89HDF", "an HDF5 file"),
    (0, b"\x93NUMPY", "a NumPy array file"),
)


_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _image_format_by_magic(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _IMAGE_MAGIC if head.startswith(magic)), None)


def describe_content(path: Path) -> str | None:
    """What the first bytes of a file say it is (``"an MP4/MOV video"``), or None when unknown."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    for offset, magic, what in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            if magic == b"RIFF" and head[8:12] == b"WEBP":
                return None
            return what
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a text file"
    return None


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not make the picture unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def _is_high_bit_depth_color(im: Image.Image) -> bool:
    """Pillow decodes 16-bit RGB/RGBA/LA to 8 bits; such files are read with OpenCV instead."""
    if im.mode.startswith("I") or im.mode == "F":
        return False
    return any(isinstance(rawmode, str) and ";16" in rawmode for rawmode in map(_tile_rawmode, im.tile))


def _decode_pillow(im: Image.Image, path: Path, colors: "SrgbConverter | None" = None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Pillow image -> (image (H, W, C) uint8/uint16 in sRGB, alpha (H, W) or None)."""
    try:
        im.load()
    except _PILLOW_ERRORS as exc:
        raise InputError(path, f"cannot decode image (truncated or corrupt?): {exc}") from None
    mode = im.mode
    if mode == "F":
        raise InputError(
            path,
            "floating-point image (32-bit float) is not supported: its value range is unknown; "
            "convert it to 8- or 16-bit first",
        )
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return _in_srgb(colors, np.asarray(im).astype(np.uint16)[:, :, None]), None
    if mode == "I":
        data = np.asarray(im)
        if data.size and (data.min() < 0 or data.max() > 65535):
            raise InputError(path, "32-bit integer image with values outside 0..65535 is not supported")
        return _in_srgb(colors, data.astype(np.uint16)[:, :, None]), None
    if mode == "CMYK" and colors is not None and colors.takes("CMYK"):
        im = colors.cmyk_to_srgb(im)  # the press profile, not Pillow's naive formula
    elif mode == "1":
        im = im.convert("L")
    elif mode == "La":
        im = im.convert("LA")
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info or (
            im.palette is not None and "A" in im.palette.mode
        )
        im = im.convert("RGBA" if has_alpha else "RGB")
    elif mode in ("RGBa", "RGBX") or mode not in ("L", "LA", "RGB", "RGBA"):
        # CMYK (Adobe-inverted JPEGs are un-inverted by Pillow), YCbCr, LAB, HSV, RGBa, RGBX
        im = im.convert("RGBA" if mode == "RGBa" else "RGB")
    data = np.asarray(im)
    if im.mode == "L":
        return _in_srgb(colors, data[:, :, None]), None
    if im.mode == "LA":
        return _in_srgb(colors, np.ascontiguousarray(data[:, :, :1])), np.ascontiguousarray(data[:, :, 1])
    if im.mode == "RGBA":
        return _in_srgb(colors, np.ascontiguousarray(data[:, :, :3])), np.ascontiguousarray(data[:, :, 3])
    if mode in ("LAB", "HSV", "YCbCr", "CMYK"):  # converted by formula above; a profile does not apply
        return data, None
    return _in_srgb(colors, data), None


def _in_srgb(colors: "SrgbConverter | None", image: np.ndarray) -> np.ndarray:
    return image if colors is None else colors(image)


def _read_with_opencv(path: Path, orientation: int, colors: "SrgbConverter | None" = None) -> Frame:
    """Fallback decoder: 16-bit color PNG/TIFF, and formats Pillow does not identify."""
    try:
        buffer = np.fromfile(path, dtype=np.uint8)  # np.fromfile + imdecode: non-ASCII paths work
        data = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except PermissionError:
        raise InputError(path, "permission denied (the file is not readable)") from None
    except (OSError, cv2.error) as exc:
        raise InputError(path, f"cannot read image: {' '.join(str(exc).split())}") from None
    if data is None:
        image_format = _image_format_by_magic(path)
        if image_format is not None:
            raise InputError(path, f"truncated or corrupt {image_format} file")
        what = describe_content(path)
        if what is not None:
            raise InputError(path, f"not an image: the file is {what}")
        raise InputError(path, "not an image, or an unsupported/corrupt image file")
    image, alpha = _split_opencv(path, data)
    return _frame(path, 0, _in_srgb(colors, image), alpha, orientation)


def _split_opencv(path: Path, data: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """An OpenCV-decoded array (BGR[A] or gray[+alpha]) -> (image RGB or gray (H, W, C), alpha)."""
    if data.dtype.kind == "f":
        raise InputError(
            path,
            "floating-point image (float TIFF/EXR) is not supported: its value range is unknown; "
            "convert it to 8- or 16-bit first",
        )
    if data.dtype not in (np.uint8, np.uint16):
        raise InputError(path, f"unsupported sample type {data.dtype}; expected 8- or 16-bit")
    alpha = None
    if data.ndim == 2:
        image = data[:, :, None]
    elif data.shape[2] == 1:
        image = data
    elif data.shape[2] == 2:  # gray + alpha
        image, alpha = data[:, :, :1], data[:, :, 1]
    elif data.shape[2] == 3:
        image = cv2.cvtColor(data, cv2.COLOR_BGR2RGB)
    else:
        image, alpha = cv2.cvtColor(data[:, :, :3], cv2.COLOR_BGR2RGB), data[:, :, 3]
    return np.ascontiguousarray(image), alpha


def _frame(path: Path, index: int, image: np.ndarray, alpha: np.ndarray | None, orientation: int) -> Frame:
    image = np.ascontiguousarray(apply_exif_orientation(image, orientation))
    if alpha is not None:
        alpha = np.ascontiguousarray(apply_exif_orientation(alpha, orientation))
    return Frame(image=image, index=index, source=str(path), alpha=alpha)


def apply_exif_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a stored (H, W[, C]) array upright for EXIF orientation 1..8 (same as Pillow's
    ``ImageOps.exif_transpose``). Returns a view where possible."""
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:  # transpose: mirror over the main diagonal
        return array.swapaxes(0, 1)
    if orientation == 6:  # stored rotated 90° counter-clockwise: rotate 90° clockwise
        return np.rot90(array, -1)
    if orientation == 7:  # transverse: mirror over the anti-diagonal
        return np.rot90(array, 2).swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(array, 1)
    return array


def write_image(
    path: str | os.PathLike,
    image: Frame | np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    quality: int = 95,
    before_commit: Callable[[], None] | None = None,
    sync_folder: bool = True,
) -> Path:
    """Write an image atomically; the format comes from the extension (see
    ``WRITABLE_IMAGE_EXTENSIONS``).

    image:   a :class:`Frame` (its ``alpha`` is used unless ``alpha`` is given) or an array
             (H, W), (H, W, 1) gray, (H, W, 3) RGB or (H, W, 4) RGBA; uint8, or uint16 for a
             16-bit .png/.tif (other formats refuse uint16 rather than silently dropping bits).
    alpha:   (H, W) opacity, re-attached as the alpha channel; converted to the image dtype
             (x257 or //257) when it differs. JPEG has no alpha: it is dropped with a warning.
    quality: 1..100 for JPEG and WebP.
    before_commit: called once the bytes are in the temporary file, before it replaces ``path``;
             whatever it raises is raised with nothing left behind (a writer pool decides there,
             in input order, whether an output may still appear).
    sync_folder: False leaves the folder's fsync to the caller (see :class:`frametrans.atomic.FolderSync`).

    Returns the path written. Creates missing parent folders.
    """
    path = Path(path)
    if isinstance(image, Frame):
        if alpha is None:
            alpha = image.alpha
        image = image.image
    ext = path.suffix.lower()
    if ext not in _WRITE_FORMATS:
        raise ValueError(
            f"{path}: cannot write images with extension {ext or '(none)'!r}; "
            f"use one of {', '.join(sorted(_WRITE_FORMATS))}"
        )
    pil_format, cv2_ext, supports_alpha = _WRITE_FORMATS[ext]
    image, alpha = _normalize_for_write(path, image, alpha)
    if alpha is not None and not supports_alpha:
        log.warning("%s: %s has no alpha channel; transparency dropped", path, pil_format)
        alpha = None
    if image.dtype == np.uint16:
        if cv2_ext is None:
            raise ValueError(
                f"{path}: {pil_format} cannot store 16-bit images; write .png or .tif, "
                "or convert the image to uint8"
            )
        data = _encode_opencv(path, image, alpha, cv2_ext)
    elif pil_format == "PNG" and not (image.shape[2] == 1 and alpha is not None):
        data = _encode_opencv(path, image, alpha, ".png")  # 8-bit gray, RGB, RGBA: the fast encoder
    elif pil_format == "JPEG":
        data = _encode_jpeg(path, image, quality)
    else:
        data = _encode_pillow(image, alpha, pil_format, quality)
    atomic_write_bytes(path, data, sync_folder=sync_folder, before_commit=before_commit)
    return path


def _normalize_for_write(
    path: Path, image: np.ndarray, alpha: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    image = np.asarray(image)
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: image dtype must be uint8 or uint16, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"{path}: image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {image.shape}"
        )
    if image.size == 0:
        raise ValueError(f"{path}: cannot write an empty image ({image.shape[1]}x{image.shape[0]})")
    if image.shape[2] == 4:
        if alpha is None:
            alpha = image[:, :, 3]
        image = image[:, :, :3]
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.ndim == 3 and alpha.shape[2] == 1:
            alpha = alpha[:, :, 0]
        if alpha.shape != image.shape[:2]:
            raise ValueError(f"{path}: alpha shape {alpha.shape} does not match image size {image.shape[:2]}")
        if alpha.dtype != image.dtype:
            if alpha.dtype == np.uint8 and image.dtype == np.uint16:
                alpha = alpha.astype(np.uint16) * 257
            elif alpha.dtype == np.uint16 and image.dtype == np.uint8:
                alpha = ((alpha.astype(np.uint32) + 128) // 257).astype(np.uint8)
            else:
                raise ValueError(f"{path}: alpha dtype must be uint8 or uint16, got {alpha.dtype}")
    return np.ascontiguousarray(image), alpha


def _encode_pillow(image: np.ndarray, alpha: np.ndarray | None, pil_format: str, quality: int) -> bytes:
    gray = image.shape[2] == 1
    if alpha is None:
        im = Image.fromarray(image[:, :, 0] if gray else image, "L" if gray else "RGB")
    else:
        stacked = np.dstack([image, alpha])
        im = Image.fromarray(stacked, "LA" if gray else "RGBA")
    options: dict = {}
    if pil_format == "JPEG":
        options = {"quality": int(quality), "subsampling": 0 if quality >= 90 else 2}
    elif pil_format == "WEBP":
        options = {"quality": int(quality), "method": 4}
        if im.mode in ("L", "LA"):
            im = im.convert("RGBA" if alpha is not None else "RGB")
    elif pil_format == "TIFF":
        options = {"compression": "tiff_deflate"}
    elif pil_format == "PNG":
        options = {"compress_level": 1}  # gray + alpha only (see write_image): fast, like OpenCV's
    buffer = io.BytesIO()
    im.save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def _encode_jpeg(path: Path, image: np.ndarray, quality: int) -> np.ndarray:
    """(H, W, 1) gray or (H, W, 3) RGB uint8 as JPEG through OpenCV: the bytes Pillow writes with
    the settings of :func:`_encode_pillow` (the same libjpeg-turbo calls: quality, 4:4:4 chroma
    from quality 90, 4:2:0 below), for 2-3x less CPU on small images. Gray JPEGs differ from
    Pillow's in one header byte below quality 90 (Pillow declares a 2x2 sampling factor for the one
    component, which decoders ignore); the pixels are the same."""
    quality = int(quality)
    if not 1 <= quality <= 100:
        raise ValueError(f"{path}: JPEG quality must be 1..100, got {quality}")
    sampling = cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444 if quality >= 90 else cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling]
    src = image[:, :, 0] if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(src), params)
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode a {image.shape} image as JPEG")
    return encoded  # written as it is: no copy into bytes


def _encode_opencv(path: Path, image: np.ndarray, alpha: np.ndarray | None, cv2_ext: str) -> np.ndarray:
    if image.shape[2] == 1 and alpha is None:
        bgr = image[:, :, 0]
    elif image.shape[2] == 1:  # OpenCV has no gray+alpha: store as RGBA with equal color channels
        bgr = np.dstack([image, image, image, alpha])
    elif alpha is None:
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    else:
        bgr = np.dstack([cv2.cvtColor(image, cv2.COLOR_RGB2BGR), alpha])
    ok, encoded = cv2.imencode(cv2_ext, np.ascontiguousarray(bgr))
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode a {image.shape} {image.dtype} image as {cv2_ext}")
    return encoded  # written as it is: no copy into bytes


#: Extensions :func:`write_animation` can write: timed animations (.webp, APNG .png) and
#: multi-page TIFF (.tif/.tiff: pages, no timing).
ANIMATED_IMAGE_EXTENSIONS: frozenset[str] = frozenset({".webp", ".png", ".tif", ".tiff"})
#: Extensions of documents whose frames are pages rather than timed frames.
MULTIPAGE_IMAGE_EXTENSIONS: frozenset[str] = frozenset({".tif", ".tiff"})


def is_animated_image(path: str | os.PathLike) -> bool:
    """True for an animated WebP or PNG (APNG), or a multi-page TIFF, with more than one frame
    (reads the header only).

    Unreadable files answer False: the reader reports them when it gets to them.
    """
    path = Path(path)
    if path.suffix.lower() not in ANIMATED_IMAGE_EXTENSIONS:
        return False
    try:
        with Image.open(path) as im:
            if im.format == "TIFF":
                return getattr(im, "n_frames", 1) > 1
            return bool(getattr(im, "is_animated", False)) and getattr(im, "n_frames", 1) > 1
    except Exception:  # noqa: BLE001 - read_image will say what is wrong with it
        return False


def write_animation(
    path: str | os.PathLike,
    frames: list[Frame],
    durations_ms: list[int] | None = None,
    *,
    loop: int = 0,
    quality: int = 95,
) -> Path:
    """Write frames (RGB or gray, alpha from ``Frame.alpha``) as an animated .webp or .png, or the
    pages of a multi-page .tif.

    durations_ms: display time of each frame, the last one included (default 100 ms each);
    loop: how many times it plays, 0 forever. Animations are 8-bit; TIFF pages keep their own size,
    gray/colour, alpha and depth (uint16 pages stay 16-bit), and have no timing or loop.
    Atomic like :func:`write_image`. Raises ``ValueError`` for other extensions, 16-bit frames in
    an animation, or a duration list of the wrong length.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in ANIMATED_IMAGE_EXTENSIONS:
        raise ValueError(f"{path}: cannot write an animation as {ext or '(none)'!r}; use .webp or .png "
                         "(or .tif for pages)")
    if not frames:
        raise ValueError(f"{path}: no frames to write")
    if ext in MULTIPAGE_IMAGE_EXTENSIONS:
        atomic_write_bytes(path, _encode_pages(path, frames))
        return path
    pictures = []
    for frame in frames:
        image, alpha = _normalize_for_write(path, frame.image, frame.alpha)
        if image.dtype != np.uint8:
            raise ValueError(f"{path}: animated images are 8-bit; got {image.dtype}")
        if image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        pictures.append(Image.fromarray(np.dstack([image, alpha]) if alpha is not None else image,
                                        "RGBA" if alpha is not None else "RGB"))
    if any(p.mode == "RGBA" for p in pictures):
        pictures = [p.convert("RGBA") for p in pictures]
    durations = [max(0, int(round(d))) for d in (durations_ms or [100] * len(pictures))]
    if len(durations) != len(pictures):
        raise ValueError(f"{path}: {len(durations)} durations for {len(pictures)} frames")
    options: dict = {"save_all": True, "append_images": pictures[1:], "duration": durations,
                     "loop": int(loop)}
    if ext == ".webp":
        options.update(quality=int(quality), method=4)
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="WEBP" if ext == ".webp" else "PNG", **options)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _encode_pages(path: Path, frames: list[Frame]) -> bytes:
    """Frames -> one multi-page TIFF (deflate); through OpenCV when a page is 16-bit."""
    pages = [_normalize_for_write(path, f.image, f.alpha) for f in frames]
    if any(image.dtype == np.uint16 for image, _ in pages):
        arrays = []
        for image, alpha in pages:
            if image.shape[2] == 1 and alpha is None:
                arrays.append(image[:, :, 0])
            elif image.shape[2] == 1:
                arrays.append(np.dstack([image, image, image, alpha]))
            else:
                bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
                arrays.append(bgr if alpha is None else np.dstack([bgr, alpha]))
        ok, encoded = cv2.imencodemulti(".tiff", [np.ascontiguousarray(a) for a in arrays])
        if not ok:
            raise ValueError(f"{path}: OpenCV could not encode {len(arrays)} pages as TIFF")
        return encoded.tobytes()
    pictures = []
    for image, alpha in pages:
        gray = image.shape[2] == 1
        if alpha is None:
            pictures.append(Image.fromarray(image[:, :, 0] if gray else image, "L" if gray else "RGB"))
        else:
            pictures.append(Image.fromarray(np.dstack([image, alpha]), "LA" if gray else "RGBA"))
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="TIFF", save_all=True, append_images=pictures[1:],
                     compression="tiff_deflate")
    return buffer.getvalue()
