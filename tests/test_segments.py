"""Keyframe split and lossless join of videos (frametrans.scale.segments): pure PyAV, no Ray."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from frametrans.io.video import VideoWriter, iter_video_frames, probe_video
from frametrans.scale.segments import (
    Segment,
    iter_segment_frames,
    join_segments,
    keyframe_pts,
    part_suffix,
    plan_segments,
)


def make_clip(path, frames=60, size=(64, 48), fps=25, gop=10, audio=True, open_gop=False,
              vfr=False):
    """A small H.264 clip with B-frames, a keyframe every ``gop`` frames and an AAC track.

    vfr: irregular frame durations (1/1000 s time base); open_gop: x264 open GOPs.
    """
    w, h = size
    options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": "3",
               "preset": "fast", "crf": "20"}
    if open_gop:
        options["x264-params"] = "open-gop=1"
    tb = Fraction(1, 1000) if vfr else Fraction(1, fps)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps, options=options)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        v.codec_context.time_base = tb
        if audio:
            a = c.add_stream("aac", rate=48000)
            a.layout = "mono"
        pts = 0
        for i in range(frames):
            img = np.stack([(xx * 4 + i * 5) % 256, (yy * 5 + i * 3) % 256, (xx + yy + i * 7) % 256], -1)
            img = np.clip(img + rng.integers(-12, 12, img.shape), 0, 255).astype(np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = pts, tb
            pts += int(rng.integers(20, 60)) if vfr else 1
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        if audio:
            n = int(48000 * frames / fps)
            samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 48000)).astype(np.float32)[None]
            af = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            af.sample_rate, af.pts = 48000, 0
            for p in [*a.encode(af), *a.encode(None)]:
                c.mux(p)
    return Path(path)


def decoded(path):
    """(pts in seconds, RGB frames) of the first video stream, and the audio packets' bytes."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [(f.pts * v.time_base, f.to_ndarray(format="rgb24")) for f in c.decode(v)]
    with av.open(str(path)) as c:
        audio = [bytes(p) for p in c.demux(*c.streams.audio) if p.size] if c.streams.audio else []
    return [t for t, _ in frames], [f for _, f in frames], audio


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_plan_segments_start_on_keyframes_and_tile_the_clip(tmp_path, ext):
    clip = make_clip(tmp_path / f"c{ext}", frames=60, gop=10)
    segments = plan_segments(clip, 0.5)
    keys = set(keyframe_pts(clip))
    assert len(segments) >= 3
    assert segments[0].start is None and segments[-1].end is None
    for a, b in zip(segments, segments[1:]):
        assert a.end == b.start and b.start in keys and a.index + 1 == b.index
    assert plan_segments(clip, 2.0) == [Segment(0, None, None)]  # shorter than two segments


@pytest.mark.parametrize("ext,kw", [(".mp4", {}), (".mkv", {}),
                                    (".mp4", {"open_gop": True, "vfr": True}),
                                    (".mkv", {"open_gop": True, "vfr": True})])
def test_segment_frames_are_the_whole_clips_frames(tmp_path, ext, kw):
    clip = make_clip(tmp_path / f"c{ext}", frames=60, gop=12, audio=False, **kw)
    whole = list(iter_video_frames(clip))
    segments = plan_segments(clip, 0.4)
    assert len(segments) >= 3
    pieces = [f for s in segments for f in iter_segment_frames(clip, s)]
    assert [f.pts for f in pieces] == [f.pts for f in whole]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(pieces, whole))


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_joined_parts_equal_a_whole_encode(tmp_path, ext):
    """Encode each segment on its own and join: same count and timestamps as one encode, frames
    within codec tolerance, the source's audio packets byte for byte."""
    clip = make_clip(tmp_path / "src.mp4", frames=60, gop=10)
    info = probe_video(clip)
    whole = VideoWriter(tmp_path / f"whole{ext}", fps=info.fps, time_base=info.time_base,
                        copy_streams_from=clip)
    for f in iter_video_frames(clip):
        whole.write(f.image, f.pts, f.time_base)
    whole.close()
    parts = []
    for s in plan_segments(clip, 0.5):
        w = VideoWriter(tmp_path / f"part{s.index}{part_suffix(f'x{ext}')}", fps=info.fps,
                        time_base=info.time_base)
        for f in iter_segment_frames(clip, s):
            w.write(f.image, f.pts, f.time_base)
        parts.append(w.close())
    assert len(parts) >= 3
    n = join_segments(parts, tmp_path / f"joined{ext}", copy_streams_from=clip, expected_frames=60)
    assert n == 60
    t_whole, f_whole, a_whole = decoded(tmp_path / f"whole{ext}")
    t_join, f_join, a_join = decoded(tmp_path / f"joined{ext}")
    _, _, a_src = decoded(clip)
    assert len(t_join) == len(t_whole) == 60 and t_join == t_whole
    assert a_join == a_src and len(a_src) > 50
    diff = max(np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(f_join, f_whole))
    assert diff < 6, diff  # noisy 64x48 test pattern at CRF 18: both within the codec's error


def test_join_refuses_parts_that_do_not_fit(tmp_path):
    def part(name, size, start):
        w = VideoWriter(tmp_path / name, fps=25)
        for i in range(5):
            w.write(np.full((size[1], size[0], 3), 100, np.uint8), start + i, Fraction(1, 25))
        return w.close()

    a, b, c = part("a.mp4", (32, 32), 0), part("b.mp4", (48, 32), 5), part("c.mp4", (32, 32), 5)
    with pytest.raises(ValueError, match="other codec parameters"):
        join_segments([a, b], tmp_path / "out.mp4")
    with pytest.raises(ValueError, match="hold 10 frames, 12 were encoded"):
        join_segments([a, c], tmp_path / "out.mp4", expected_frames=12)
    with pytest.raises(ValueError, match="go back"):
        join_segments([c, a], tmp_path / "out.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4", "c.mp4"]
    assert join_segments([a, c], tmp_path / "out.mp4") == 10
