"""Raw rgb24/gray8 and YUV4MPEG2 streams: frametrans.io.raw."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest

skdata = pytest.importorskip("skimage.data")

from frametrans.io.errors import InputError, TruncatedInputError  # noqa: E402
from frametrans.io.frame import Frame  # noqa: E402
from frametrans.io.raw import (  # noqa: E402
    Y4MWriter,
    iter_raw_frames,
    iter_y4m_frames,
    write_raw_frame,
)


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    """Three 64x96 RGB frames cut from the astronaut picture (even size)."""
    a = skdata.astronaut()
    return [a[100 + 20 * i : 164 + 20 * i, 150:246].copy() for i in range(3)]


class Trickle(io.RawIOBase):
    """A pipe that hands out at most ``chunk`` bytes per read, like a slow producer."""

    def __init__(self, data: bytes, chunk: int = 1000):
        self.data, self.pos, self.chunk = data, 0, chunk

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.chunk, len(self.data) - self.pos)
        buffer[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


# ------------------------------------------------------------------------------------------ raw


def test_raw_round_trip(clip):
    out = io.BytesIO()
    for image in clip:
        write_raw_frame(out, image)
    assert len(out.getvalue()) == 3 * 64 * 96 * 3
    frames = list(iter_raw_frames(io.BytesIO(out.getvalue()), 96, 64, fps=Fraction(30000, 1001)))
    assert [f.index for f in frames] == [0, 1, 2]
    for frame, image in zip(frames, clip):
        np.testing.assert_array_equal(frame.image, image)
        assert frame.source == "<stdin>"
    assert frames[2].pts == 2 and frames[2].time_base == Fraction(1001, 30000)


def test_raw_short_reads_and_gray(clip):
    gray = [im[:, :, 0].copy() for im in clip]
    data = b"".join(g.tobytes() for g in gray)
    frames = list(iter_raw_frames(Trickle(data, chunk=777), 96, 64, channels=1))
    assert len(frames) == 3
    np.testing.assert_array_equal(frames[1].image[:, :, 0], gray[1])
    assert frames[0].pts is None and frames[0].time is None


def test_raw_partial_frame_error_says_bytes(clip):
    data = clip[0].tobytes() + clip[1].tobytes()[:1000]
    got = []
    with pytest.raises(TruncatedInputError) as info:
        for frame in iter_raw_frames(io.BytesIO(data), 96, 64, source="<stdin>"):
            got.append(frame)
    assert len(got) == 1 and info.value.frames_read == 1
    message = str(info.value)
    assert "<stdin>" in message and "1000 of 18432 bytes" in message and "\n" not in message
    assert isinstance(info.value, InputError)


def test_raw_empty_stream_and_bad_args():
    assert list(iter_raw_frames(io.BytesIO(b""), 4, 4)) == []
    with pytest.raises(ValueError):
        list(iter_raw_frames(io.BytesIO(b""), 0, 4))
    with pytest.raises(ValueError, match="uint8"):
        write_raw_frame(io.BytesIO(), np.zeros((2, 2, 3), np.uint16))


def test_write_raw_frame_accepts_frame_objects(clip):
    out = io.BytesIO()
    write_raw_frame(out, Frame(clip[0][:, ::2]))  # non-contiguous view
    assert out.getvalue() == np.ascontiguousarray(clip[0][:, ::2]).tobytes()


# ------------------------------------------------------------------------------------------ y4m


@pytest.mark.parametrize("chroma, tolerance", [("444", 2.5), ("420", 25)])
@pytest.mark.parametrize("size", [(64, 96), (13, 7)])
def test_y4m_round_trip(clip, chroma, tolerance, size):
    h, w = size
    images = [im[:h, :w].copy() for im in clip]
    out = io.BytesIO()
    with Y4MWriter(out, w, h, fps=Fraction(30000, 1001), chroma=chroma) as writer:
        for image in images:
            writer.write(image)
    header = out.getvalue().split(b"\n", 1)[0]
    assert header.startswith(f"YUV4MPEG2 W{w} H{h} F30000:1001".encode())
    frames = list(iter_y4m_frames(Trickle(out.getvalue(), chunk=500)))
    assert len(frames) == 3
    assert frames[1].pts == 1 and frames[1].time_base == Fraction(1001, 30000)
    for frame, image in zip(frames, images):
        diff = np.abs(frame.image.astype(int) - image)
        assert frame.image.shape == (h, w, 3)
        assert diff.max() <= tolerance and diff.mean() < 2


def test_y4m_written_by_us_decodes_in_ffmpeg(tmp_path, clip):
    path = tmp_path / "ours.y4m"
    with open(path, "wb") as f, Y4MWriter(f, 96, 64, fps=25) as writer:
        for image in clip:
            writer.write(image)
    with av.open(str(path)) as container:
        decoded = [fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)]
    assert len(decoded) == 3
    assert np.abs(decoded[2].astype(int) - clip[2]).max() <= 3


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv444p", "gray"])
def test_y4m_written_by_ffmpeg(tmp_path, clip, pix_fmt):
    path = tmp_path / "ffmpeg.y4m"
    with av.open(str(path), "w", format="yuv4mpegpipe") as container:
        stream = container.add_stream("wrapped_avframe", rate=24)
        stream.width, stream.height, stream.pix_fmt = 96, 64, pix_fmt
        for i, image in enumerate(clip):
            frame = av.VideoFrame.from_ndarray(image).reformat(format=pix_fmt)
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        reference = [fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)]
    with open(path, "rb") as f:
        frames = list(iter_y4m_frames(f, source=str(path)))
    assert len(frames) == len(reference) == 3
    assert frames[0].time_base == Fraction(1, 24)
    for frame, ref in zip(frames, reference):
        if pix_fmt == "gray":
            assert frame.image.shape == (64, 96, 1)
            np.testing.assert_allclose(frame.image[:, :, 0], ref[:, :, 0], atol=3)
        else:
            # FFmpeg upsamples 4:2:0 chroma by interpolation, we repeat: small differences
            assert np.abs(frame.image.astype(int) - ref).mean() < 1.5


def test_y4m_errors(clip):
    with pytest.raises(InputError, match="YUV4MPEG2"):
        list(iter_y4m_frames(io.BytesIO(b"P6 12 12 255\n")))
    with pytest.raises(InputError, match="not supported"):
        list(iter_y4m_frames(io.BytesIO(b"YUV4MPEG2 W4 H4 F25:1 C420p10\n")))
    with pytest.raises(InputError, match="empty"):
        list(iter_y4m_frames(io.BytesIO(b"")))
    out = io.BytesIO()
    writer = Y4MWriter(out, 96, 64, fps=25)
    writer.write(clip[0])
    writer.write(clip[1])
    got = []
    with pytest.raises(TruncatedInputError, match="ended inside frame 1") as info:
        for frame in iter_y4m_frames(io.BytesIO(out.getvalue()[:-100])):
            got.append(frame)
    assert len(got) == 1 and info.value.frames_read == 1
    with pytest.raises(ValueError, match="differs"):
        writer.write(clip[0][:10])


# ------------------------------------------------------------------- untrusted sizes (issue 20)


def _traced_peak(fn) -> int:
    """Peak bytes traced (Python objects and numpy buffers) while ``fn`` runs."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _consume(frames, error=None):
    def run():
        if error is None:
            list(frames)
        else:
            with pytest.raises(error):
                list(frames)
    return run


def test_y4m_header_claiming_a_huge_frame_costs_only_the_bytes_that_arrive():
    # 10000x10000 C444 claims a 300 MB frame; 1000 bytes arrive
    data = b"YUV4MPEG2 W10000 H10000 F25:1 C444\nFRAME\n" + b"\x80" * 1000
    frames = iter_y4m_frames(io.BytesIO(data))
    peak = _traced_peak(_consume(frames, TruncatedInputError))
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB allocated for 1000 bytes of data"
    with pytest.raises(TruncatedInputError, match="got 1000 of 300000000 bytes"):
        list(iter_y4m_frames(io.BytesIO(data)))


def test_raw_size_claiming_a_huge_frame_costs_only_the_bytes_that_arrive():
    frames = iter_raw_frames(io.BytesIO(b"\x10" * 5000), 10000, 10000)
    assert _traced_peak(_consume(frames, TruncatedInputError)) < 8 * 2**20


@pytest.mark.parametrize("w, h", [(1000000, 1000000), (20000, 20000)])
def test_absurd_y4m_size_refused_with_the_images_bound(w, h, monkeypatch):
    monkeypatch.delenv("FRAMETRANS_MAX_IMAGE_PIXELS", raising=False)
    data = f"YUV4MPEG2 W{w} H{h} F25:1 C420jpeg\nFRAME\n".encode() + b"\0" * 100
    with pytest.raises(InputError) as info:
        list(iter_y4m_frames(io.BytesIO(data)))
    message = str(info.value)
    assert message.startswith("<stdin>: ") and f"{w}x{h}" in message and "\n" not in message
    assert "FRAMETRANS_MAX_IMAGE_PIXELS" in message and "megapixel" in message
    with pytest.raises(ValueError, match=f"{w}x{h}.*FRAMETRANS_MAX_IMAGE_PIXELS"):
        list(iter_raw_frames(io.BytesIO(b""), w, h))


def test_pixel_bound_follows_the_environment_variable(monkeypatch):
    monkeypatch.setenv("FRAMETRANS_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(InputError, match="40x30"):
        list(iter_y4m_frames(io.BytesIO(b"YUV4MPEG2 W40 H30 F25:1 Cmono\n")))
    ok = b"YUV4MPEG2 W40 H25 F25:1 Cmono\nFRAME\n" + bytes(1000)
    assert len(list(iter_y4m_frames(io.BytesIO(ok)))) == 1
    monkeypatch.setenv("FRAMETRANS_MAX_IMAGE_PIXELS", "0")  # no bound: still no huge allocation
    data = b"YUV4MPEG2 W1000000 H1000000 F25:1 Cmono\nFRAME\n" + b"\x80" * 100
    peak = _traced_peak(_consume(iter_y4m_frames(io.BytesIO(data)), TruncatedInputError))
    assert peak < 8 * 2**20


@pytest.mark.parametrize("reader", ["raw", "y4m"])
def test_frames_larger_than_the_first_read_are_exact(clip, reader):
    # 1200x700 frames (2.5 MB each): the first grows from 1 MiB while it arrives, in odd chunks
    big = np.concatenate([np.tile(im, (11, 13, 1)) for im in clip[:1]], axis=0)[:700, :1200].copy()
    images = [big, np.ascontiguousarray(big[::-1]), np.ascontiguousarray(big[:, ::-1])]
    if reader == "raw":
        data = b"".join(im.tobytes() for im in images)
        frames = list(iter_raw_frames(Trickle(data, chunk=300_001), 1200, 700))
        for frame, image in zip(frames, images):
            np.testing.assert_array_equal(frame.image, image)
            assert frame.image.flags.writeable
    else:
        out = io.BytesIO()
        with Y4MWriter(out, 1200, 700, fps=25) as writer:
            for image in images:
                writer.write(image)
        frames = list(iter_y4m_frames(Trickle(out.getvalue(), chunk=300_001)))
        for frame, image in zip(frames, images):
            assert np.abs(frame.image.astype(int) - image).max() <= 3
    assert len(frames) == 3


def test_y4m_header_tags_read_and_written_back():
    from frametrans.io.raw import read_y4m_header

    stream = io.BytesIO(b"YUV4MPEG2 W4 H2 F30000:1001 It A10:11 C444\nFRAME\n" + bytes(24))
    header = read_y4m_header(stream)
    assert (header.fps, header.aspect, header.interlace) == (Fraction(30000, 1001), Fraction(10, 11), "t")
    assert len(list(iter_y4m_frames(stream, header=header))) == 1  # goes on from the first frame
    out = io.BytesIO()
    writer = Y4MWriter(out, 4, 2, fps=header.fps, aspect=header.aspect, interlace="t")
    writer.write(np.zeros((2, 4, 3), np.uint8))
    assert out.getvalue().startswith(b"YUV4MPEG2 W4 H2 F30000:1001 It A10:11 C444\n")
    with pytest.raises(ValueError, match="interlace"):
        Y4MWriter(out, 4, 2, interlace="x")
