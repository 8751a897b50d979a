"""Raw and y4m streams through `frametrans apply - -o -` (issue 20): y4m timing tags kept, headers
claiming absurd frames refused before any allocation, a closed stdout ending the run silently with
exit status 141. Inputs are generated here; the model is a tiny ResNet."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from frametrans.cli.main import cli
from support import tiny_resnet_file


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_resnet_file(tmp_path_factory.mktemp("model"))


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


FAST = ["--precision", "fp32", "--compile", "off", "--quiet"]


def y4m_stream(header: str, w: int = 16, h: int = 12, n: int = 3) -> bytes:
    """A C444 y4m stream with the given header tags after W/H."""
    rng = np.random.default_rng(0)
    frames = [b"FRAME\n" + rng.integers(16, 235, 3 * w * h, dtype=np.uint8).tobytes() for _ in range(n)]
    return f"YUV4MPEG2 W{w} H{h} {header} C444\n".encode() + b"".join(frames)


def header_of(data: bytes) -> list:
    return data.split(b"\n", 1)[0].decode().split()


# ------------------------------------------------------------------------- y4m timing (item 5)


@pytest.mark.parametrize("tags, kept", [
    ("F30:1 Ip A1:1", ["F30:1", "Ip", "A1:1"]),
    ("F30000:1001 It A10:11", ["F30000:1001", "It", "A10:11"]),
    ("F24:1 Ib A0:0", ["F24:1", "Ib", "A0:0"]),
])
def test_y4m_output_keeps_the_inputs_rate_aspect_and_interlacing(model_path, tags, kept):
    res = run("apply", "-", "-o", "-", "--y4m", "-m", model_path, *FAST, input=y4m_stream(tags))
    assert res.exit_code == 0, res.stderr
    header = header_of(res.stdout_bytes)
    for tag in kept:
        assert tag in header, header
    assert res.stdout_bytes.count(b"FRAME\n") == 3


def test_explicit_fps_overrides_the_y4m_rate_and_keeps_the_rest(model_path):
    res = run("apply", "-", "-o", "-", "--y4m", "--fps", "50", "-m", model_path, *FAST,
              input=y4m_stream("F30:1 It A1:1"))
    assert res.exit_code == 0, res.stderr
    header = header_of(res.stdout_bytes)
    assert "F50:1" in header and "It" in header and "A1:1" in header, header


@pytest.mark.parametrize("fps, tag", [(None, "F25:1"), ("30", "F30:1"), ("29.97", "F2997:100")])
def test_raw_input_takes_fps_default_25(model_path, fps, tag):
    w, h = 8, 6
    args = ["--fps", fps] if fps else []
    res = run("apply", "-", "--size", f"{w}x{h}", "-o", "-", "--y4m", *args, "-m", model_path, *FAST,
              input=bytes(w * h * 3 * 2))
    assert res.exit_code == 0, res.stderr
    header = header_of(res.stdout_bytes)
    assert tag in header and "Ip" in header and "A0:0" in header, header


def test_fps_without_a_stream_is_refused(tmp_path):
    res = run("apply", tmp_path / "a.png", "-o", tmp_path / "b.png", "--fps", "30",
              "-m", tmp_path / "nope.safetensors")
    assert res.exit_code == 2 and "--fps is for a raw stream" in res.output, res.output


# ------------------------------------------------------------- headers claiming huge frames (item 6)


def test_y4m_header_claiming_a_huge_frame_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.delenv("FRAMETRANS_MAX_IMAGE_PIXELS", raising=False)
    data = b"YUV4MPEG2 W20000 H20000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + b"\x80" * 100  # 149 bytes
    res = run("apply", "-", "-o", "-", "-m", tmp_path / "nope.safetensors", input=data)
    assert res.exit_code == 1, res.output
    assert "<stdin>: y4m header size 20000x20000: 400 megapixels per frame" in res.stderr
    assert "FRAMETRANS_MAX_IMAGE_PIXELS" in res.stderr and "MemoryError" not in res.stderr
    assert "nope.safetensors" not in res.stderr and res.stderr.count("\n") == 1
    assert res.stdout_bytes == b""


def test_raw_size_over_the_bound_is_a_bad_option(tmp_path, monkeypatch):
    monkeypatch.delenv("FRAMETRANS_MAX_IMAGE_PIXELS", raising=False)
    res = run("apply", "-", "--size", "20000x20000", "-o", "-", "-m", tmp_path / "nope.safetensors",
              input=b"\0" * 100)
    assert res.exit_code == 2, res.output
    assert "--size 20000x20000: 400 megapixels per frame" in res.output
    assert "nope.safetensors" not in res.output


def test_header_under_the_bound_with_little_data_is_a_short_stream(model_path, monkeypatch):
    # within the bound (100 MP), 100 bytes of data: reported as cut, without a 300 MB buffer
    monkeypatch.delenv("FRAMETRANS_MAX_IMAGE_PIXELS", raising=False)
    data = b"YUV4MPEG2 W10000 H10000 F25:1 C444\nFRAME\n" + b"\x80" * 100
    res = run("apply", "-", "-o", "-", "-m", model_path, *FAST, input=data)
    assert res.exit_code == 1
    assert "y4m stream ended inside frame 0: got 100 of 300000000 bytes" in res.stderr


# --------------------------------------------------------------------- stdout closed (item 14)


def test_stdout_closed_early_exits_141_silently(tmp_path, model_path):
    w, h, n = 64, 48, 40  # 368 KB of output: far more than a pipe buffer holds
    frames = tmp_path / "frames.rgb"
    frames.write_bytes(np.random.default_rng(0).integers(0, 255, n * w * h * 3, dtype=np.uint8).tobytes())
    cmd = [sys.executable, "-m", "frametrans.cli", "apply", "-", "-o", "-", "--size", f"{w}x{h}",
           "-m", str(model_path), *FAST]
    with open(frames, "rb") as stdin:
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        head = proc.stdout.read(1000)  # `| head -c 1000`
        proc.stdout.close()
        _, err = proc.communicate(timeout=300)
    assert len(head) == 1000
    assert proc.returncode == 141, err.decode()
    assert err.decode().strip() == "", err.decode()


def test_broken_pipe_is_141_for_the_cli_runner_too(model_path, monkeypatch):
    """The same path without a subprocess: a BrokenPipeError from the command becomes 141."""
    from frametrans.apply import stream

    def broken(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(stream.raw, "write_raw_frame", broken)
    res = run("apply", "-", "--size", "8x6", "-o", "-", "-m", model_path, *FAST, input=bytes(8 * 6 * 3))
    assert res.exit_code == 141, res.output
    assert "error" not in res.stderr and "Traceback" not in res.stderr
