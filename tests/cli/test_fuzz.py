"""Property tests (hypothesis) over what users and files can throw at `apply`: raw stream lengths
and read patterns, y4m headers, damaged image headers, and option values.

The properties: whole frames come out and a cut last frame is reported (never padded); a broken
file is an InputError naming it, never another exception; an option value either works or is
refused before any work (exit 2) or reported as a failed input (exit 1), never a traceback.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from frametrans.apply import Translator, apply_stream
from frametrans.checkpoint import save_model
from frametrans.cli.main import cli
from frametrans.engine.runner import RunnerOptions
from frametrans.io import raw
from frametrans.io.errors import InputError, TruncatedInputError
from frametrans.io.images import read_image
from frametrans.models.resnet import ResnetConfig, ResnetGenerator
from support.media import _exif_jpeg, _gif, _png16, _tiff, _webp, jpeg_bytes, picture, png_bytes

# FRAMETRANS_FUZZ_EXAMPLES=2000 explores further (random seeds); by default a fixed, quick sample.
_EXPLORE = int(os.environ.get("FRAMETRANS_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_EXPLORE or 40, deadline=None, derandomize=not _EXPLORE,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class ChunkedReader(io.RawIOBase):
    """A pipe-like stream: reads return at most the next chunk size (cycling), like a real pipe."""

    def __init__(self, data: bytes, chunks):
        self.data, self.pos, self.chunks, self.i = data, 0, list(chunks) or [len(data) or 1], 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.chunks[self.i % len(self.chunks)], len(self.data) - self.pos)
        self.i += 1
        buffer[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


# ---------------------------------------------------------------------------------------------
# raw streams: any length, any read pattern


@FUZZ
@given(w=st.integers(1, 9), h=st.integers(1, 7), length=st.integers(0, 700),
       chunks=st.lists(st.integers(1, 97), max_size=5))
def test_raw_reader_yields_whole_frames_and_reports_a_cut(w, h, length, chunks):
    frame_bytes = w * h * 3
    data = bytes(np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8))
    got = []
    try:
        for f in raw.iter_raw_frames(ChunkedReader(data, chunks), w, h):
            got.append(f.image.tobytes())
        assert length % frame_bytes == 0, "a cut last frame must be reported"
    except TruncatedInputError as exc:
        assert length % frame_bytes != 0
        assert f"got {length % frame_bytes} of {frame_bytes} bytes" in str(exc)
        assert exc.frames_read == length // frame_bytes
    assert len(got) == length // frame_bytes
    assert b"".join(got) == data[: len(got) * frame_bytes], "frames must be the bytes, in order"


@pytest.fixture(scope="module")
def translator():
    torch.manual_seed(0)
    model = ResnetGenerator(ResnetConfig(ngf=4, n_blocks=1))
    return Translator(model, RunnerOptions(device="cpu", precision="fp32", compile="off"))


@FUZZ
@given(w=st.integers(1, 12), h=st.integers(1, 12), whole=st.integers(0, 4), extra=st.integers(0, 40))
@example(w=4, h=4, whole=0, extra=0)
@example(w=5, h=3, whole=2, extra=1)
def test_apply_stream_output_matches_whole_input_frames(translator, w, h, whole, extra):
    frame_bytes = w * h * 3
    extra = extra % frame_bytes
    data = bytes(np.random.default_rng(whole).integers(0, 256, whole * frame_bytes + extra, dtype=np.uint8))
    out = io.BytesIO()
    try:
        n = apply_stream(io.BufferedReader(io.BytesIO(data)), out, translator, (w, h), quiet=True)
        assert extra == 0 and whole > 0 and n == whole
    except InputError as exc:
        assert extra or whole == 0
        assert ("stream ended inside frame" in str(exc)) if extra else ("stream is empty" in str(exc))
    assert len(out.getvalue()) == whole * frame_bytes, "whole frames out, nothing padded"


# ---------------------------------------------------------------------------------------------
# y4m headers


_fields = st.one_of(
    st.builds(lambda v: f"W{v}", st.integers(-3, 40)),
    st.builds(lambda v: f"H{v}", st.integers(-3, 40)),
    st.builds(lambda a, b: f"F{a}:{b}", st.integers(0, 60), st.integers(0, 2)),
    st.sampled_from(["C420jpeg", "C444", "C422", "Cmono", "C420p10", "C411", "Ip", "A1:1", "XYSCSS=420JPEG",
                     "XCOLORRANGE=FULL", "F", "A", "W", "Cfoo", "Wx", "F1:", "A:"]),
    st.text(alphabet="WHFACIX0123456789:=x-", max_size=6),
)


@FUZZ
@given(magic=st.sampled_from(["YUV4MPEG2", "YUV4MPEG", "yuv4mpeg2", ""]),
       fields=st.lists(_fields, max_size=7), body=st.binary(max_size=400))
@example(magic="YUV4MPEG2", fields=["W4", "H2", "C444"], body=b"FRAME\n" + b"\x80" * 24)
def test_y4m_reader_takes_any_header(magic, fields, body):
    data = (" ".join([magic, *fields]) + "\n").encode() + body
    try:
        for f in raw.iter_y4m_frames(io.BytesIO(data)):
            assert f.image.dtype == np.uint8 and f.image.ndim == 3 and f.image.shape[2] in (1, 3)
    except InputError as exc:
        assert str(exc).startswith("<stdin>: ") and "\n" not in str(exc)


# ---------------------------------------------------------------------------------------------
# damaged image files


def _seeds():
    pic = picture(24, 20)
    return {
        "png": png_bytes(pic),
        "png16": _png16(np.linspace(0, 65535, 12 * 10 * 3).astype(np.uint16).reshape(12, 10, 3)),
        "gray": png_bytes(pic[..., 0], "L"),
        "rgba": png_bytes(np.dstack([pic, pic[..., 0]]), "RGBA"),
        "jpeg": jpeg_bytes(pic),
        "exif": _exif_jpeg(pic, 6),
        "gif": _gif([pic, picture(24, 20, 1)]),
        "webp": _webp([pic, picture(24, 20, 1)]),
        "tiff": _tiff(pic, "RGB"),
        "bmp": _bmp(pic),
    }


def _bmp(pic) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pic).save(buf, format="BMP")
    return buf.getvalue()


SEEDS = _seeds()


@FUZZ
@given(kind=st.sampled_from(sorted(SEEDS)), flips=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)),
                                                            max_size=6),
       cut_at=st.one_of(st.none(), st.integers(0, 2000)), ext=st.sampled_from([".png", ".jpg", ".gif", ".tif"]))
def test_damaged_image_is_a_frame_or_an_input_error(tmp_path_factory, monkeypatch, kind, flips, cut_at, ext):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4_000_000)  # bombs are refused early, and fast
    data = bytearray(SEEDS[kind])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    if cut_at is not None:
        data = data[:cut_at]
    path = tmp_path_factory.mktemp("fuzz") / f"x{ext}"
    path.write_bytes(bytes(data))
    try:
        frame = read_image(path)
    except InputError as exc:
        text = str(exc)
        assert text.startswith(f"{path}: ") and "\n" not in text
        return
    assert frame.image.ndim == 3 and frame.image.shape[2] in (1, 3)
    assert frame.image.dtype in (np.uint8, np.uint16)
    assert frame.alpha is None or frame.alpha.shape == frame.image.shape[:2]


# ---------------------------------------------------------------------------------------------
# option values


@pytest.fixture(scope="module")
def fuzz_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("opts")
    torch.manual_seed(0)
    model = save_model(ResnetGenerator(ResnetConfig(ngf=4, n_blocks=1)), d / "m.safetensors")
    Image.fromarray(picture(20, 28)).save(d / "in.png")
    return d, model


_int_text = st.one_of(st.integers(-3, 300).map(str), st.sampled_from(["", "x", "1.5", "1e3", "-0", " 4"]))
_options = st.fixed_dictionaries({}, optional={
    "--batch-size": _int_text,
    "--tile": _int_text,
    "--tile-overlap": _int_text,
    "--max-memory": st.sampled_from(["1", "100", "64K", "2M", "1G", "0", "-5M", "lots", "1.5G", "7T", ""]),
    "--max-side": _int_text,
    "--resize": st.sampled_from(["16x16", "1x1", "0x4", "3x", "x", "65537x2", "9x9", "20x28"]),
    "--device": st.sampled_from(["cpu", "auto", "cuda", "cuda:1", "mps", "tpu", "meta", "", "CPU"]),
    "--precision": st.sampled_from(["auto", "fp32", "bf16", "fp16", "int8"]),
    "--crf": _int_text,
    "--ext": st.sampled_from(["png", "jpg", ".webp", "PNG", "gif", "exe", ""]),
})


@FUZZ
@given(options=_options)
def test_any_option_values_work_or_are_refused_in_one_line(fuzz_files, options):
    d, model = fuzz_files
    out = d / "out"
    args = ["apply", str(d / "in.png"), "-o", f"{out}/", "-m", str(model), "--overwrite", "--compile", "off"]
    for flag, value in options.items():
        args += [flag, value]
    res = CliRunner().invoke(cli, args)
    assert "Traceback" not in res.output
    assert res.exit_code in (0, 1, 2), (res.exit_code, res.output, res.exception)
    if res.exit_code == 2:
        assert "Error:" in res.output
    elif res.exit_code == 1:
        assert "error" in res.output.lower() or "failed" in res.output
    else:
        written = [p for p in out.iterdir() if p.stem == "in"]
        assert written, res.output
        image = read_image(written[0]).image
        if "--resize" in options:
            w, h = (int(v) for v in options["--resize"].split("x"))
            assert image.shape[:2] == (h, w)
        for p in written:
            p.unlink()
