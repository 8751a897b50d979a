"""Encoders: probed before any work, --codec auto, hardware encoders that cannot open here."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import pytest

from frametrans.apply import encoders
from frametrans.apply.jobs import OptionError, OutputOptions
from support.cli import run
from support.media import make_clip
from support import tiny_resnet_file


@pytest.fixture(autouse=True)
def fresh_auto_cache():
    encoders._auto_h264.cache_clear()
    yield
    encoders._auto_h264.cache_clear()


def test_auto_takes_nvenc_when_it_opens_and_only_for_h264_containers(monkeypatch):
    real = encoders.open_failure
    monkeypatch.setattr(encoders, "open_failure",
                        lambda info, *a: None if info.name == "h264_nvenc" else real(info, *a))
    opts = OutputOptions(codec="auto")
    opts.validate()
    assert opts.codec_for(Path("a.mp4")) == "h264_nvenc" and opts.codec_for(Path("a.mkv")) == "h264_nvenc"
    assert opts.codec_for(Path("a.webm")) is None and opts.codec_for(Path("a.gif")) is None
    assert not opts.segmented(Path("a.mp4"))  # an NVENC output is written in one piece
    assert OutputOptions(codec="libx265").codec_for(Path("a.mp4")) == "libx265"


def test_auto_falls_back_to_libx264_and_says_why(monkeypatch, caplog):
    monkeypatch.setattr(encoders, "open_failure", lambda info, *a: "Operation not permitted")
    monkeypatch.setattr(encoders, "gpu_description", lambda: "GPU: NVIDIA H200")
    with caplog.at_level(logging.INFO, logger="frametrans"):
        assert OutputOptions(codec="auto").codec_for(Path("a.mp4")) is None
    assert "--codec auto: libx264 (h264_nvenc does not open here: Operation not permitted; GPU: " \
           "NVIDIA H200)" in caplog.text


def test_auto_through_the_cli_writes_a_video(tmp_path):
    clip = tmp_path / "clip.mp4"
    make_clip(clip, n=4)
    model = tiny_resnet_file(tmp_path)
    res = run("apply", clip, "-o", tmp_path / "out.mp4", "-m", model, "--codec", "auto",
              "--precision", "fp32", "--backend", "torch")
    assert res.exit_code == 0, res.output
    assert "--codec auto: " in res.output
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264" and c.streams.video[0].frames == 4


def test_a_hardware_encoder_that_cannot_open_names_the_gpu(monkeypatch):
    monkeypatch.setattr(encoders, "open_failure", lambda info, *a: "Operation not permitted")
    monkeypatch.setattr(encoders, "gpu_description", lambda: "GPU: NVIDIA H200")
    with pytest.raises(OptionError) as info:
        OutputOptions(codec="h264_nvenc").validate()
    msg = str(info.value)
    assert msg.startswith("--codec h264_nvenc: the encoder cannot be opened here (Operation not "
                          "permitted; GPU: NVIDIA H200)")
    assert "libx264" in msg and "--codec auto" in msg and info.value.param_hint == "--codec"


def test_gpu_description_reads_the_driver(monkeypatch, tmp_path):
    info = tmp_path / "information"
    info.write_text("Model: \t\t NVIDIA H200\nIRQ:   16\n")
    monkeypatch.setattr(encoders.glob, "glob", lambda pattern: [str(info)])
    assert encoders.gpu_description() == "GPU: NVIDIA H200"
    monkeypatch.setattr(encoders.glob, "glob", lambda pattern: [])
    assert encoders.gpu_description() == "no NVIDIA GPU found"
