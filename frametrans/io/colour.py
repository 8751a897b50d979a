"""Embedded ICC profiles: pixels in a file's colour space -> sRGB, the space the models were trained
in and the one untagged outputs are shown in. Used by :mod:`frametrans.io.images` when reading."""

from __future__ import annotations

import functools
import io
import logging
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

log = logging.getLogger(__name__)


_SRGB_PROFILE = None


def _srgb_profile() -> ImageCms.ImageCmsProfile:
    global _SRGB_PROFILE  # built once: a constant, not state
    if _SRGB_PROFILE is None:
        _SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return _SRGB_PROFILE


class SrgbConverter:
    """Applies one file's embedded ICC profile: pixels in that profile's space -> sRGB.

    The models were trained on sRGB pictures, and untagged outputs are shown as sRGB everywhere,
    so converting on read gives the model the colours it expects and the viewer the colours the
    author meant. A profile equivalent to sRGB (within one 8-bit level) changes nothing. The first
    conversion logs one warning for the file. 8-bit pixels go through LittleCMS (any profile);
    16-bit ones through the profile's matrix and tone curves in float (LittleCMS in Pillow is
    8-bit only), which is what LittleCMS does for such profiles; a 16-bit image with a table-based
    profile is left as it is, with a warning.
    """

    def __init__(self, path: Path, icc: bytes | None) -> None:
        self.path = path
        self.icc = icc if isinstance(icc, bytes) and icc else None
        self.profile: ImageCms.ImageCmsProfile | None = None
        self.space = ""
        self._equivalent: bool | None = None
        self._transforms: dict = {}
        self._said: set = set()
        if self.icc is None:
            return
        try:
            self.profile = ImageCms.ImageCmsProfile(io.BytesIO(self.icc))
            self.space = (self.profile.profile.xcolor_space or "").strip().upper()
        except Exception as exc:  # noqa: BLE001 - a broken profile must not make the picture unreadable
            self.profile = None
            self._say("broken", "embedded ICC profile is unreadable (%s); ignored, the pixels are taken as sRGB",
                      " ".join(str(exc).split())[:100] or type(exc).__name__)

    def takes(self, space: str) -> bool:
        return self.profile is not None and self.space == space

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) RGB or (H, W, 1) gray, uint8/uint16, in the profile's space -> same in sRGB."""
        if self.profile is None:
            return image
        space = "RGB" if image.shape[2] == 3 else "GRAY"
        if space != self.space:
            self._say("mismatch", "embedded ICC profile is for %s but the image is %s; profile ignored",
                      self.space or "?", space)
            return image
        if self._srgb_equivalent():
            return image
        if image.dtype == np.uint16:
            curves = _matrix_trc(self.icc)
            if curves is None:
                self._say("deep", "embedded ICC profile '%s' is table-based and cannot be applied to 16-bit "
                          "pixels; colours are taken as sRGB (convert the file to sRGB first)", self._name())
                return image
            self._announce()
            return _apply_matrix_trc(image, *curves)
        self._announce()
        if space == "RGB":
            out = ImageCms.applyTransform(Image.fromarray(image, "RGB"), self._transform("RGB"))
            return np.asarray(out)
        out = np.asarray(ImageCms.applyTransform(Image.fromarray(image[:, :, 0], "L"), self._transform("L")))
        return np.round(out.mean(axis=2, keepdims=True)).astype(np.uint8)  # neutral: channels equal ±1

    def cmyk_to_srgb(self, im: Image.Image) -> Image.Image:
        try:
            out = ImageCms.applyTransform(im, self._transform("CMYK"))
        except Exception as exc:  # noqa: BLE001 - a profile LittleCMS refuses: the plain formula
            self._say("broken", "embedded CMYK profile cannot be used (%s); converted without it",
                      " ".join(str(exc).split())[:100] or type(exc).__name__)
            return im.convert("RGB")
        self._announce()
        return out

    def _transform(self, mode: str):
        if mode not in self._transforms:
            # press profiles have perceptual tables; for RGB and gray the colorimetric conversion is
            # the exact matrix/curve arithmetic (the same the 16-bit path does)
            intent = ImageCms.Intent.PERCEPTUAL if mode == "CMYK" else ImageCms.Intent.RELATIVE_COLORIMETRIC
            self._transforms[mode] = ImageCms.buildTransform(self.profile, _srgb_profile(), mode, "RGB",
                                                             renderingIntent=intent)
        return self._transforms[mode]

    def _srgb_equivalent(self) -> bool:
        if self._equivalent is None:
            verdict = _profile_is_srgb(self.icc, self.space)
            if isinstance(verdict, str):  # LittleCMS refuses some hostile profiles only here
                self._say("broken", "embedded ICC profile cannot be used (%s); ignored, the pixels are taken "
                          "as sRGB", verdict)
                self.profile, verdict = None, True
            self._equivalent = verdict
        return self._equivalent

    def _name(self) -> str:
        try:
            name = ImageCms.getProfileDescription(self.profile)
        except Exception:  # noqa: BLE001
            name = ""
        return " ".join(str(name).split())[:60] or "unnamed"

    def _announce(self) -> None:
        self._say("converted", "embedded ICC profile '%s' is not sRGB: the pixels were converted to sRGB for the "
                  "model; the output is sRGB (no profile)", self._name())

    def _say(self, key: str, fmt: str, *args: object) -> None:
        if key not in self._said:  # one line per file and kind of news
            self._said.add(key)
            log.warning("%s: " + fmt, self.path, *args)


@functools.lru_cache(maxsize=16)
def _profile_is_srgb(icc: bytes, space: str) -> bool | str:
    """True when converting with ``icc`` moves no 8-bit ramp (red, green, blue, gray) by more than
    one level: most camera JPEGs embed an sRGB profile, which must change nothing. Memoised (a pure
    function of the bytes): a folder of such photos builds the test transform once. A reason
    (str) when LittleCMS cannot use the profile."""
    ramp = np.arange(256, dtype=np.uint8)
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        intent = ImageCms.Intent.RELATIVE_COLORIMETRIC
        if space == "RGB":
            zero = np.zeros(256, np.uint8)
            test = np.stack([np.stack(c, axis=1) for c in ((ramp, zero, zero), (zero, ramp, zero),
                                                           (zero, zero, ramp), (ramp, ramp, ramp))])
            out = ImageCms.profileToProfile(Image.fromarray(test, "RGB"), profile, _srgb_profile(), intent, "RGB")
            return bool(np.abs(np.asarray(out).astype(int) - test).max() <= 1)
        out = ImageCms.profileToProfile(Image.fromarray(ramp[None], "L"), profile, _srgb_profile(), intent, "RGB")
        return bool(np.abs(np.asarray(out).astype(int) - ramp[None, :, None]).max() <= 1)
    except Exception as exc:  # noqa: BLE001
        return " ".join(str(exc).split())[:100] or type(exc).__name__


def _matrix_trc(icc: bytes | None):
    """(3x3 matrix to linear sRGB or None for gray, [tone curves]) of a matrix/TRC (or gray TRC)
    ICC profile, or None when the profile uses tables (A2B) or cannot be parsed."""
    if not icc:
        return None
    try:
        count = struct.unpack_from(">I", icc, 128)[0]
        if count > 200:
            return None
        tags = {}
        for i in range(count):
            sig, off, size = struct.unpack_from(">4sII", icc, 132 + 12 * i)
            tags[sig] = off
        if b"A2B0" in tags or b"A2B1" in tags:
            return None  # LittleCMS would use the tables; so must we (8-bit path only)
        if icc[16:20] == b"GRAY":
            return None, [_icc_curve(icc, tags[b"kTRC"])]
        cols = [np.array(struct.unpack_from(">3i", icc, tags[t] + 8), float) / 65536
                for t in (b"rXYZ", b"gXYZ", b"bXYZ")]
        curves = [_icc_curve(icc, tags[t]) for t in (b"rTRC", b"gTRC", b"bTRC")]
    except (struct.error, KeyError, ValueError):
        return None
    srgb = _srgb_profile().profile
    to_xyz = np.stack(cols, axis=1)
    srgb_xyz = np.stack([np.array(c[0], float) for c in (srgb.red_colorant, srgb.green_colorant,
                                                          srgb.blue_colorant)], axis=1)
    return np.linalg.solve(srgb_xyz, to_xyz), curves


def _icc_curve(icc: bytes, off: int):
    kind = icc[off:off + 4]
    if kind == b"curv":
        n = struct.unpack_from(">I", icc, off + 8)[0]
        if n == 0:
            return lambda x: x
        if n == 1:
            gamma = struct.unpack_from(">H", icc, off + 12)[0] / 256
            return lambda x: np.power(x, gamma)
        if n > 65536:
            raise ValueError("curve too long")
        table = np.array(struct.unpack_from(f">{n}H", icc, off + 12), np.float64) / 65535
        grid = np.linspace(0, 1, n)
        return lambda x: np.interp(x, grid, table)
    if kind == b"para":
        ftype = struct.unpack_from(">H", icc, off + 8)[0]
        nparams = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}[ftype]
        g, a, b, c, d, e, f = (list(np.array(struct.unpack_from(f">{nparams}i", icc, off + 12)) / 65536)
                               + [0.0] * 7)[:7]
        if ftype == 0:
            return lambda x: np.power(x, g)
        if ftype in (1, 2):
            add = c if ftype == 2 else 0.0
            return lambda x: np.where(x >= -b / a, np.power(np.maximum(a * x + b, 0), g) + add, add)
        return lambda x: np.where(x >= d, np.power(np.maximum(a * x + b, 0), g) + e, c * x + f)
    raise ValueError(f"unknown curve type {kind!r}")


def _apply_matrix_trc(image: np.ndarray, matrix: np.ndarray | None, curves: list) -> np.ndarray:
    """uint16 (H, W, C) through the tone curves and matrix to linear sRGB, clipped, sRGB-encoded."""
    out = np.empty_like(image)
    rows = max(1, 1_000_000 // max(1, image.shape[1]))
    for y in range(0, image.shape[0], rows):
        x = image[y:y + rows].astype(np.float64) / 65535
        lin = np.stack([curves[min(i, len(curves) - 1)](x[..., i]) for i in range(x.shape[2])], axis=-1)
        if matrix is not None:
            lin = lin @ matrix.T
        lin = np.clip(lin, 0.0, 1.0)
        enc = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * np.power(lin, 1 / 2.4) - 0.055)
        out[y:y + rows] = np.round(enc * 65535).astype(np.uint16)
    return out


# --------------------------------------------------------------------------------------- writing


