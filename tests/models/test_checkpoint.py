"""Our checkpoint format, foreign-file safety, and the convert/inspect/models commands."""

import json
import os
import struct

import pytest
import torch
from click.testing import CliRunner

from frametrans import registry
from frametrans.checkpoint import CheckpointError, load_model, read_info, save_model
from frametrans.cli.main import cli
from frametrans.models.resnet import ResnetConfig, ResnetGenerator
from frametrans.models.unet import UNetConfig, UNetGenerator


@pytest.fixture()
def tiny_resnet():
    torch.manual_seed(0)
    return ResnetGenerator(ResnetConfig(ngf=4, n_blocks=1)).eval()


def test_save_load_identical_outputs(tmp_path, tiny_resnet):
    path = save_model(tiny_resnet, tmp_path / "m.safetensors", provenance={"task": "test"})
    loaded = load_model(path).eval()
    x = torch.rand(2, 3, 20, 24) * 2 - 1
    assert torch.equal(tiny_resnet(x), loaded(x))
    info = read_info(path)
    assert info.architecture == "resnet"
    assert info.config == tiny_resnet.config
    assert info.provenance == {"task": "test"}
    assert info.contract.size_multiple == 4
    assert not list(tmp_path.glob(".*")), "temporary file left behind"


def test_fp16_storage_loads_as_float32(tmp_path, tiny_resnet):
    path = save_model(tiny_resnet, tmp_path / "h.safetensors", dtype=torch.float16)
    loaded = load_model(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert read_info(path).dtype == "F16"


def test_pickle_payload_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "latest_net_G.pth"
    torch.save({"model.1.weight": Payload()}, evil)
    with pytest.raises(CheckpointError, match="refused: the file asks to unpickle GLOBAL"):
        load_model(evil)
    assert not marker.exists()


def test_truncated_and_garbage_files(tmp_path, tiny_resnet):
    good = save_model(tiny_resnet, tmp_path / "g.safetensors")
    data = good.read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(tmp_path / "t.safetensors")
    (tmp_path / "x.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model(tmp_path / "x.pth")
    (tmp_path / "e.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="too short"):
        load_model(tmp_path / "e.safetensors")


def _write_safetensors(path, metadata, tensors):
    header = {"__metadata__": metadata}
    offset = 0
    blobs = []
    for name, shape in tensors.items():
        n = 4
        for s in shape:
            n *= s
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        blobs.append(b"\0" * n)
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def test_absurd_config_refused_before_allocation(tmp_path):
    meta = {"frametrans_format": "1", "architecture": "resnet",
            "config": json.dumps({"ngf": 10**12, "n_blocks": 9}), "provenance": "{}"}
    _write_safetensors(tmp_path / "big.safetensors", meta, {"w": [1]})
    with pytest.raises(CheckpointError, match="ngf=1000000000000 is out of range"):
        load_model(tmp_path / "big.safetensors")
    meta["config"] = json.dumps({"ngf": 4000, "n_blocks": 60})
    _write_safetensors(tmp_path / "big2.safetensors", meta, {"w": [1]})
    with pytest.raises(CheckpointError, match="parameters; refused"):
        load_model(tmp_path / "big2.safetensors")


def test_unknown_fields_and_architecture(tmp_path):
    meta = {"frametrans_format": "1", "architecture": "resnet",
            "config": json.dumps({"ngf": 4, "bogus": 1}), "provenance": "{}"}
    _write_safetensors(tmp_path / "a.safetensors", meta, {"w": [1]})
    with pytest.raises(CheckpointError, match="unknown config field"):
        load_model(tmp_path / "a.safetensors")
    meta.update(architecture="transformer9000", config="{}")
    _write_safetensors(tmp_path / "b.safetensors", meta, {"w": [1]})
    with pytest.raises(CheckpointError, match="unknown architecture"):
        load_model(tmp_path / "b.safetensors")


def test_shape_mismatch_is_one_line(tmp_path, tiny_resnet):
    meta = {"frametrans_format": "1", "architecture": "resnet",
            "config": json.dumps(tiny_resnet.config.to_dict()), "provenance": "{}"}
    shapes = {k: list(v.shape) for k, v in tiny_resnet.state_dict().items()}
    shapes["model.1.weight"] = [5, 3, 7, 7]
    _write_safetensors(tmp_path / "s.safetensors", meta, shapes)
    with pytest.raises(CheckpointError, match=r"model.1.weight has shape \(5, 3, 7, 7\)"):
        load_model(tmp_path / "s.safetensors")


def test_every_architecture_round_trips_through_the_file(tmp_path):
    from support import tiny_config

    for name in registry.names():
        arch = registry.get(name)
        model = arch.build(tiny_config(name))
        path = save_model(model, tmp_path / f"{name}.safetensors")
        again = load_model(path)
        assert type(again) is type(model)
        assert again.config == model.config
        for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
            assert torch.equal(a, b), (name, k)


def test_cli_convert_and_inspect(tmp_path):
    torch.manual_seed(1)
    model = UNetGenerator(UNetConfig(num_downs=5, ngf=4))
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "latest_net_G.pth")
    runner = CliRunner()
    out = tmp_path / "p2p.safetensors"
    res = runner.invoke(cli, ["convert", str(tmp_path / "latest_net_G.pth"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["inspect", str(out), "--json"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.output)
    assert record["architecture"] == "unet"
    assert record["config"]["num_downs"] == 5 and record["config"]["ngf"] == 4
    assert record["contract"]["size_multiple"] == 32
    assert record["provenance"]["imported_from"] == "pytorch-CycleGAN-and-pix2pix"
    res = runner.invoke(cli, ["convert", str(tmp_path / "latest_net_G.pth"), "-o", str(out)])
    assert res.exit_code != 0 and "exists" in res.output


@pytest.mark.parametrize("values, message", [
    ({"ngf": 4.5}, "ngf=4.5 of resnet must be int"),
    ({"ngf": True}, "ngf=True of resnet must be int"),
    ({"dropout": float("nan")}, "dropout=nan of resnet must be bool"),
    ({"norm": None}, "norm=None of resnet must be str"),
])
def test_config_types_checked_before_building(tmp_path, values, message):
    meta = {"frametrans_format": "1", "architecture": "resnet", "config": json.dumps(values),
            "provenance": "{}"}
    _write_safetensors(tmp_path / "t.safetensors", meta, {"w": [1]})
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path / "t.safetensors")
