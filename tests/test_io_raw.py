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
