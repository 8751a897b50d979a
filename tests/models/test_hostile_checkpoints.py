"""Hostile checkpoint files (issue 20, items 7-9): refused in one line before anything large is
inflated, read or allocated. Every file is generated here, in tmp_path."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from frametrans import checkpoint
from frametrans.checkpoint import CheckpointError, load_model, read_info
from frametrans.models.resnet import ResnetConfig, ResnetGenerator

MB = 1 << 20


def _one_line(exc: pytest.ExceptionInfo, path: Path, *parts: str) -> str:
    """The message names the file, is one short line, and holds every part."""
    message = str(exc.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message and len(message) < 400, message[:1000]
    for part in parts:
        assert part in message, message
    return message


# ---------------------------------------------------------------------------------------------
# item 7: .pth zips whose records inflate far beyond the file


def _torch_zip(path: Path, state: dict, inflate: dict[str, int] | None = None) -> Path:
    """torch.save(state), rewritten with deflated records; records named in ``inflate``
    (e.g. "data/0") are replaced by that many zero bytes, streamed (a few KB per 10 MB)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    inflate = inflate or {}
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for name in src.namelist():
            inner = name.split("/", 1)[1]
            if inner in inflate:
                with out.open(name, "w", force_zip64=True) as w:
                    chunk = bytes(MB)
                    for _ in range(inflate[inner] // MB):
                        w.write(chunk)
            else:
                out.writestr(name, src.read(name))
    return path


def _upstream_resnet_state() -> dict:
    torch.manual_seed(0)
    return ResnetGenerator(ResnetConfig(ngf=4, n_blocks=1)).state_dict()


@pytest.fixture()
def no_tensor_records_read(monkeypatch):
    """torch.load may only run with map_location="meta" (reads data.pkl, no tensor record)."""
    real = torch.load

    def spy(*args, **kwargs):
        assert kwargs.get("map_location") == "meta", "torch.load inflated the tensor records"
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)


def _load_in_child(path) -> tuple:
    """``load_model(path)`` in a fresh process: (its one-line refusal, peak memory growth in MB)."""
    script = textwrap.dedent(f"""
        import resource
        from frametrans.checkpoint import CheckpointError, load_model
        import torch
        torch.zeros(1)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            load_model({str(path)!r})
        except CheckpointError as exc:
            print(exc)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    message, growth_mb = res.stdout.strip().splitlines()
    return message, growth_mb


def test_zip_bomb_refused_before_inflating_measured(tmp_path):
    """A 256 MiB record (about 250 KB on disk) under an unknown layout: refused, and the
    process's peak memory grows by far less than the record (it grew by the record before)."""
    bomb = _torch_zip(tmp_path / "bomb.pth", {"foo": torch.zeros(4)}, {"data/0": 256 * MB})
    assert bomb.stat().st_size < 2 * MB
    message, growth_mb = _load_in_child(bomb)
    assert message.startswith(str(bomb)) and "unknown checkpoint layout" in message, message
    assert int(growth_mb) < 64, f"peak memory grew by {growth_mb} MB for a refused file"


def test_unknown_layout_refused_before_tensor_records(tmp_path, no_tensor_records_read):
    bomb = _torch_zip(tmp_path / "bomb.pth", {"foo": torch.zeros(4)}, {"data/0": 8 * MB})
    with pytest.raises(CheckpointError) as exc:
        load_model(bomb)
    _one_line(exc, bomb, "unknown checkpoint layout", "expected a pytorch-CycleGAN-and-pix2pix")


def test_known_layout_with_oversized_tensor_record_refused(tmp_path, no_tensor_records_read):
    """Keys and shapes of a real upstream ResNet, but one record inflates to 16 MiB: more than
    that model can need (it has ~10k parameters)."""
    bomb = _torch_zip(tmp_path / "latest_net_G.pth", _upstream_resnet_state(), {"data/0": 16 * MB})
    with pytest.raises(CheckpointError) as exc:
        load_model(bomb)
    _one_line(exc, bomb, "tensor records inflate to 16.8 MB", "resnet model", "needs at most")
    with pytest.raises(CheckpointError, match="needs at most"):
        read_info(bomb)


@pytest.mark.parametrize("record, size, limit", [
    ("data.pkl", 40 * MB, "32.0 MB"),
    ("byteorder", 1 * MB, "64.0 KB"),
    (".data/serialization_id", 1 * MB, "64.0 KB"),
])
def test_oversized_pickle_and_small_records_refused(tmp_path, no_tensor_records_read, record, size, limit):
    bomb = _torch_zip(tmp_path / "b.pth", _upstream_resnet_state(), {record: size})
    with pytest.raises(CheckpointError) as exc:
        load_model(bomb)
    _one_line(exc, bomb, f"/{record}' inflates to", f"expected at most {limit}")


def test_total_tensor_bytes_bounded_by_the_parameter_limit(tmp_path, monkeypatch, no_tensor_records_read):
    monkeypatch.setattr(checkpoint, "MAX_STORAGE_BYTES", 2 * MB)
    bomb = _torch_zip(tmp_path / "b.pth", {"foo": torch.zeros(4)}, {"data/0": 3 * MB})
    with pytest.raises(CheckpointError) as exc:
        load_model(bomb)
    _one_line(exc, bomb, "tensor records inflate to 3.1 MB", "expected at most 2.1 MB")


def test_zip_without_data_pkl_is_refused(tmp_path, no_tensor_records_read):
    path = tmp_path / "x.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/other.pkl", b"x")
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    _one_line(exc, path, "0 data.pkl records", "archive/data.pkl")


def test_legacy_pickle_bounded_by_file_size(tmp_path, monkeypatch):
    path = tmp_path / "old_net_G.pth"
    torch.save(_upstream_resnet_state(), path, _use_new_zipfile_serialization=False)
    assert load_model(path) is not None  # legacy files still load
    monkeypatch.setattr(checkpoint, "MAX_STORAGE_BYTES", 1000)
    monkeypatch.setattr(checkpoint, "MAX_PICKLE_BYTES", 1000)
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    _one_line(exc, path, "legacy (non-zip) PyTorch file", "expected at most 2.0 KB")


def test_deflated_but_honest_upstream_file_still_loads(tmp_path):
    state = _upstream_resnet_state()
    model = load_model(_torch_zip(tmp_path / "latest_net_G.pth", state))
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


# ---------------------------------------------------------------------------------------------
# items 8 and 9: safetensors headers


def _safetensors(path: Path, header: dict | bytes, data: bytes = b"") -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _meta(config: str) -> dict:
    return {"frametrans_format": "1", "architecture": "resnet", "config": config, "provenance": "{}"}


def _tensor(shape=(1,), begin=0):
    n = 4
    for s in shape:
        n *= s
    return {"dtype": "F32", "shape": list(shape), "data_offsets": [begin, begin + n]}


def test_many_unknown_config_fields_listed_a_few_at_a_time(tmp_path):
    fields = {f"f{i:05d}": 1 for i in range(1000)}
    path = _safetensors(tmp_path / "u.safetensors",
                        {"__metadata__": _meta(json.dumps(fields)), "w": _tensor()}, bytes(4))
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    _one_line(exc, path, "unknown config field(s) for resnet: 'f00000', 'f00001'",
              "and 995 more", "expected some of: in_channels, out_channels, ngf")


def test_huge_config_refused_by_size(tmp_path):
    fields = {f"field{i:07d}": 1 for i in range(20_000)}  # 380 KB of JSON
    path = _safetensors(tmp_path / "c.safetensors",
                        {"__metadata__": _meta(json.dumps(fields)), "w": _tensor()}, bytes(4))
    for call in (load_model, read_info):
        with pytest.raises(CheckpointError) as exc:
            call(path)
        _one_line(exc, path, "bad metadata: config is 380.0 KB of JSON", "expected at most 64.0 KB")


def test_metadata_of_a_foreign_safetensors_file_listed_a_few_keys(tmp_path):
    meta = {f"k{i}": "v" for i in range(5000)}
    path = _safetensors(tmp_path / "f.safetensors", {"__metadata__": meta, "w": _tensor()}, bytes(4))
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    _one_line(exc, path, "without frametrans metadata", "and 4995 more")


def test_three_million_fields_refused_with_bounded_memory(tmp_path):
    """The issue's file: 3 million unknown fields (30 MB of header) gave a 30 MB message and
    ~470 MB of peak memory."""
    config = "{" + ",".join(f'"x{i}":0' for i in range(3_000_000)) + "}"
    path = _safetensors(tmp_path / "big.safetensors",
                        {"__metadata__": _meta(config), "w": _tensor()}, bytes(4))
    message, growth_mb = _load_in_child(path)
    assert message.startswith(str(path)) and len(message) < 400, message[:1000]
    assert "value 'config' is 37.9 MB; expected at most 1.0 MB per value" in message, message
    header_mb = path.stat().st_size / MB  # 42 MiB: json.dumps escapes every quote
    # reading and parsing the header takes about two copies of it (measured: 84 MB, 460 MB
    # before); the 3 million fields are never decoded
    assert int(growth_mb) < 3 * header_mb, f"peak memory grew by {growth_mb} MB"


_DEEP = b'{"w": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize("header, parts", [
    (_DEEP, ["JSON nested deeper than 3 levels", "expected"]),
    ({"w": {"dtype": "F32", "shape": [1]}}, ["tensor 'w' has no data_offsets", "expected"]),
    ({"w": {"dtype": "F32", "shape": ["x"], "data_offsets": [0, 4]}},
     ["tensor 'w' has shape ['x']", "expected a list of non-negative integers"]),
    ({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}, ["has shape [1.5]"]),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, ["has shape [-1]"]),
    ({"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}},
     ["tensor 'w' has dtype 'Q7'", "expected one of BOOL"]),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}},
     ["data_offsets [4, 0]", "expected [begin, end]"]),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": "0-4"}}, ["data_offsets '0-4'"]),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}},
     ["tensor 'w' spans 4 bytes", "expected 8 for F32 [2]"]),
    ({"w": _tensor(), "v": _tensor(begin=8)}, ["tensor 'v' starts at byte 8", "expected 4"]),
    ({"w": [1, 2]}, ["tensor 'w' is a JSON list", "expected"]),
    ([1, 2], ["a JSON list", "expected an object of tensors"]),
    (b'{"w": ', ["not valid JSON", "expected"]),
    (b"\xff\xfe{}", ["not valid JSON"]),
    ({"__metadata__": {"config": {"ngf": 4}}, "w": _tensor()},
     ["__metadata__ value 'config' is a JSON dict", "expected a string"]),
    ({"__metadata__": [1], "w": _tensor()}, ["__metadata__ is a JSON list", "expected an object"]),
    ({"w" * 10_000: {"dtype": "F32", "shape": [1]}}, ["tensor 'wwww", "...", "has no data_offsets"]),
], ids=["deep", "no-offsets", "shape-x", "shape-float", "shape-negative", "dtype", "offsets-reversed",
        "offsets-string", "offsets-vs-shape", "gap", "entry-list", "header-list", "truncated-json",
        "not-utf8", "metadata-dict-value", "metadata-list", "long-name"])
def test_malformed_safetensors_header_is_one_line(tmp_path, header, parts):
    path = _safetensors(tmp_path / "h.safetensors", header, bytes(64))
    for call in (load_model, read_info):
        with pytest.raises(CheckpointError) as exc:
            call(path)
        _one_line(exc, path, *parts)


def test_absurd_header_length_refused_before_reading(tmp_path):
    path = tmp_path / "l.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    _one_line(exc, path, "header length 1000000000000", "expected 2 to 100,000,000 bytes")


def test_deeply_nested_metadata_json_is_one_line(tmp_path):
    config = "[" * 30_000 + "]" * 30_000  # fits the 64 KB bound, too deep for json.loads
    path = _safetensors(tmp_path / "d.safetensors",
                        {"__metadata__": _meta(config), "w": _tensor()}, bytes(4))
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    _one_line(exc, path, "bad metadata: config JSON is nested too deeply")
