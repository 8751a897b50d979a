"""YUV planes converted on the device (RunnerOptions.yuv): the same pixels as the host's swscale
within one grey level, on real frames and every tag combination; the fallback when no conversion
matches; the runner and the whole video path with planes in and out (on the CPU: the same code as
on CUDA, where the GPU-marked test runs it)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from frametrans.engine import yuv
from frametrans.engine.pinned import PinnedBuffers
from frametrans.engine.runner import Runner, RunnerOptions
from frametrans.io import video
from frametrans.io.planes import YUV420
from support import SAMPLE_CLIP as CLIP, tiny_model

CPU = torch.device("cpu")
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _decoded(path: Path, n: int = 6, step: int = 12):
    """Every ``step``-th decoded av.VideoFrame of ``path``, ``n`` of them."""
    with av.open(str(path)) as c:
        return [f for i, f in enumerate(c.decode(video=0)) if i % step == 0][:n]


def _tagged_clip(tmp_path: Path, colorspace: int, color_range: int, pix_fmt: str = "yuv420p") -> Path:
    """A few frames of the sample clip re-encoded (lossless) with these tags."""
    out = tmp_path / f"tagged-{colorspace}-{color_range}-{pix_fmt}.mkv"
    with av.open(str(out), "w") as c:
        s = c.add_stream("libx264", rate=25, options={"qp": "0"})
        s.width, s.height, s.pix_fmt = 640, 360, pix_fmt
        s.codec_context.colorspace, s.codec_context.color_range = colorspace, color_range
        for f in _decoded(CLIP, 4):
            g = f.reformat(format=pix_fmt)
            g.colorspace, g.color_range, g.pts = colorspace, color_range, None
            c.mux(s.encode(g))
        c.mux(s.encode(None))
    return out


def _max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).max())


# -- the conversions against swscale -----------------------------------------------------------


@pytest.mark.parametrize("tags", [None, (1, 1, "yuv420p"), (5, 2, "yuvj420p"), (1, 2, "yuvj420p")],
                         ids=["untagged", "bt709", "bt601-full", "bt709-full"])
def test_decode_on_the_device_is_swscale_within_one_grey_level(tags, tmp_path):
    path = CLIP if tags is None else _tagged_clip(tmp_path, *tags)
    frames = _decoded(path)
    planes = [YUV420.from_av(f) for f in frames]
    assert all(p is not None for p in planes)
    if tags is not None:
        assert planes[0].key() == tags  # the tags survived the round trip: each case is its own
    host = np.stack([f.to_ndarray(format="rgb24") for f in frames])
    dev = yuv.upload(planes, CPU, PinnedBuffers()).permute(0, 2, 3, 1).numpy()
    assert dev.shape == host.shape and dev.dtype == np.uint8
    assert _max_diff(dev, host) <= 1
    assert np.mean(dev == host) > 0.5  # mostly exact: the offsets are swscale's own
    assert _max_diff([p.rgb() for p in planes], host) == 0  # the host fallback is the host path


def test_encode_on_the_device_is_swscale_within_one_grey_level():
    c = yuv.encode_conversion()
    assert c is not None
    for f in _decoded(CLIP):
        rgb = f.to_ndarray(format="rgb24")
        host = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()
        dev = yuv.rgb_to_planes(torch.from_numpy(rgb).permute(2, 0, 1)[None].float(), c)[0].numpy()
        assert dev.shape == host.shape
        assert _max_diff(dev, host) <= 1


def test_chroma_rows_are_filtered_1_3_3_1():
    """A single bright chroma row spreads over the two output rows it touches, 3/8 and 1/8."""
    p = torch.zeros(1, 8, 2)
    p[0, 3] = 8.0
    out = yuv._pair_rows_1331(p)[0, :, 0].tolist()
    assert out == [0.0, 3.0, 1.0, 0.0]  # rows 1-4 -> 3/8 from row 3 at output 1; 1/8 at output 2


def test_odd_height_quarter_rows_are_split_exactly():
    """270 rows: a chroma plane is 67.5 rows of the I420 array; the planes are cut from the flat data."""
    rgb = np.random.default_rng(3).integers(0, 256, (270, 480, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    planes = YUV420.from_av(frame)
    assert planes is not None and planes.shape == (270, 480, 3)
    dev = yuv.upload([planes], CPU, PinnedBuffers())[0].permute(1, 2, 0).numpy()
    assert _max_diff(dev, frame.to_ndarray(format="rgb24")) <= 1


def test_no_matching_conversion_falls_back_to_the_host(monkeypatch, caplog):
    """An FFmpeg whose conversion no candidate matches (here: 3 grey levels brighter, plus noise):
    the calibration refuses, and the frames are converted on the host, exactly as the RGB path."""
    frames = _decoded(CLIP, 2)
    planes = [YUV420.from_av(f) for f in frames]
    real = YUV420.rgb
    noise = np.random.default_rng(0)

    def other_ffmpeg(self):
        out = real(self).astype(int) + 3 + noise.integers(-2, 3, (self.height, self.width, 3))
        return np.clip(out, 0, 255).astype(np.uint8)

    monkeypatch.setattr(YUV420, "rgb", other_ffmpeg)
    yuv.decode_conversion.cache_clear()
    try:
        caplog.set_level("INFO", logger="frametrans")
        assert yuv.decode_conversion(*planes[0].key()) is None
        assert "converting on the host" in caplog.text
        monkeypatch.setattr(YUV420, "rgb", lambda self: real(self))
        out = yuv.upload(planes, CPU, PinnedBuffers()).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(out, np.stack([f.to_ndarray(format="rgb24") for f in frames]))
    finally:
        yuv.decode_conversion.cache_clear()


def test_planes_only_for_420_even_frames():
    rgb = np.zeros((8, 10, 3), np.uint8)
    assert YUV420.from_av(av.VideoFrame.from_ndarray(rgb, format="rgb24")) is None  # not YUV
    odd = av.VideoFrame.from_ndarray(np.zeros((9, 10, 3), np.uint8), format="rgb24").reformat(format="yuv420p")
    assert YUV420.from_av(odd) is None
    with pytest.raises(ValueError, match="even H and W"):
        YUV420(np.zeros((12, 9), np.uint8))


# -- the runner --------------------------------------------------------------------------------


def _null_runner(**kw) -> Runner:
    from frametrans.bench.models import NullModel

    return Runner(NullModel(), RunnerOptions(device="cpu", precision="fp32", compile="off", backend="torch", **kw))


def test_runner_takes_planes_and_hands_back_the_encoders_planes():
    frames = _decoded(CLIP, 4)
    planes = [YUV420.from_av(f) for f in frames]
    host_rgb = [f.to_ndarray(format="rgb24") for f in frames]
    r = _null_runner(yuv="on", batch_size=2)
    assert r.wants_planes and not _null_runner(yuv="off").wants_planes
    assert not _null_runner(yuv="auto").wants_planes  # auto: CUDA only
    outs = r(planes)
    assert all(isinstance(o, YUV420) and o.key() == (6, 1, "yuv420p") for o in outs)
    for out, rgb in zip(outs, host_rgb):  # the RGB path: host RGB -> identity -> swscale
        host = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()
        assert _max_diff(out.data, host) <= 2  # one level on the way in, one on the way out
    # the model's input is the host path's within one grey level
    x = r._model_tensor(planes, 255.0)[0].permute(0, 2, 3, 1).numpy() * 255
    assert _max_diff(np.round(x), np.stack(host_rgb)) <= 1


def test_runner_batches_do_not_mix_planes_and_rgb():
    frames = _decoded(CLIP, 2)
    mixed = [video._to_frame(frames[0], 0, CLIP, None, 0, planes=True),
             video._to_frame(frames[1], 1, CLIP, None, 0, planes=False)]
    assert isinstance(mixed[0].image, YUV420) and isinstance(mixed[1].image, np.ndarray)
    outs = [o for _, o in _null_runner(yuv="on", batch_size=4).run(mixed)]
    assert isinstance(outs[0], YUV420) and isinstance(outs[1], np.ndarray)


def test_a_gray_or_other_size_output_goes_back_as_rgb():
    planes = [YUV420.from_av(_decoded(CLIP, 1)[0])]
    gray = Runner(tiny_model("resnet", out_channels=1), RunnerOptions(device="cpu", precision="fp32", compile="off",
                                                                  backend="torch", yuv="on"))
    out = gray(planes)[0]
    assert isinstance(out, np.ndarray) and out.shape == (360, 640, 1)


def test_yuv_option_is_checked():
    with pytest.raises(ValueError, match="yuv must be one of auto, on, off"):
        RunnerOptions(yuv="maybe").validate()


# -- the video path ----------------------------------------------------------------------------


def _frames_and_planes(path: Path):
    with av.open(str(path)) as c:
        return [(f.pts, f.to_ndarray()) for f in c.decode(video=0)]


@pytest.mark.parametrize("segmented", [False, True], ids=["one-piece", "segments"])
def test_apply_video_with_planes_equals_the_rgb_path(tmp_path, segmented, monkeypatch):
    """The null model over the sample clip, lossless H.264: planes on the device vs RGB on the host
    give the same frames, timestamps and count, each plane within two grey levels (one in, one out)."""
    from frametrans.apply import OutputOptions, apply_paths
    from frametrans.bench.models import null_translator

    uploaded: list = []
    handed_back: list = []
    real_upload, real_output = yuv.upload, yuv.output_planes
    monkeypatch.setattr(yuv, "upload", lambda images, *a: (uploaded.append(len(images)), real_upload(images, *a))[1])

    def output_planes(images, y):
        planes = real_output(images, y)
        handed_back.append(0 if planes is None else len(planes))
        return planes

    monkeypatch.setattr(yuv, "output_planes", output_planes)
    outs = {}
    for mode in ("on", "off"):
        opts = OutputOptions(crf=0, quiet=True, segment_seconds=1.0 if segmented else 0.0, audio=False)
        dst = tmp_path / f"{mode}.mp4"
        apply_paths([str(CLIP)], str(dst), null_translator("cpu", batch_size=4, yuv=mode), opts)
        outs[mode] = _frames_and_planes(dst)
    on, off = outs["on"], outs["off"]
    assert sum(uploaded) == 75 and sum(handed_back) == 75  # as planes both ways with "on", not with "off"
    assert len(on) == len(off) == 75
    assert [p for p, _ in on] == [p for p, _ in off]
    assert max(_max_diff(a, b) for (_, a), (_, b) in zip(on, off)) <= 2
    assert np.mean([np.mean(a == b) for (_, a), (_, b) in zip(on, off)]) > 0.5


def test_planes_only_where_nothing_needs_rgb():
    from frametrans.apply import OutputOptions
    from frametrans.apply.video import planes_wanted
    from frametrans.bench.models import null_translator

    on, mp4 = null_translator("cpu", yuv="on"), [Path("out.mp4")]
    assert planes_wanted(on, OutputOptions(), mp4)
    assert planes_wanted(on, OutputOptions(temporal="stats"), mp4)  # inside the forward: planes are fine
    assert not planes_wanted(on, OutputOptions(temporal="flow"), mp4)  # blends RGB on the host
    assert not planes_wanted(on, OutputOptions(max_side=320), mp4)
    assert not planes_wanted(null_translator("cpu", yuv="off"), OutputOptions(), mp4)
    # outputs that are not 8-bit 4:2:0 would lose chroma through planes
    assert not planes_wanted(on, OutputOptions(), [Path("out.gif")])
    assert not planes_wanted(on, OutputOptions(pix_fmt="yuv444p"), mp4)
    assert not planes_wanted(on, OutputOptions(), [Path("out.mp4"), Path("out_b.gif")])
    assert planes_wanted(on, OutputOptions(codec="libx264", pix_fmt="yuv420p"), [Path("out.mkv")])


def test_writer_takes_planes_or_converts_them(tmp_path):
    """A yuv420p stream encodes the planes as they are (lossless: the same planes come back); a
    stream in another format gets them as the RGB path would (the same file as writing RGB)."""
    frames = _decoded(CLIP, 3)
    planes = [YUV420.from_av(f) for f in frames]

    def write(name, images, pix_fmt):
        with video.VideoWriter(tmp_path / name, fps=25, crf=0, pix_fmt=pix_fmt) as w:
            for im in images:
                w.write(im)
        return [f.to_ndarray() for f in _decoded(tmp_path / name, 3, 1)]

    assert all(np.array_equal(a, p.data) for a, p in zip(write("a.mkv", planes, "yuv420p"), planes))
    converted = write("b.mkv", planes, "yuv444p")
    assert all(np.array_equal(a, b) for a, b in zip(converted, write("c.mkv", [p.rgb() for p in planes], "yuv444p")))
    # planes tagged otherwise than the stream (BT.709 here) are converted, not relabelled
    bt709 = [YUV420(p.data, 1, 1) for p in planes]
    got = write("d.mkv", bt709, "yuv420p")
    assert not np.array_equal(got[0], planes[0].data)
    assert all(np.array_equal(a, b) for a, b in zip(got, write("e.mkv", [p.rgb() for p in bt709], "yuv420p")))


@GPU
def test_cuda_planes_match_the_host_path():
    frames = _decoded(CLIP)
    planes = [YUV420.from_av(f) for f in frames]
    host = np.stack([f.to_ndarray(format="rgb24") for f in frames])
    dev = yuv.upload(planes, torch.device("cuda"), PinnedBuffers())
    assert dev.is_cuda
    assert _max_diff(dev.permute(0, 2, 3, 1).cpu().numpy(), host) <= 1
    c = yuv.encode_conversion()
    for f, rgb in zip(frames, host):
        want = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().cuda()
        assert _max_diff(yuv.rgb_to_planes(x, c)[0].cpu().numpy(), want) <= 1
    r = Runner(tiny_model("resnet"), RunnerOptions(device="cuda", precision="fp32", compile="off", batch_size=2))
    assert r.wants_planes  # auto: on CUDA
    one_by_one = [r([p])[0] for p in planes]
    assert all(isinstance(o, YUV420) for o in one_by_one)
    # batches in flight through the shared pinned buffers: the same outputs, in order
    streamed = [o for _, o in r.run(video._to_frame(f, i, CLIP, None, 0, planes=True) for i, f in enumerate(frames))]
    assert len(streamed) == len(planes)
    assert all(_max_diff(a.data, b.data) <= 1 for a, b in zip(streamed, one_by_one))


@pytest.mark.parametrize("width,height", [(64, 32), (34, 18), (1920, 1080)])
def test_planes_to_av_frame_equals_from_ndarray(width, height):
    """YUV420.to_av (one copy per plane where rows are not padded) gives from_ndarray's frame and
    the tags, also for widths whose rows PyAV pads and for non-contiguous planes."""
    data = np.random.default_rng(width).integers(0, 256, (height * 3 // 2, width), dtype=np.uint8)
    for planes in (YUV420(data, 1, 1), YUV420(np.asfortranarray(data), 5, 2, "yuvj420p")):
        frame = planes.to_av()
        expected = av.VideoFrame.from_ndarray(np.ascontiguousarray(data), format=planes.pix_fmt)
        assert (frame.width, frame.height, frame.format.name) == (width, height, planes.pix_fmt)
        assert (int(frame.colorspace), int(frame.color_range)) == (planes.colorspace, planes.color_range)
        np.testing.assert_array_equal(frame.to_ndarray(), expected.to_ndarray())
