"""Keyframe split and lossless join of videos (frametrans.io.segments): pure PyAV, no Ray."""

from fractions import Fraction

import numpy as np
import pytest

from frametrans.io.video import VideoWriter, iter_video_frames, probe_video
from support import decoded, segment_clip as make_clip
from frametrans.io.segments import (
    Segment,
    iter_segment_frames,
    join_segments,
    keyframe_pts,
    part_suffix,
    plan_segments,
)




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
