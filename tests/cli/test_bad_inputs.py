"""Bad inputs through `frametrans apply`: a corpus generated here (nothing shipped), each case
asserting the one-line message naming the file, the exit status, and that the other outputs are
intact. Plus options rejected before any work, raw streams that end mid-frame, links, permissions.
"""

from __future__ import annotations

import errno
import io
import os
import re
import struct
import sys
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import av
import numpy as np
import pytest
import torch
from PIL import Image

from frametrans.io.images import iter_image_frames, read_image
from support.cli import failure_lines, hidden_files, main_in_process, run
from support.media import (_exif_jpeg, _gif, _mux_silence, _png16, _tiff, _webp, jpeg_bytes, make_clip, picture,
                           png_bytes)

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


# ---------------------------------------------------------------------------------------------
# the corpus: each builder writes one file and says what `apply` must do with it


@dataclass
class Ok:
    """The input is processed: output ``name`` (default: same name) of ``shape`` (H, W[, C])."""

    shape: Optional[Tuple[int, ...]] = None
    dtype: str = "uint8"
    alpha: bool = False
    frames: Optional[int] = None  # videos/animations: frames in the output
    name: Optional[str] = None


@dataclass
class Fails:
    """The input is reported: one line naming it and containing ``reason``; no output for it
    (``partial_output``: a truncated video still writes its decodable frames)."""

    reason: str
    partial_output: bool = False


Expect = Union[Ok, Fails]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` RGB pixels but holds almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def make_audio_only(path: Path) -> None:
    with av.open(str(path), "w") as c:
        a = c.add_stream("aac", rate=48000)
        _mux_silence(c, a, 0.2)


def make_zero_frame_video(path: Path) -> None:
    """A container with a video stream declared and not one frame in it."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libvpx-vp9" if path.suffix == ".webm" else "libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        c.start_encoding()
        c.mux(s.encode())


def make_undecodable_video(path: Path) -> None:
    """A well-formed MP4 whose every video packet is zeros: opens, demuxes, decodes nothing."""
    make_clip(path, n=10, faststart=True)
    data = bytearray(path.read_bytes())
    start = data.find(b"mdat") + 4
    data[start:] = bytes(len(data) - start)
    path.write_bytes(bytes(data))


def cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def build_corpus(folder: Path, root_user: bool) -> Dict[str, Expect]:
    """Write every case into ``folder``; returns file name -> expectation."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: Dict[str, Expect] = {}

    def put(name: str, data: bytes, expect: Expect) -> None:
        (folder / name).write_bytes(data)
        cases[name] = expect

    def save(name: str, fn: Callable[[Path], None], expect: Expect) -> None:
        fn(folder / name)
        cases[name] = expect

    good = picture(40, 48)
    put("good.png", png_bytes(good), Ok((40, 48, 3)))
    # empty, truncated, not an image, wrong extension
    put("empty.png", b"", Fails("empty file"))
    put("empty.jpg", b"", Fails("empty file"))
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    put("cut.png", cut(png_bytes(noisy), 0.6), Fails("truncated or corrupt"))
    put("cut.jpg", cut(jpeg_bytes(picture(64, 64)), 0.5), Fails("truncated or corrupt"))
    put("header_only.png", png_bytes(good)[:33], Fails("truncated or corrupt PNG"))
    put("text.png", b"this is not a picture\n" * 20, Fails("not an image: the file is a text file"))
    put("random.bmp", np.random.default_rng(1).integers(0, 256, 999, dtype=np.uint8).tobytes(),
        Fails("not an image"))
    put("png_named.jpg", png_bytes(picture(20, 24)), Ok((20, 24, 3)))
    # odd pixel formats
    put("float.tif", _tiff(np.linspace(0, 1, 12 * 10, dtype=np.float32).reshape(12, 10), "F"),
        Fails("floating-point"))
    put("rgb16.png", _png16(np.linspace(0, 65535, 16 * 18 * 3).astype(np.uint16).reshape(16, 18, 3)),
        Ok((16, 18, 3), dtype="uint16"))
    put("gray16.tif", _tiff((np.arange(20 * 10, dtype=np.uint16) * 300).reshape(20, 10), "I;16"),
        Ok((20, 10), dtype="uint16"))
    put("cmyk.jpg", _cmyk_jpeg(picture(24, 32)), Ok((24, 32, 3)))
    put("palette.png", _palette_png(picture(18, 22), transparent=False), Ok((18, 22, 3)))
    put("palette_alpha.png", _palette_png(picture(18, 22), transparent=True), Ok((18, 22, 4), alpha=True))
    put("gray.png", png_bytes(picture(15, 9)[..., 0], "L"), Ok((15, 9)))
    put("gray_alpha.png", _la_png(picture(15, 9)[..., 0]), Ok((15, 9, 2), alpha=True))
    rgba = np.dstack([picture(21, 17), np.linspace(0, 255, 21 * 17).astype(np.uint8).reshape(21, 17)])
    put("rgba.png", png_bytes(rgba, "RGBA"), Ok((21, 17, 4), alpha=True))
    put("exif_rotated.jpg", _exif_jpeg(picture(20, 30), orientation=6), Ok((30, 20, 3)))
    # tiny, odd and extreme sizes
    put("one_pixel.png", png_bytes(np.full((1, 1, 3), 200, np.uint8)), Ok((1, 1, 3)))
    put("seven_by_13.png", png_bytes(picture(13, 7)), Ok((13, 7, 3)))
    put("wide.png", png_bytes(picture(2, 700)), Ok((2, 700, 3)))
    put("tall.png", png_bytes(picture(500, 1)), Ok((500, 1, 3)))
    put("bomb.png", png_claiming(100_000, 100_000), Fails("decompression bomb"))
    # animations
    put("still.gif", _gif([picture(12, 14)]), Fails("pass --ext png"))
    put("anim.gif", _gif([picture(24, 32, i) for i in range(3)]), Ok((24, 32, 3), frames=3))
    put("anim.webp", _webp([picture(20, 26, i) for i in range(4)]), Ok((20, 26, 3), frames=4))
    # names
    put("ünï cödé näme.png", png_bytes(picture(11, 12)), Ok((11, 12, 3)))
    put(" leading and trailing spaces .png", png_bytes(picture(10, 10)), Ok((10, 10, 3)))
    # links and special files
    os.symlink("good.png", folder / "link_to_good.png")
    cases["link_to_good.png"] = Ok((40, 48, 3))
    os.symlink("does_not_exist.png", folder / "dangling.png")
    cases["dangling.png"] = Fails("broken symbolic link")
    os.symlink("self_loop.png", folder / "self_loop.png")
    cases["self_loop.png"] = Fails("broken symbolic link")
    os.mkfifo(folder / "fifo.png")
    cases["fifo.png"] = Fails("not a regular file")
    if not root_user:
        put("unreadable.png", png_bytes(good), Fails("permission denied"))
        os.chmod(folder / "unreadable.png", 0)
    # videos
    save("clip.mp4", lambda p: make_clip(p, n=6), Ok((48, 64, 3), frames=6))
    # yuv420p output needs even sizes: the writer pads one row/column (documented in io/video.py)
    save("odd_size.mkv", lambda p: make_clip(p, n=4, h=35, w=49, pix_fmt="yuv444p"), Ok((36, 50, 3), frames=4))
    save("yuv422p10.mkv", lambda p: make_clip(p, n=3, codec="ffv1", pix_fmt="yuv422p10le"),
         Ok((48, 64, 3), frames=3))
    save("gray16.mkv", lambda p: make_clip(p, n=3, codec="ffv1", pix_fmt="gray16le"), Ok((48, 64, 3), frames=3))
    full = folder / "_full.mp4"
    make_clip(full, n=30, faststart=True)
    put("cut.mp4", cut(full.read_bytes(), 0.6), Fails("decodable frames were written", partial_output=True))
    put("cut_header.mp4", cut(full.read_bytes(), 0.02), Fails("cannot open as video"))
    full.unlink()
    put("empty.mp4", b"", Fails("empty file"))
    put("garbage.mkv", np.random.default_rng(2).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        Fails("cannot open as video"))
    save("audio_only.mp4", make_audio_only, Fails("no video stream (streams: audio aac)"))
    save("zero_frames.mp4", make_zero_frame_video, Fails("no video stream (streams: none)"))
    save("zero_frames.webm", make_zero_frame_video, Fails("no video data"))
    save("undecodable.mp4", make_undecodable_video, Fails("no decodable frames"))
    put("png_named.mov", png_bytes(picture(20, 24)), Ok((20, 24, 3), frames=1))
    put("unwritable.wmv", b"\0" * 100, Fails("cannot write .wmv videos"))
    return cases


def _cmyk_jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _palette_png(rgb: np.ndarray, transparent: bool) -> bytes:
    im = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    buf = io.BytesIO()
    if transparent:
        im.save(buf, format="PNG", transparency=0)
    else:
        im.save(buf, format="PNG")
    return buf.getvalue()


def _la_png(gray: np.ndarray) -> bytes:
    alpha = np.linspace(0, 255, gray.size).astype(np.uint8).reshape(gray.shape)
    return png_bytes(np.dstack([gray, alpha]), "LA")


# ---------------------------------------------------------------------------------------------
# helpers


def video_frames(path: Path) -> Tuple[int, Tuple[int, int]]:
    with av.open(str(path)) as c:
        frames = [f for f in c.decode(video=0)]
    return len(frames), (frames[0].height, frames[0].width)


def check_output(path: Path, expect: Ok) -> None:
    assert path.exists(), f"{path.name}: no output"
    if path.suffix in (".mp4", ".mkv", ".mov", ".gif", ".webm"):
        n, (h, w) = video_frames(path)
        assert n == expect.frames, f"{path.name}: {n} frames, expected {expect.frames}"
        assert (h, w) == expect.shape[:2], f"{path.name}: {h}x{w}"
        return
    if expect.frames is not None:  # animated image
        frames = list(iter_image_frames(path))
        assert len(frames) == expect.frames
        assert frames[0].image.shape[:2] == expect.shape[:2]
        return
    arr = np.asarray(Image.open(path)) if expect.dtype == "uint8" else read_image(path).image
    assert arr.dtype == np.dtype(expect.dtype), f"{path.name}: {arr.dtype}"
    assert arr.shape[:2] == expect.shape[:2], f"{path.name}: {arr.shape}"
    if expect.alpha:
        assert read_image(path).alpha is not None, f"{path.name}: alpha lost"


# ---------------------------------------------------------------------------------------------
# the corpus in one folder job


def test_corpus_each_case_reported_and_the_rest_done(tmp_path, model_path):
    cases = build_corpus(tmp_path / "in", root_user=ROOT)
    out = tmp_path / "out"
    res = run("apply", tmp_path / "in", "-o", out, "-m", model_path, "--precision", "fp32")
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    failed = failure_lines(res.output)
    for name, expect in cases.items():
        if isinstance(expect, Ok):
            assert name not in failed, failed.get(name)
            check_output(out / (expect.name or name), expect)
        else:
            assert name in failed, f"{name} not reported:\n{res.output}"
            assert expect.reason in failed[name], failed[name]
            assert (out / name).exists() == expect.partial_output, name
    assert len(failed) == sum(isinstance(e, Fails) for e in cases.values())
    # every message is also logged when it happens, on one line, naming the file
    for name, line in failed.items():
        assert any(name in l and "frametrans:" in l for l in res.output.splitlines()), name
    assert not hidden_files(out), hidden_files(out)


def test_truncated_video_alone_writes_decodable_frames(tmp_path, model_path):
    full = tmp_path / "full.mp4"
    make_clip(full, n=30, faststart=True, audio=True)
    cut_file = tmp_path / "cut.mp4"
    cut_file.write_bytes(cut(full.read_bytes(), 0.55))
    with av.open(str(cut_file)) as c:  # what plain FFmpeg can decode from it
        try:
            decodable = sum(1 for _ in c.decode(video=0))
        except av.FFmpegError:
            decodable = None
    res = run("apply", cut_file, "-o", tmp_path / "out.mp4", "-m", model_path, "--precision", "fp32")
    assert res.exit_code == 1, res.output
    n, _ = video_frames(tmp_path / "out.mp4")
    assert 0 < n < 30
    if decodable is not None:
        assert abs(n - decodable) <= 1
    assert f"the {n} decodable frames were written" in res.output
    assert not hidden_files(tmp_path)


@pytest.mark.parametrize("name, data, reason", [
    ("empty.png", b"", "empty file (0 bytes)"),
    ("text.jpg", b"hello\n" * 50, "not an image: the file is a text file"),
    ("cut.png", png_bytes(picture(30, 30))[:100], "truncated or corrupt"),
    ("bomb.png", png_claiming(60_000, 60_000), "decompression bomb"),
])
def test_single_bad_image(tmp_path, model_path, name, data, reason):
    (tmp_path / name).write_bytes(data)
    res = run("apply", tmp_path / name, "-o", tmp_path / "out.png", "-m", model_path)
    assert res.exit_code == 1
    assert reason in failure_lines(res.output)[name]
    assert not (tmp_path / "out.png").exists() and not hidden_files(tmp_path)


def test_mp4_named_png_says_what_it_is(tmp_path, model_path):
    make_clip(tmp_path / "clip.mp4", n=2)
    (tmp_path / "clip.png").write_bytes((tmp_path / "clip.mp4").read_bytes())
    res = run("apply", tmp_path / "clip.png", "-o", tmp_path / "out.png", "-m", model_path)
    assert res.exit_code == 1
    assert "not an image: the file is an MP4/MOV video" in res.output


def test_still_gif_needs_ext_and_works_with_it(tmp_path, model_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "still.gif").write_bytes(_gif([picture(12, 14)]))
    res = run("apply", src, "-o", tmp_path / "out", "-m", model_path, "--ext", "png")
    assert res.exit_code == 0, res.output
    assert np.asarray(Image.open(tmp_path / "out" / "still.png")).shape == (12, 14, 3)


def test_sixteen_bit_to_jpeg_is_reduced_with_a_warning(tmp_path, model_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "deep.png").write_bytes(_png16(np.full((8, 8, 3), 40000, np.uint16)))
    res = run("apply", src, "-o", tmp_path / "out", "-m", model_path, "--ext", "jpg")
    assert res.exit_code == 0, res.output
    assert "reduced to 8 bits" in res.output
    assert np.asarray(Image.open(tmp_path / "out" / "deep.jpg")).dtype == np.uint8


def test_large_frame_runs_within_the_memory_budget(tmp_path, model_path):
    Image.fromarray(picture(300, 420)).save(tmp_path / "big.png")
    common = ["-m", model_path, "--precision", "fp32", "--tile-overlap", "16"]
    assert run("apply", tmp_path / "big.png", "-o", tmp_path / "full.png", *common).exit_code == 0
    # 12M holds the frame's buffers and ~120 px tiles of this model, not the whole frame (~15M)
    res = run("apply", tmp_path / "big.png", "-o", tmp_path / "bands.png", "--max-memory", "12M", *common)
    assert res.exit_code == 0, res.output
    assert "exceeds the memory budget" in res.output and "row bands" in res.output
    # tiles (chosen with --tile), their statistics measured exactly layer by layer within the budget
    tiles = run("apply", tmp_path / "big.png", "-o", tmp_path / "tiled.png", "--max-memory", "12M",
                "--tile", "120", *common)
    assert tiles.exit_code == 0, tiles.output
    full = np.asarray(Image.open(tmp_path / "full.png")).astype(int)
    bands = np.asarray(Image.open(tmp_path / "bands.png")).astype(int)
    tiled = np.asarray(Image.open(tmp_path / "tiled.png")).astype(int)
    assert full.shape == bands.shape == tiled.shape == (300, 420, 3)
    assert np.abs(full - bands).max() <= 1  # the whole frame's picture
    assert np.abs(full - tiled).mean() < 2


def test_memory_budget_below_one_tile_is_refused_with_the_minimum(tmp_path, model_path):
    Image.fromarray(picture(300, 420)).save(tmp_path / "big.png")
    res = run("apply", tmp_path / "big.png", "-o", tmp_path / "out.png", "-m", model_path,
              "--precision", "fp32", "--tile-overlap", "16", "--max-memory", "3M")
    assert res.exit_code == 2, res.output
    line = [x for x in res.output.splitlines() if "Error" in x]
    assert len(line) == 1, res.output
    assert "Invalid value for --max-memory: 3.0 MiB is too small for a 420x300 frame" in line[0]
    need = int(re.search(r"use --max-memory (\d+)M", line[0]).group(1))
    assert 3 < need < 64
    one = run("apply", tmp_path / "big.png", "-o", tmp_path / "out.png", "-m", model_path, "--max-memory", "1")
    assert one.exit_code == 2 and "Invalid value for --max-memory: 1 B is too small" in one.output
    assert not (tmp_path / "out.png").exists()
    ok = run("apply", tmp_path / "big.png", "-o", tmp_path / "out.png", "-m", model_path,
             "--precision", "fp32", "--tile-overlap", "16", "--max-memory", f"{need}M")
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "out.png").exists()


# ---------------------------------------------------------------------------------------------
# links, loops, permissions, names


def test_recursive_symlink_loop_and_shared_folder_visited_once(tmp_path, model_path):
    src = tmp_path / "in"
    (src / "a" / "b").mkdir(parents=True)
    Image.fromarray(picture(16, 16)).save(src / "a" / "one.png")
    Image.fromarray(picture(16, 20)).save(src / "a" / "b" / "two.png")
    os.symlink("../..", src / "a" / "b" / "loop")  # a -> b -> loop -> in -> a ...
    os.symlink(src / "a", src / "again")  # the same folder under a second name
    res = run("apply", src, "-o", tmp_path / "out", "-m", model_path, "--recursive")
    assert res.exit_code == 0, res.output
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert names == ["a/b/two.png", "a/one.png"]


def test_output_folder_inside_the_input_is_not_read_back(tmp_path, model_path):
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(3):
        Image.fromarray(picture(16, 16, i)).save(src / f"p{i}.png")
    out = src / "painted"
    assert run("apply", src, "-o", out, "-m", model_path, "--recursive").exit_code == 0
    res = run("apply", src, "-o", out, "-m", model_path, "--recursive", "--skip-existing")
    assert res.exit_code == 0, res.output
    assert "3 skipped" in res.output
    assert not (out / "painted").exists()


def test_unreadable_file_and_folder(tmp_path, model_path, monkeypatch):
    src = tmp_path / "in"
    (src / "locked").mkdir(parents=True)
    Image.fromarray(picture(16, 16)).save(src / "ok.png")
    Image.fromarray(picture(16, 16)).save(src / "secret.png")
    Image.fromarray(picture(16, 16)).save(src / "locked" / "inner.png")
    if ROOT:  # root reads everything: make the OS calls fail as they would for a user
        real_access, real_scandir = os.access, os.scandir
        monkeypatch.setattr(os, "access", lambda p, m, **k: False if Path(p).name == "secret.png"
                            else real_access(p, m, **k))

        def scandir(path="."):
            if Path(path).name == "locked":
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_scandir(path)
        monkeypatch.setattr(os, "scandir", scandir)
    else:
        os.chmod(src / "secret.png", 0)
        os.chmod(src / "locked", 0)
    try:
        res = run("apply", src, "-o", tmp_path / "out", "-m", model_path, "--recursive")
    finally:
        if not ROOT:
            os.chmod(src / "locked", 0o755)
    assert res.exit_code == 1
    failed = failure_lines(res.output)
    assert "permission denied" in failed["secret.png"]
    assert "cannot list folder: Permission denied" in failed["locked"]
    assert (tmp_path / "out" / "ok.png").exists()


def test_list_file_with_unicode_spaces_and_a_missing_entry(tmp_path, model_path):
    names = ["plain.png", "with space.png", "ünïcödé 名前.png", " edge spaces .png"]
    for i, n in enumerate(names):
        Image.fromarray(picture(12, 12, i)).save(tmp_path / n)
    listing = "".join(f"{tmp_path / n}\n" for n in names) + f"{tmp_path / 'missing.png'}\n"
    res = run("apply", "--list", "-", "-o", tmp_path / "out", "-m", model_path, input=listing)
    assert res.exit_code == 1
    assert "missing.png: no such file or folder" in res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)


def test_broken_link_given_directly(tmp_path, model_path):
    os.symlink(tmp_path / "gone.png", tmp_path / "link.png")
    res = run("apply", tmp_path / "link.png", "-o", tmp_path / "out.png", "-m", model_path)
    assert res.exit_code == 1
    assert "link.png: broken symbolic link" in res.output


# ---------------------------------------------------------------------------------------------
# options: impossible values are refused before the model is loaded or any input read


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "must be > 0"),
    (["--tile", "4"], "--tile must be >= 8"),
    (["--tile", "64", "--tile-overlap", "64"], "the overlap must be smaller than the tile"),
    (["--tile-overlap", "-1"], "--tile-overlap must be >= 0"),
    (["--device", "tpu"], "unknown device"),
    (["--device", "cuda:7"], "cuda"),
    (["--precision", "fp16", "--device", "cpu"], "fp16 is not supported on the CPU"),
    (["--precision", "int8"], "'int8' is not one of"),
    (["--max-memory", "lots"], "bad memory size"),
    (["--max-memory", "0"], "must be > 0"),
    (["--ext", "xyz"], "--ext 'xyz': cannot write that image format"),
    (["--codec", "nosuchcodec"], "no such video encoder"),
    (["--codec", "aac"], "not a video encoder"),
    (["--pix-fmt", "rgb99"], "unknown pixel format"),
    (["--crf", "99"], "99 is not in the range"),
    (["--overwrite", "--skip-existing"], "exclude each other"),
    (["--size", "64x64"], "--size is for a raw stream"),
    (["--y4m"], "--y4m is for a raw stream"),
    (["--resize", "0x10"], "width and height must be 1..65536"),
    (["--resize", "ten"], "expected WIDTHxHEIGHT"),
    (["--max-side", "0"], "must be > 0"),
])
def test_impossible_options_refused_before_any_work(tmp_path, args, message):
    if "cuda" in " ".join(args) and torch.cuda.device_count() > 7:
        pytest.skip("has 8 GPUs")
    Image.fromarray(picture(16, 16)).save(tmp_path / "a.png")
    # a model that does not exist: the option must be refused before anything is loaded
    res = run("apply", tmp_path / "a.png", "-o", tmp_path / "b.png", "-m", tmp_path / "nope.safetensors",
              *args)
    assert res.exit_code == 2, res.output
    assert message in res.output, res.output
    assert "nope.safetensors" not in res.output and "Traceback" not in res.output
    assert not (tmp_path / "b.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--resize", "10x10"], "--resize does not apply to a stream"),
    (["--skip-existing"], "--skip-existing does not apply to a stream"),
    (["--num-styles", "3"], "a stream on stdout carries one style"),
])
def test_stream_options_refused(tmp_path, args, message):
    res = run("apply", "-", "--size", "4x4", "-o", "-", "-m", tmp_path / "nope.safetensors", *args,
              input=b"\0" * 48)
    assert res.exit_code == 2 and message in res.output, res.output


def test_a_stream_is_refused_a_translator_with_several_styles():
    """apply_stream writes one stream: a MUNIT translator with 2 styles is refused, nothing read."""
    import io

    from frametrans.apply import Translator
    from frametrans.apply.stream import apply_stream
    from frametrans.engine.runner import RunnerOptions
    from support import tiny_model

    t = Translator(tiny_model("munit"), RunnerOptions(device="cpu", precision="fp32", backend="torch"),
                   num_styles=2, seed=0)
    stdin, stdout = io.BytesIO(b"\0" * 48), io.BytesIO()
    with pytest.raises(ValueError, match="translator has 2 styles"):
        apply_stream(stdin, stdout, t, (4, 4))
    assert stdin.tell() == 0 and stdout.getvalue() == b""


def test_unwritable_output_extension_refused_before_work(tmp_path, model_path):
    Image.fromarray(picture(16, 16)).save(tmp_path / "a.png")
    res = run("apply", tmp_path / "a.png", "-o", tmp_path / "b.xyz", "-m", model_path)
    assert res.exit_code == 1 and "cannot write .xyz images; use one of" in res.output
    assert "0 written" not in res.output  # refused at planning, before any work


# ---------------------------------------------------------------------------------------------
# raw streams


def test_raw_stream_ending_mid_frame_is_reported_not_padded(model_path):
    w, h = 8, 6
    frame = picture(h, w).tobytes()
    res = run("apply", "-", "--size", f"{w}x{h}", "-o", "-", "-m", model_path, "--precision", "fp32",
              input=frame * 3 + frame[:50])
    assert res.exit_code == 1
    assert len(res.stdout_bytes) == 3 * len(frame)
    assert "stream ended inside frame 3: got 50 of 144 bytes" in res.stderr
    assert res.stderr.count("error") == 1


def test_empty_raw_stream_is_an_error(model_path):
    res = run("apply", "-", "--size", "8x6", "-o", "-", "-m", model_path, input=b"")
    assert res.exit_code == 1 and "no frames: the stream is empty" in res.stderr
    assert res.stdout_bytes == b""


def test_stream_size_checked_against_a_file_on_stdin_before_work(tmp_path, model_path, monkeypatch, capsys):
    """A file as stdin (``< frames.rgb``): its size is known before reading; the real entry point,
    in this process."""
    data = tmp_path / "frames.rgb"
    data.write_bytes(b"\0" * (8 * 6 * 3 * 4 + 7))
    with open(data) as stdin:  # sys.stdin: a text file whose .buffer is the file's bytes
        monkeypatch.setattr(sys, "stdin", stdin)
        code, out, err = main_in_process(capsys, "apply", "-", "--size", "8x6", "-o", "-", "-m",
                                         tmp_path / "nope.safetensors")
    assert code == 2, err
    assert "stdin holds 583 bytes, not a whole number of 144-byte rgb24 frames" in err
    assert out == ""


def test_stream_kind_mismatch_detected_from_the_first_bytes():
    from frametrans.apply import check_stream_size

    y4m = io.BufferedReader(io.BytesIO(b"YUV4MPEG2 W8 H6 F25:1 C444\nFRAME\n" + b"\0" * 144))
    with pytest.raises(ValueError, match="is a y4m stream, not raw rgb24: leave out --size"):
        check_stream_size(y4m, (8, 6))
    rgb = io.BufferedReader(io.BytesIO(b"\x10" * 144))
    with pytest.raises(ValueError, match="for raw rgb24 frames give --size"):
        check_stream_size(rgb, None)
    check_stream_size(io.BufferedReader(io.BytesIO(b"YUV4")), None)  # a short first read is fine


# ---------------------------------------------------------------------------------------------
# refused up front, before the model is loaded (issue 20, items 10, 12, 13)


@pytest.mark.parametrize("layout", ["folder", "several files"])
def test_existing_file_as_output_of_a_folder_is_refused_before_any_work(tmp_path, layout):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(picture(16, 16, i)).save(folder / f"p{i}.png")
    target = tmp_path / "out.png"
    target.write_bytes(b"keep me")
    inputs = [folder] if layout == "folder" else sorted(folder.iterdir())
    # a model that does not exist: the refusal must come before it is looked for
    res = run("apply", *inputs, "-o", target, "-m", tmp_path / "nope.safetensors")
    assert res.exit_code == 2, res.output
    assert f"{target} is an existing file" in res.output and "output folder" in res.output
    assert "nope.safetensors" not in res.output and "cannot write" not in res.output
    assert res.output.count("Error") == 1
    assert target.read_bytes() == b"keep me"


def test_existing_file_as_output_folder_refused_by_the_library_planner(tmp_path):
    from frametrans.apply import OutputOptions, plan_jobs

    (tmp_path / "in").mkdir()
    Image.fromarray(picture(8, 8)).save(tmp_path / "in" / "a.png")
    (tmp_path / "out.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="is an existing file") as info:
        plan_jobs([str(tmp_path / "in")], str(tmp_path / "out.png"), OutputOptions(), problems=[])
    assert getattr(info.value, "param_hint", None) == "-o/--output"
    # one image to an existing file stays a plain overwrite question, not this refusal
    jobs = plan_jobs([str(tmp_path / "in" / "a.png")], str(tmp_path / "out.png"), OutputOptions())
    assert len(jobs) == 1


def _encoder_opens(codec: str) -> bool:
    ctx = av.codec.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = 352, 288, "yuv420p", Fraction(1, 25)
    try:
        ctx.open()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.parametrize("input_kind", ["video", "image"])
def test_encoder_that_cannot_open_here_is_refused_before_the_model(tmp_path, input_kind):
    try:
        if _encoder_opens("h264_nvenc"):
            pytest.skip("h264_nvenc works on this machine")
    except av.codec.codec.UnknownCodecError:
        pytest.skip("this FFmpeg has no h264_nvenc")
    if input_kind == "video":
        make_clip(tmp_path / "clip.mp4", n=3)
        src, dst = tmp_path / "clip.mp4", tmp_path / "out.mp4"
    else:
        Image.fromarray(picture(16, 16)).save(tmp_path / "a.png")
        src, dst = tmp_path / "a.png", tmp_path / "b.png"
    res = run("apply", src, "-o", dst, "--codec", "h264_nvenc", "-m", tmp_path / "nope.safetensors")
    assert res.exit_code == 2, res.output
    assert "--codec h264_nvenc: the encoder cannot be opened here" in res.output
    assert "libx264" in res.output and "nope.safetensors" not in res.output
    assert res.output.count("Error") == 1 and not dst.exists()


@pytest.mark.parametrize("args", [["--pix-fmt", "rgb48le"], ["--codec", "libx264", "--pix-fmt", "rgb48le"]])
def test_pixel_format_the_codec_cannot_write_is_refused_before_the_model(tmp_path, args):
    make_clip(tmp_path / "clip.mp4", n=3)
    res = run("apply", tmp_path / "clip.mp4", "-o", tmp_path / "out.mp4", *args,
              "-m", tmp_path / "nope.safetensors")
    assert res.exit_code == 2, res.output
    assert "--pix-fmt rgb48le: the libx264 encoder cannot write it; it takes yuv420p" in res.output
    assert "yuv444p" in res.output and "nope.safetensors" not in res.output
    assert "returned 22" not in res.output and not (tmp_path / "out.mp4").exists()


def test_pixel_format_refused_for_a_video_inside_a_folder(tmp_path):
    (tmp_path / "in").mkdir()
    make_clip(tmp_path / "in" / "clip.webm", n=2, codec="libvpx-vp9")
    res = run("apply", tmp_path / "in", "-o", tmp_path / "out", "--pix-fmt", "nv12",
              "-m", tmp_path / "nope.safetensors")
    assert res.exit_code == 2, res.output
    assert "--pix-fmt nv12: the libvpx-vp9 encoder cannot write it" in res.output


def test_pixel_format_the_codec_takes_still_works(tmp_path, model_path):
    make_clip(tmp_path / "clip.mp4", n=3, w=16, h=12)
    res = run("apply", tmp_path / "clip.mp4", "-o", tmp_path / "out.mp4", "--pix-fmt", "yuv444p",
              "--preset", "ultrafast", "-m", model_path, "--precision", "fp32", "--compile", "off")
    assert res.exit_code == 0, res.output
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv444p"
