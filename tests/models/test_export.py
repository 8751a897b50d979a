"""ONNX export: every registered generator, run by ONNX Runtime against torch fp32 on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from click.testing import CliRunner

from frametrans import zoo
from frametrans.cli.main import cli
from frametrans.export import (ExportError, check_onnx, exportable_names, export_onnx, photo_inputs,
                               read_metadata)
from support import tiny_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

PHOTOS = (skimage.data.astronaut, skimage.data.coffee, skimage.data.chelsea)


def _photos(model, batch: int, h: int, w: int):
    m = model.config.contract().size_multiple
    h, w = -(-h // m) * m, -(-w // m) * m
    return photo_inputs(model, [f()[:h, :w] for f in PHOTOS[:batch]])


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_every_generator_is_exportable():
    assert set(exportable_names()) >= {"resnet", "unet", "munit", "predictor"}


@pytest.mark.parametrize("name", exportable_names())
def test_export_matches_torch_within_one_grey_level_on_photos(name, tmp_path):
    model = tiny_model(name)
    path = tmp_path / f"{name}.onnx"
    result = export_onnx(model, path)
    assert result.path == path and path.stat().st_size == result.size_bytes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    # one file, two sizes (neither is the traced one) and two batch sizes: the axes are dynamic
    for batch, h, w in ((1, 72, 100), (3, 128, 64)):
        assert check_onnx(path, model, _photos(model, batch, h, w)) <= 1
    meta = read_metadata(path)
    c = model.config.contract()
    assert meta["architecture"] == name and meta["frametrans_version"]
    assert meta["size_multiple"] == str(c.size_multiple)
    assert meta["value_range"] == f"{float(c.value_range[0])},{float(c.value_range[1])}"
    assert meta["in_channels"] == str(c.in_channels) and meta["style_dim"] == str(c.style_dim)
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "batch" and dims[2] == "height" and dims[3] == "width"


@pytest.mark.parametrize("direction", ["a2b", "b2a"])
def test_munit_takes_the_style_code_as_a_second_input(direction, tmp_path):
    import onnxruntime as ort

    model = tiny_model("munit")
    path = tmp_path / "munit.onnx"
    export_onnx(model, path, direction=direction)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image", "style"]
    assert read_metadata(path)["direction"] == direction
    x = _photos(model, 2, 64, 80)
    assert check_onnx(path, model, x, direction=direction) <= 1
    # one style for the whole batch broadcasts, as in torch; another style changes the picture
    style = torch.randn(1, model.config.style_dim, 1, 1, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model.translate(x, style=style, direction=direction).numpy()
    got = sess.run(["output"], {"image": x.numpy(), "style": style.numpy()})[0]
    assert np.abs(got - ref).max() < 2 / 255
    other = sess.run(["output"], {"image": x.numpy(), "style": -style.numpy()})[0]
    assert np.abs(other - got).max() > 0.01


def test_cli_exports_bundled_models(tmp_path):
    for name in zoo.names():
        out = tmp_path / f"{name}.onnx"
        res = run("export", name, "-o", out)
        assert res.exit_code == 0, res.output
        assert "at most" in res.output and out.is_file()
        assert read_metadata(out)["architecture"]
    res = run("export", "cyclegan", "-o", tmp_path / "cyclegan.onnx")
    assert res.exit_code == 1 and "--overwrite" in res.output


def test_cli_exports_upstream_files(tmp_path):
    resnet = tiny_model("resnet")
    torch.save(resnet.state_dict(), tmp_path / "latest_net_G_A.pth")
    munit = tiny_model("munit", dim=8)
    torch.save({"a": munit.gen_a.state_dict(), "b": munit.gen_b.state_dict()}, tmp_path / "gen_00001000.pt")
    res = run("export", tmp_path / "latest_net_G_A.pth", "-o", tmp_path / "cg.onnx")
    assert res.exit_code == 0, res.output
    res = run("export", tmp_path / "gen_00001000.pt", "--direction", "b2a", "-o", tmp_path / "mu.onnx")
    assert res.exit_code == 0, res.output
    assert read_metadata(tmp_path / "mu.onnx")["direction"] == "b2a"


def test_refusals_are_one_line(tmp_path, monkeypatch):
    disc = tiny_model("patchgan")
    with pytest.raises(ExportError, match="discriminator, not a generator"):
        export_onnx(disc, tmp_path / "d.onnx")
    res = run("export", "cyclegan", "--direction", "b2a", "-o", tmp_path / "x.onnx")
    assert res.exit_code == 2 and "for MUNIT models" in res.output
    res = run("export", "cyclegan", "-o", tmp_path / "x.png")
    assert res.exit_code == 2 and ".onnx" in res.output
    assert not (tmp_path / "x.onnx").exists()

    real_find_spec = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a: None if name == "onnx" else real_find_spec(name, *a))
    res = run("export", "cyclegan", "-o", tmp_path / "y.onnx")
    assert res.exit_code == 2 and "pip install 'frametrans[onnx]'" in res.output
