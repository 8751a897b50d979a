"""Images that used to lose something silently (issue 20, items 2-4): embedded ICC profiles,
animation timing and loop count, multi-page TIFFs. Inputs are generated here, into tmp_path."""

from __future__ import annotations

import io
import logging
import struct
import zlib

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageCms

from support import tiny_resnet_file
from frametrans.cli.main import cli
from frametrans.io.errors import InputError
from frametrans.io.images import (
    animation_info,
    is_animated_image,
    iter_image_frames,
    read_image,
    write_animation,
)


# ------------------------------------------------------------------------------------ helpers


def _s15(v: float) -> bytes:
    return struct.pack(">i", int(round(v * 65536)))


ADOBE_RGB_D50 = ((0.60974, 0.31111, 0.01947), (0.20528, 0.62567, 0.06087), (0.14919, 0.06322, 0.74457))


def icc_profile(gamma: float = 563 / 256, gray: bool = False) -> bytes:
    """A minimal ICC v2 display profile (~470 bytes): Adobe RGB (1998) matrix and tone curve, or a
    gray gamma profile."""
    def xyz(x, y, z):
        return b"XYZ " + bytes(4) + _s15(x) + _s15(y) + _s15(z)

    curv = b"curv" + bytes(4) + struct.pack(">IH", 1, int(round(gamma * 256))) + bytes(2)
    name = b"Gray gamma test" if gray else b"Adobe RGB-like test"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(name) + 1) + name + b"\0" + bytes(4 + 4 + 2 + 1 + 67)
    tags = [(b"desc", desc), (b"wtpt", xyz(0.9642, 1.0, 0.8249))]
    if gray:
        tags.append((b"kTRC", curv))
    else:
        r, g, b = ADOBE_RGB_D50
        tags += [(b"rXYZ", xyz(*r)), (b"gXYZ", xyz(*g)), (b"bXYZ", xyz(*b)),
                 (b"rTRC", curv), (b"gTRC", curv), (b"bTRC", curv)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        data += bytes(-len(data) % 4)
        table += struct.pack(">4sII", sig, offset + len(body), len(data))
        body += data
    header = struct.pack(">I4sI4s4s4s", offset + len(body), b"none", 0x02100000, b"mntr",
                         b"GRAY" if gray else b"RGB ", b"XYZ ")
    header += bytes(12) + b"acsp" + bytes(4 + 4 + 4 + 4 + 8 + 4) + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    header += bytes(128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + body


def with_iccp(png: bytes, icc: bytes) -> bytes:
    """Insert an iCCP chunk after IHDR (OpenCV writes 16-bit PNGs without one)."""
    data = b"test\0\0" + zlib.compress(icc)
    chunk = struct.pack(">I", len(data)) + b"iCCP" + data + struct.pack(">I", zlib.crc32(b"iCCP" + data))
    end = 8 + 8 + 13 + 4
    return png[:end] + chunk + png[end:]


def lcms_to_srgb(rgb: np.ndarray, icc: bytes) -> np.ndarray:
    """What LittleCMS makes of 8-bit pixels in the profile ``icc``: the reference."""
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    out = ImageCms.profileToProfile(Image.fromarray(rgb), profile, ImageCms.createProfile("sRGB"),
                                    renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    return np.asarray(out)


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    rng = np.random.default_rng(0)
    smooth = cv2.resize(rng.integers(0, 256, (6, 8, 3), np.uint8), (48, 36), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(smooth)


def warnings_about(caplog, path) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and str(path) in r.getMessage()]


# ---------------------------------------------------------------------------- 2. ICC profiles


def test_adobe_rgb_jpeg_is_converted_to_srgb_with_one_warning(tmp_path, picture, caplog):
    icc = icc_profile()
    path = tmp_path / "adobe.jpg"
    Image.fromarray(picture).save(path, quality=95, icc_profile=icc)
    stored = np.asarray(Image.open(path).convert("RGB"))  # the numbers in the file, in Adobe RGB
    with caplog.at_level(logging.WARNING):
        frame = read_image(path)
    expected = lcms_to_srgb(stored, icc)
    np.testing.assert_array_equal(frame.image, expected)
    assert np.abs(frame.image.astype(int) - stored).mean() > 3  # the conversion is not a no-op here
    said = warnings_about(caplog, path)
    assert len(said) == 1 and "sRGB" in said[0] and "Adobe RGB-like test" in said[0] and "\n" not in said[0]


def test_16bit_rgba_png_with_profile_keeps_depth_and_alpha(tmp_path, picture, caplog):
    icc = icc_profile()
    rng = np.random.default_rng(1)
    deep = picture.astype(np.uint16) * 257 + rng.integers(0, 257, picture.shape).astype(np.uint16)
    alpha = rng.integers(0, 65536, picture.shape[:2]).astype(np.uint16)
    ok, encoded = cv2.imencode(".png", np.dstack([deep[:, :, ::-1], alpha]))
    path = tmp_path / "deep.png"
    path.write_bytes(with_iccp(encoded.tobytes(), icc))
    with caplog.at_level(logging.WARNING):
        frame = read_image(path)
    assert frame.image.dtype == np.uint16 and frame.alpha.dtype == np.uint16
    np.testing.assert_array_equal(frame.alpha, alpha)  # alpha is not colour: untouched
    # exact arithmetic: Adobe tone curve, Adobe -> sRGB matrix (both D50), sRGB encoding
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).profile
    to_srgb = np.linalg.solve(np.array([c[0] for c in (srgb.red_colorant, srgb.green_colorant, srgb.blue_colorant)]).T,
                              np.round(np.array(ADOBE_RGB_D50) * 65536).T / 65536)  # as stored: s15Fixed16
    linear = np.clip((deep / 65535.0) ** (563 / 256) @ to_srgb.T, 0, 1)
    expected = srgb_encode(linear) * 65535
    assert np.abs(frame.image - expected).max() <= 1.0  # 16-bit precision kept
    assert len(warnings_about(caplog, path)) == 1
    # and agrees with LittleCMS (8-bit) on 8-bit values stored in 16 bits
    ok, encoded = cv2.imencode(".png", picture[:, :, ::-1].astype(np.uint16) * 257)
    (tmp_path / "deep8.png").write_bytes(with_iccp(encoded.tobytes(), icc))
    assert np.abs(read_image(tmp_path / "deep8.png").image / 257 - lcms_to_srgb(picture, icc)).max() <= 1.0


def test_gray_profile_stays_gray_and_is_converted(tmp_path, caplog):
    ramp = np.tile(np.arange(256, dtype=np.uint8), (3, 1))
    icc = icc_profile(gamma=1.8, gray=True)
    truth = srgb_encode((np.arange(256) / 255) ** 1.8) * 255
    Image.fromarray(ramp).save(tmp_path / "g.png", icc_profile=icc)
    ok, encoded = cv2.imencode(".png", ramp.astype(np.uint16) * 257)
    (tmp_path / "g16.png").write_bytes(with_iccp(encoded.tobytes(), icc))
    with caplog.at_level(logging.WARNING):
        g8, g16 = read_image(tmp_path / "g.png"), read_image(tmp_path / "g16.png")
    assert g8.image.shape == (3, 256, 1) and g16.image.shape == (3, 256, 1) and g16.image.dtype == np.uint16
    assert np.abs(g8.image[0, :, 0] - truth).max() <= 2  # LittleCMS's 8-bit path is a bit off near black
    assert np.abs(g16.image[0, :, 0] / 257 - truth).max() <= 0.1
    assert len(warnings_about(caplog, tmp_path / "g.png")) == 1


def test_srgb_profile_changes_nothing_and_says_nothing(tmp_path, picture, caplog):
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(picture).save(tmp_path / "s.png", icc_profile=srgb)
    with caplog.at_level(logging.WARNING):
        frame = read_image(tmp_path / "s.png")
    np.testing.assert_array_equal(frame.image, picture)
    assert not warnings_about(caplog, tmp_path / "s.png")


def test_broken_profile_is_ignored_with_a_warning(tmp_path, picture, caplog):
    path = tmp_path / "broken.png"
    Image.fromarray(picture).save(path, icc_profile=b"not a profile at all" * 4)
    with caplog.at_level(logging.WARNING):
        frame = read_image(path)
    np.testing.assert_array_equal(frame.image, picture)
    said = warnings_about(caplog, path)
    assert len(said) == 1 and "ICC" in said[0] and "\n" not in said[0]


def test_animated_frames_with_profile_warn_once(tmp_path, picture, caplog):
    icc = icc_profile()
    frames = [Image.fromarray(np.roll(picture, 7 * i, axis=1)) for i in range(3)]
    path = tmp_path / "anim.png"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, icc_profile=icc)
    with caplog.at_level(logging.WARNING):
        got = list(iter_image_frames(path))
    for i, frame in enumerate(got):
        np.testing.assert_array_equal(frame.image, lcms_to_srgb(np.asarray(frames[i]), icc))
    assert len(warnings_about(caplog, path)) == 1


# ----------------------------------------------------------------------- 3. animation timing


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_resnet_file(tmp_path_factory.mktemp("m"))


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def timing(path) -> tuple[list, object, int]:
    with Image.open(path) as im:
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            im.load()
            durations.append(int(round(im.info["duration"])))
        return durations, im.info.get("loop"), im.n_frames


def make_animation(path, picture, durations=(100, 250, 700), loop=2):
    frames = [Image.fromarray(np.roll(picture, 9 * i, axis=0)) for i in range(len(durations))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=list(durations), loop=loop)
    return path


@pytest.mark.parametrize("ext", [".png", ".webp"])
def test_reader_and_writer_keep_every_duration_and_the_loop_count(tmp_path, picture, ext):
    src = make_animation(tmp_path / f"in{ext}", picture)
    durations: list = []
    frames = list(iter_image_frames(src, durations=durations))
    assert durations == [100, 250, 700] and [f.pts for f in frames] == [0, 100, 350]
    assert animation_info(src).loop == 2 and animation_info(src).frames == 3
    out = write_animation(tmp_path / f"out{ext}", frames, durations, loop=2)
    assert timing(out) == ([100, 250, 700], 2, 3)


@pytest.mark.parametrize("src_ext, out_ext", [(".png", ".png"), (".webp", ".webp"), (".png", ".webp")])
def test_apply_keeps_last_frame_duration_and_loop_count(tmp_path, picture, model_path, src_ext, out_ext):
    src = make_animation(tmp_path / f"anim{src_ext}", picture)
    out = tmp_path / f"out{out_ext}"
    res = run("apply", src, "-o", out, "-m", model_path, "--quiet")
    assert res.exit_code == 0, res.output
    assert timing(out) == ([100, 250, 700], 2, 3)


def test_apply_animation_forever_stays_forever(tmp_path, picture, model_path):
    src = make_animation(tmp_path / "anim.png", picture, durations=(40, 0, 90, 10), loop=0)
    res = run("apply", src, "-o", tmp_path / "out.png", "-m", model_path, "--quiet")
    assert res.exit_code == 0, res.output
    assert timing(tmp_path / "out.png") == ([40, 0, 90, 10], 0, 4)  # 0 ms (as fast as possible) too


# ------------------------------------------------------------------------- 4. multi-page TIFF


def make_pages(path, picture):
    """Three pages of different sizes and kinds: RGB, gray, RGBA."""
    pages = [Image.fromarray(picture),
             Image.fromarray(picture[:20, :30, 1]),
             Image.fromarray(np.dstack([picture[:24], np.full(picture.shape[:2], 99, np.uint8)[:24]]), "RGBA")]
    pages[0].save(path, save_all=True, append_images=pages[1:], compression="tiff_deflate")
    return path


def test_multipage_tiff_is_read_page_by_page(tmp_path, picture):
    src = make_pages(tmp_path / "doc.tif", picture)
    assert is_animated_image(src) and animation_info(src).frames == 3 and animation_info(src).is_multipage
    pages = list(iter_image_frames(src))
    assert [p.image.shape for p in pages] == [(36, 48, 3), (20, 30, 1), (24, 48, 3)]
    assert pages[0].alpha is None and pages[1].alpha is None and (pages[2].alpha == 99).all()
    np.testing.assert_array_equal(pages[1].image[:, :, 0], picture[:20, :30, 1])
    out = write_animation(tmp_path / "copy.tif", pages)
    again = list(iter_image_frames(out))
    for a, b in zip(pages, again):
        np.testing.assert_array_equal(a.image, b.image)
    assert again[2].alpha is not None and (again[2].alpha == 99).all()


def test_apply_writes_every_page_of_a_multipage_tiff(tmp_path, picture, model_path):
    src = make_pages(tmp_path / "doc.tif", picture)
    out = tmp_path / "out.tif"
    res = run("apply", src, "-o", out, "-m", model_path, "--quiet")
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        assert im.n_frames == 3
        kinds = []
        for i in range(3):
            im.seek(i)
            kinds.append((im.size, im.mode))
    # each page keeps its size and alpha (a gray page comes back as the model's colour output,
    # as a gray still image does)
    assert [k[0] for k in kinds] == [(48, 36), (30, 20), (48, 24)]
    assert kinds[0][1] == "RGB" and kinds[1][1] in ("L", "RGB") and kinds[2][1] == "RGBA"
    assert (list(iter_image_frames(out))[2].alpha == 99).all()


def test_apply_keeps_16bit_pages_16bit(tmp_path, picture, model_path):
    deep = [picture.astype(np.uint16) * 257, (picture[:, :, ::-1].astype(np.uint16) * 257 + 3)]
    ok, encoded = cv2.imencodemulti(".tiff", [d[:, :, ::-1] for d in deep])
    src = tmp_path / "deep.tif"
    src.write_bytes(encoded.tobytes())
    assert [p.image.dtype for p in iter_image_frames(src)] == [np.uint16, np.uint16]
    np.testing.assert_array_equal(list(iter_image_frames(src))[1].image, deep[1])
    res = run("apply", src, "-o", tmp_path / "out.tif", "-m", model_path, "--quiet", "--precision", "fp32")
    assert res.exit_code == 0, res.output
    pages = list(iter_image_frames(tmp_path / "out.tif"))
    assert len(pages) == 2 and all(p.image.dtype == np.uint16 and p.image.shape == (36, 48, 3) for p in pages)


def test_multipage_tiff_to_another_format_is_refused_naming_the_pages(tmp_path, picture, model_path):
    src = make_pages(tmp_path / "doc.tif", picture)
    res = run("apply", src, "-o", tmp_path / "out.png", "-m", model_path, "--quiet")
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if "3-page TIFF" in line]
    assert lines and str(src) in lines[0] and ".tif" in lines[0]
    assert not (tmp_path / "out.png").exists()


def test_animation_to_tiff_is_refused(tmp_path, picture, model_path):
    src = make_animation(tmp_path / "anim.png", picture)
    res = run("apply", src, "-o", tmp_path / "out.tif", "-m", model_path, "--quiet")
    assert res.exit_code == 1
    assert any("timing" in line and str(src) in line for line in res.output.splitlines())
    assert not (tmp_path / "out.tif").exists()


def test_oversized_later_page_is_refused_before_decoding(tmp_path, monkeypatch):
    from frametrans.io.images import PIXEL_LIMIT_ENV

    small, big = Image.new("RGB", (10, 10)), Image.new("L", (1000, 1000))
    small.save(tmp_path / "doc.tif", save_all=True, append_images=[big], compression="tiff_deflate")
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "5e5")  # the first page passes Pillow's check at open
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # the read sets it: restore
    with pytest.raises(InputError, match=r"page 2 of 2 is 1000x1000") as info:
        list(iter_image_frames(tmp_path / "doc.tif"))
    assert str(tmp_path / "doc.tif") in str(info.value) and "\n" not in str(info.value)
