"""Single images and folders: frametrans.io.images, frametrans.io.folders, frametrans.io.frame."""

from __future__ import annotations

import io
import logging
import os
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

skdata = pytest.importorskip("skimage.data")

from frametrans.io.errors import InputError  # noqa: E402
from frametrans.io.folders import list_images, natural_sort_key, output_path_for  # noqa: E402
from frametrans.io.frame import Frame  # noqa: E402
from frametrans.io.images import (  # noqa: E402
    IMAGE_EXTENSIONS,
    iter_image_frames,
    read_image,
    write_image,
)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()[::4, ::4].copy()  # 128x128 RGB, keeps the tests fast


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    return skdata.chelsea()[::2, ::2].copy()  # 150x226, not square: catches transposes


def only_files(folder) -> list[str]:
    return sorted(os.listdir(folder))


# ------------------------------------------------------------------------------------- Frame


def test_frame_time_and_describe():
    frame = Frame(np.zeros((4, 5, 3), np.uint8), index=1832, source="clip.mp4", pts=76_300, time_base=Fraction(1, 1000))
    assert frame.time == pytest.approx(76.3)
    assert frame.describe() == "frame 1832 of clip.mp4 (00:01:16.3)"
    assert Frame(np.zeros((4, 5)), index=3, source="a.png").describe() == "frame 3 of a.png"
    assert Frame(np.zeros((4, 5), np.uint8)).image.shape == (4, 5, 1)  # gray (H, W) -> (H, W, 1)
    with pytest.raises(ValueError):
        Frame(np.zeros((4, 5, 3), np.uint8), alpha=np.zeros((5, 4), np.uint8))


# -------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp"])
def test_lossless_round_trip(tmp_path, chelsea, ext):
    path = write_image(tmp_path / f"cat{ext}", chelsea)
    frame = read_image(path)
    assert frame.image.dtype == np.uint8
    np.testing.assert_array_equal(frame.image, chelsea)
    assert frame.alpha is None and frame.index == 0 and frame.source == str(path)


def test_bmp_says_it_drops_transparency(tmp_path, chelsea, caplog):
    """Pillow writes RGBA as a 32-bit BMP without an alpha mask, which every reader takes for RGB:
    a BMP output drops the alpha with the warning JPEG gives, instead of silently."""
    alpha = np.full(chelsea.shape[:2], 128, np.uint8)
    with caplog.at_level(logging.WARNING, logger="frametrans"):
        frame = read_image(write_image(tmp_path / "cat.bmp", chelsea, alpha=alpha))
    assert "BMP has no alpha channel; transparency dropped" in caplog.text
    np.testing.assert_array_equal(frame.image, chelsea)
    assert frame.alpha is None


@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".webp"])
def test_lossy_round_trip(tmp_path, chelsea, ext):
    frame = read_image(write_image(tmp_path / f"cat{ext}", chelsea, quality=95))
    assert frame.image.shape == chelsea.shape
    assert np.abs(frame.image.astype(int) - chelsea).mean() < 3


def test_gray_stays_gray(tmp_path):
    camera = skdata.camera()[::4, ::4].copy()
    for ext in (".png", ".jpg", ".tif"):
        frame = read_image(write_image(tmp_path / f"camera{ext}", camera))
        assert frame.image.shape == camera.shape + (1,)
        assert np.abs(frame.image[:, :, 0].astype(int) - camera).mean() < 2


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, chelsea, orientation):
    im = Image.fromarray(chelsea)
    exif = im.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.jpg"
    im.save(path, exif=exif, quality=95)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    frame = read_image(path)
    np.testing.assert_array_equal(frame.image, expected)
    if orientation >= 5:
        assert frame.image.shape[:2] == chelsea.shape[1::-1]


def test_exif_rotation_of_known_pixel(tmp_path):
    img = np.zeros((20, 30, 3), np.uint8)
    img[0, 0] = 255  # white top-left corner in the stored picture
    im = Image.fromarray(img)
    exif = im.getexif()
    exif[0x0112] = 6  # stored rotated 90° counter-clockwise: display turns it clockwise
    im.save(tmp_path / "r.png", exif=exif)
    frame = read_image(tmp_path / "r.png")
    assert frame.image.shape == (30, 20, 3)
    assert frame.image[0, -1].min() == 255  # the corner is now top-right


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_round_trip(tmp_path, astronaut, ext, channels):
    rng = np.random.default_rng(0)
    img = (astronaut.astype(np.uint16) * 257 + rng.integers(0, 257, astronaut.shape)).astype(np.uint16)
    img = img[:, :, :channels]
    frame = read_image(write_image(tmp_path / f"deep{ext}", img))
    assert frame.image.dtype == np.uint16
    np.testing.assert_array_equal(frame.image, img)


def test_16bit_png_from_opencv_keeps_all_bits(tmp_path, chelsea):
    """Pillow alone would cut 16-bit RGB to 8 bits; read_image must not."""
    img = chelsea.astype(np.uint16) * 256 + 17
    cv2.imwrite(str(tmp_path / "cv.png"), img[:, :, ::-1])
    frame = read_image(tmp_path / "cv.png")
    np.testing.assert_array_equal(frame.image, img)


@pytest.mark.parametrize("ext", [".png", ".tif", ".webp"])
def test_alpha_round_trip(tmp_path, astronaut, ext):
    h, w = astronaut.shape[:2]
    alpha = np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))
    path = write_image(tmp_path / f"a{ext}", Frame(astronaut, alpha=alpha))
    frame = read_image(path)
    assert frame.image.shape == astronaut.shape
    assert frame.alpha is not None and frame.alpha.shape == (h, w)
    np.testing.assert_array_equal(frame.alpha, alpha)  # WebP too: lossy colour, lossless alpha
    if ext != ".webp":
        np.testing.assert_array_equal(frame.image, astronaut)


def test_alpha_16bit_round_trip(tmp_path, astronaut):
    img = astronaut.astype(np.uint16) * 257
    alpha = (np.arange(img.shape[1], dtype=np.uint16) * 500)[None, :].repeat(img.shape[0], 0)
    frame = read_image(write_image(tmp_path / "a16.png", img, alpha=alpha))
    np.testing.assert_array_equal(frame.image, img)
    np.testing.assert_array_equal(frame.alpha, alpha)


def test_rgba_pillow_file_splits_alpha(tmp_path, astronaut):
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 77, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "x.png")
    frame = read_image(tmp_path / "x.png")
    np.testing.assert_array_equal(frame.image, astronaut)
    assert (frame.alpha == 77).all()


def test_palette_with_transparency(tmp_path, chelsea):
    im = Image.fromarray(chelsea).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    im.info["transparency"] = 0
    im.save(tmp_path / "p.png", transparency=0)
    frame = read_image(tmp_path / "p.png")
    assert frame.image.shape == chelsea.shape and frame.image.dtype == np.uint8
    assert frame.alpha is not None
    index = np.asarray(Image.open(tmp_path / "p.png"))
    np.testing.assert_array_equal(frame.alpha == 0, index == 0)
    # without transparency: plain RGB
    Image.fromarray(chelsea).convert("P").save(tmp_path / "q.png")
    assert read_image(tmp_path / "q.png").alpha is None


def test_cmyk_jpeg_becomes_rgb(tmp_path, chelsea):
    Image.fromarray(chelsea).convert("CMYK").save(tmp_path / "print.jpg", quality=95)
    frame = read_image(tmp_path / "print.jpg")
    assert frame.image.shape == chelsea.shape
    assert np.abs(frame.image.astype(int) - chelsea).mean() < 4


def test_float_tiff_is_refused(tmp_path):
    Image.fromarray(np.random.rand(8, 9).astype(np.float32), "F").save(tmp_path / "f.tif")
    with pytest.raises(InputError, match="float"):
        read_image(tmp_path / "f.tif")
    cv2.imwrite(str(tmp_path / "f3.tif"), np.random.rand(8, 9, 3).astype(np.float32))
    with pytest.raises(InputError, match="float"):
        read_image(tmp_path / "f3.tif")


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty"), (b"this is not an image", "not an image"), (None, "no such file")],
)
def test_bad_files_one_line_error(tmp_path, content, reason):
    path = tmp_path / "bad image.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=reason) as info:
        read_image(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_file(tmp_path, chelsea, ext):
    data = (write_image(tmp_path / f"full{ext}", chelsea)).read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        read_image(cut)
    assert str(cut) in str(info.value)


def test_animated_gif(tmp_path):
    frames = [Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)) for i in range(5)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=[100, 200, 100, 50, 100], loop=0)
    got = list(iter_image_frames(tmp_path / "a.gif"))
    assert [f.index for f in got] == [0, 1, 2, 3, 4]
    assert [f.pts for f in got] == [0, 100, 300, 400, 450]
    assert got[3].time == pytest.approx(0.4)
    assert [int(f.image.mean()) for f in got] == [0, 40, 80, 120, 160]
    assert read_image(tmp_path / "a.gif").image.shape == (20, 30, 3)
    still = list(iter_image_frames(write_image(tmp_path / "s.png", np.asarray(frames[0]))))
    assert len(still) == 1 and still[0].pts is None


def _png_chunks(data: bytes) -> list:
    """A PNG's chunks, each as its whole bytes (length, type, data, CRC), after the signature."""
    import struct

    pos, out = 8, []
    while pos < len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        out.append(data[pos:pos + 12 + n])
        pos += 12 + n
    return out


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _after_pixels(png: bytes, *extra: bytes) -> bytes:
    """``png`` with ``extra`` chunks moved or put right after its last IDAT chunk."""
    chunks = [c for c in _png_chunks(png) if c not in extra]
    last = max(i for i, c in enumerate(chunks) if c[4:8] == b"IDAT")
    return png[:8] + b"".join(chunks[:last + 1]) + b"".join(extra) + b"".join(chunks[last + 1:])


def _pillow_png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def test_png_decoded_by_opencv_gives_pillows_pixels(tmp_path, chelsea, monkeypatch, capfd):
    """Plain 8-bit RGB, RGBA and gray PNGs are decoded by OpenCV (one call without the GIL); the
    pixels, alpha and EXIF orientation are Pillow's. PNGs it does not take (a transparency key,
    EXIF or text after the pixels, XMP, an ICC profile, APNG, truncated, 16-bit) still read as
    before, through Pillow."""
    from PIL import ImageCms, PngImagePlugin

    import frametrans.io.images as images_module

    rgb = Image.fromarray(chelsea[:61, :83])
    rgba = Image.fromarray(np.dstack([chelsea[:61, :83], chelsea[:61, :83, 1]]))
    exif = Image.Exif()
    exif[0x0112] = 6
    plain = {"rgb.png": _pillow_png(rgb), "rgba.png": _pillow_png(rgba), "gray.png": _pillow_png(rgb.convert("L")),
             "rgb9.png": _pillow_png(rgb, compress_level=9), "exif_early.png": _pillow_png(rgb, exif=exif.tobytes())}
    early = _pillow_png(rgb, exif=exif.tobytes())
    xmp = PngImagePlugin.PngInfo()
    xmp.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/'
                 '1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
                 'tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[64:68] = (9).to_bytes(4, "big")  # a rendering intent libpng warns about on stderr; Pillow does not
    by_pillow = {"exif_late.png": _after_pixels(early, *[c for c in _png_chunks(early) if c[4:8] == b"eXIf"]),
                 "text_late.png": _after_pixels(_pillow_png(rgb), _png_chunk(b"tEXt", b"Comment\x00hi")),
                 "trns.png": _pillow_png(rgb, transparency=(0, 0, 0)),
                 "xmp.png": _pillow_png(rgb, pnginfo=xmp), "icc.png": _pillow_png(rgb, icc_profile=bytes(icc)),
                 "apng.png": _pillow_png(rgb, save_all=True, append_images=[rgb.transpose(Image.FLIP_LEFT_RIGHT)]),
                 "no_iend.png": _pillow_png(rgb)[:-12], "trailing.png": _pillow_png(rgb) + b"junk",
                 "rgb16.png": cv2.imencode(".png", chelsea[:61, :83, ::-1].astype(np.uint16) * 257)[1].tobytes()}
    for name, data in {**plain, **by_pillow}.items():
        (tmp_path / name).write_bytes(data)
    monkeypatch.setattr(images_module, "_decode_png_opencv", lambda *a: None)  # the reference: Pillow's
    references = {name: read_image(tmp_path / name) for name in {**plain, **by_pillow}}
    monkeypatch.undo()

    def pillow_refused(*args):
        raise AssertionError("decoded by Pillow")

    monkeypatch.setattr(images_module, "_decode_pillow", pillow_refused)
    for name in plain:
        got, ref = read_image(tmp_path / name), references[name]
        np.testing.assert_array_equal(got.image, ref.image)
        assert (got.alpha is None) == (ref.alpha is None)
        if ref.alpha is not None:
            np.testing.assert_array_equal(got.alpha, ref.alpha)
    assert read_image(tmp_path / "exif_early.png").image.shape[:2] == (83, 61)  # turned upright
    monkeypatch.undo()
    for name in by_pillow:
        np.testing.assert_array_equal(read_image(tmp_path / name).image, references[name].image)
        with Image.open(tmp_path / name) as im:
            assert images_module._decode_png_opencv(im, tmp_path / name, None) is None, name
    assert read_image(tmp_path / "exif_late.png").image.shape[:2] == (83, 61)
    assert read_image(tmp_path / "xmp.png").image.shape[:2] == (83, 61)  # XMP's orientation: Pillow's
    capfd.readouterr()
    for name in [*plain, "icc.png"]:  # files that decode well print nothing (libpng would, for icc.png)
        read_image(tmp_path / name)
    assert capfd.readouterr().err == ""
    assert read_image(tmp_path / "rgb16.png").image.dtype == np.uint16


# -------------------------------------------------------------------------------------- writing


def test_write_is_atomic_and_overwrites(tmp_path, chelsea):
    target = tmp_path / "sub" / "out.png"
    write_image(target, chelsea)
    write_image(target, chelsea[::-1])  # overwrite in place
    assert only_files(tmp_path / "sub") == ["out.png"]
    np.testing.assert_array_equal(read_image(target).image, chelsea[::-1])


def _pillow_jpeg(image: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    return buffer.getvalue()


def _both_libjpeg_turbo() -> bool:
    """Pillow and OpenCV both built on libjpeg-turbo (the pinned wheels are): then their JPEGs
    for the same settings are the same bytes; with another libjpeg only the pixels are promised."""
    from PIL import features

    return bool(features.check_feature("libjpeg_turbo")) and "libjpeg-turbo" in cv2.getBuildInformation()


@pytest.mark.parametrize("quality", [100, 95, 90, 89, 75, 1])
def test_jpeg_written_by_opencv_has_pillows_bytes(tmp_path, chelsea, quality):
    """JPEGs are encoded by OpenCV with Pillow's settings (4:4:4 chroma from quality 90, 4:2:0
    below): the same file as Pillow's, byte for byte, for RGB and for gray from quality 90 (below
    it one header byte differs for gray, see _encode_jpeg), where both use libjpeg-turbo; the
    same pixels always. Odd sizes exercise the edge blocks."""
    gray = np.ascontiguousarray(chelsea[..., 1])
    images = [chelsea, chelsea[:131, :257], np.ascontiguousarray(chelsea[5:40, 3:60, ::-1]), gray]
    for image in images:
        path = write_image(tmp_path / "out.jpg", image, quality=quality)
        pillow = _pillow_jpeg(image, quality)
        np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(io.BytesIO(pillow))))
        if _both_libjpeg_turbo() and (image.ndim == 3 or quality >= 90):
            assert path.read_bytes() == pillow
    with pytest.raises(ValueError, match="quality must be 1..100"):
        write_image(tmp_path / "bad.jpg", gray, quality=101)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jpg"]


def test_empty_image_refused_in_one_line(tmp_path):
    for ext in ("png", "jpg", "webp"):
        with pytest.raises(ValueError, match="cannot write an empty image"):
            write_image(tmp_path / f"e.{ext}", np.zeros((0, 5, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_nul_in_a_name_is_no_such_file():
    with pytest.raises(InputError, match="no such file"):
        read_image("missing\x00.png")


def test_folder_sync_deferred_but_file_synced_before_rename(tmp_path, chelsea, monkeypatch):
    """sync_folder=False: the file is still fsynced before its rename (never a partial file under
    the final name after a crash); the folder is synced once, by FolderSync, not per file."""
    import frametrans.atomic as atomic

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic, "fsync_dir", lambda folder: events.append(("dir", Path(folder).name)))
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append(("file",)), real_fsync(fd))[1])
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append(("rename", Path(b).name)), real_replace(a, b))[1])
    folders = atomic.FolderSync()
    for name in ["a.png", "b.png", "sub/c.png"]:
        folders.add(tmp_path / name)
        write_image(tmp_path / name, chelsea, sync_folder=False)
    assert events == [("file",), ("rename", "a.png"), ("file",), ("rename", "b.png"), ("file",), ("rename", "c.png")]
    folders.sync()
    assert sorted(events[6:]) == [("dir", "sub"), ("dir", tmp_path.name)]
    events.clear()
    folders.sync()  # forgotten once synced
    write_image(tmp_path / "d.png", chelsea)  # the default: the folder right after the rename
    assert events == [("file",), ("rename", "d.png"), ("dir", tmp_path.name)]


def test_atomic_bytes_one_descriptor_whole_file_before_commit_usual_mode(tmp_path):
    """atomic_write_bytes: the temporary file holds every byte when ``before_commit`` runs; what it
    raises leaves the old file and no temporary; the file gets the mode of an ordinary new file."""
    from frametrans.atomic import atomic_write_bytes

    target = tmp_path / "out.bin"
    data = os.urandom(300_000)
    seen = []

    def check() -> None:
        (tmp,) = [p for p in tmp_path.iterdir() if p.name.startswith(".out.bin.")]
        seen.append(tmp.read_bytes() == data)

    atomic_write_bytes(target, data, sync_folder=False, before_commit=check)
    assert seen == [True] and target.read_bytes() == data and only_files(tmp_path) == ["out.bin"]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask

    def refuse() -> None:
        raise RuntimeError("not this one")

    with pytest.raises(RuntimeError, match="not this one"):
        atomic_write_bytes(target, b"new", before_commit=refuse)
    assert target.read_bytes() == data and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="16-bit"):
        write_image(tmp_path / "x.jpg", np.zeros((4, 4, 3), np.uint16))
    with pytest.raises(ValueError, match="extension"):
        write_image(tmp_path / "x.xyz", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))
    assert only_files(tmp_path) == []


def test_alpha_dropped_for_jpeg_with_warning(tmp_path, astronaut, caplog):
    with caplog.at_level(logging.WARNING):
        write_image(tmp_path / "x.jpg", astronaut, alpha=np.zeros(astronaut.shape[:2], np.uint8))
    assert "alpha" in caplog.text
    assert read_image(tmp_path / "x.jpg").alpha is None


# -------------------------------------------------------------------------------------- folders


def test_list_images_natural_hidden_recursive_symlinks(tmp_path, astronaut):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden_dir").mkdir()
    for name in ["img10.png", "img2.png", "IMG1.JPG", "notes.txt", ".secret.png", "sub/b.png", ".hidden_dir/c.png"]:
        (root / name).write_bytes(b"x")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "linked.png").write_bytes(b"x")
    os.symlink(outside / "linked.png", root / "link.png")
    os.symlink(outside, root / "linkdir")
    os.symlink(root, root / "sub" / "loop")  # a loop must not recurse forever

    flat = [p.relative_to(root).as_posix() for p in list_images(root, recursive=False)]
    assert flat == ["IMG1.JPG", "img2.png", "img10.png", "link.png"]
    deep = [p.relative_to(root).as_posix() for p in list_images(root, recursive=True)]
    assert deep == ["IMG1.JPG", "img2.png", "img10.png", "link.png", "linkdir/linked.png", "sub/b.png"]
    with pytest.raises(InputError):
        list_images(tmp_path / "missing")
    assert ".png" in IMAGE_EXTENSIONS


def test_natural_sort_key():
    names = ["f10.png", "f9.png", "F1.png", "f1b.png", "a/f2.png", "a10/x.png", "a2/x.png"]
    assert sorted(names, key=natural_sort_key) == [
        "a/f2.png", "a2/x.png", "a10/x.png", "F1.png", "f1b.png", "f9.png", "f10.png"
    ]


def test_output_path_for(tmp_path):
    src = tmp_path / "in" / "trip" / "day1" / "photo.jpg"
    assert output_path_for(src, tmp_path / "in", tmp_path / "out", None) == tmp_path / "out/trip/day1/photo.jpg"
    assert output_path_for(src, tmp_path / "in", tmp_path / "out", "png") == tmp_path / "out/trip/day1/photo.png"
    assert output_path_for(src, tmp_path / "in", tmp_path / "out", ".webp").name == "photo.webp"
    assert output_path_for(src, src, tmp_path / "out", None) == tmp_path / "out/photo.jpg"
    with pytest.raises(ValueError):
        output_path_for(tmp_path / "other.jpg", tmp_path / "in", tmp_path / "out")


def test_pixel_limit_is_pillows_unless_the_user_raises_it(tmp_path, monkeypatch):
    from frametrans.io.images import PIXEL_LIMIT_ENV, read_image

    path = tmp_path / "big.png"
    Image.new("RGB", (1000, 1000), (10, 20, 30)).save(path)  # 1 MP
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "5e5")
    with pytest.raises(InputError, match=f"decompression bomb.*{PIXEL_LIMIT_ENV}"):
        read_image(path)
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "1.5e6")
    assert read_image(path).image.shape == (1000, 1000, 3)
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "0")
    assert read_image(path).image.shape == (1000, 1000, 3)
    monkeypatch.delenv(PIXEL_LIMIT_ENV)
    read_image(path)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # Pillow's own bound is back
