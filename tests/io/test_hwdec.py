"""--hwdec: NVDEC where the machine has it, the software decoder's frames either way; nv12 (what
NVDEC hands back) becomes the software decoder's yuv420p exactly."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from frametrans.io import hwdec, video
from frametrans.io.planes import YUV420
from support import SAMPLE_CLIP as CLIP

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _frames(**kw):
    return list(video.iter_video_frames(CLIP, **kw))


def _same(a, b) -> bool:
    return (len(a) == len(b) and [f.pts for f in a] == [f.pts for f in b]
            and all(np.array_equal(x.image, y.image) for x, y in zip(a, b)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_hwdec_decodes_in_software_with_the_same_frames(caplog):
    caplog.set_level("INFO", logger="frametrans")
    hwdec._said.clear()
    assert hwdec.unavailable() is not None
    assert _same(_frames(hwdec=0), _frames())
    assert "NVDEC unavailable" in caplog.text and "decoding in software" in caplog.text


def test_nv12_frames_are_the_software_decoders_yuv420p():
    """NVDEC's nv12 frames are rearranged into yuv420p: the same RGB and the same planes as the
    software decoder's frame (swscale's own nv12 -> RGB would differ by up to 21 grey levels)."""
    with av.open(str(CLIP)) as c:
        frame = next(c.decode(video=0))
    nv12 = frame.reformat(format="nv12")
    nv12.pts, nv12.time_base = frame.pts, frame.time_base
    soft = video._to_frame(frame, 0, CLIP, None, 0)
    hard = video._to_frame(nv12, 0, CLIP, None, 0, hw=True)
    assert np.array_equal(hard.image, soft.image) and hard.pts == soft.pts
    direct = nv12.to_ndarray(format="rgb24")
    assert not np.array_equal(direct, soft.image)  # why the rearranging matters
    # an nv12 stream decoded in software keeps swscale's own conversion, as before --hwdec
    assert np.array_equal(video._to_frame(nv12, 0, CLIP, None, 0).image, direct)
    planes = video._to_frame(nv12, 0, CLIP, None, 0, planes=True, hw=True).image
    assert isinstance(planes, YUV420) and np.array_equal(planes.data, frame.to_ndarray())


def test_hwdec_option_is_checked_and_follows_the_device():
    from frametrans.apply import OutputOptions
    from frametrans.apply.video import hwdec_device
    from frametrans.bench.models import null_translator

    with pytest.raises(ValueError, match="--hwdec must be off, cuda or auto"):
        OutputOptions(hwdec="nvdec").validate()
    cpu = null_translator("cpu")
    assert hwdec_device(cpu, OutputOptions()) is None  # off by default
    assert hwdec_device(cpu, OutputOptions(hwdec="auto")) is None  # auto: only with the model on CUDA
    assert hwdec_device(cpu, OutputOptions(hwdec="cuda")) == 0


def test_cli_hwdec_runs_anywhere(tmp_path):
    from support.cli import run

    res = run("apply", CLIP, "-o", tmp_path / "out.mp4", "--model", "cyclegan", "--hwdec", "cuda",
              "--resize", "64x36", "-q")
    assert res.exit_code == 0, res.output
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.streams.video[0].frames == 75
    assert run("apply", CLIP, "-o", tmp_path / "x.mp4", "--hwdec", "gpu").exit_code == 2


@GPU
def test_nvdec_gives_the_software_decoders_frames(caplog):
    caplog.set_level("INFO", logger="frametrans")
    hwdec._said.clear()
    assert hwdec.unavailable() is None
    hard = _frames(hwdec=0)
    assert "decoding h264 with NVDEC" in caplog.text
    assert _same(hard, _frames())
    planes_hw, planes_sw = _frames(hwdec=0, planes=True), _frames(planes=True)
    assert all(np.array_equal(a.image.data, b.image.data) for a, b in zip(planes_hw, planes_sw))
