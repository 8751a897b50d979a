"""The benchmark harness runs (tiny sizes) and its pieces measure what they say. No timing asserts."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from frametrans import bench
from frametrans.checkpoint import load_model
from frametrans.io.frame import Frame
from frametrans.cli.main import cli

TINY = ["--config", "ngf=4", "--config", "n_blocks=1"]


def _invoke(args, **kw):
    res = CliRunner().invoke(cli, ["bench", *args], catch_exceptions=False, **kw)
    assert res.exit_code == 0, res.output
    return res


def test_bench_apply_cli_tiny(tmp_path):
    out = tmp_path / "r.json"
    res = _invoke(["apply", "-m", "resnet", *TINY, "--size", "32x24", "--frames", "3", "--repeat", "1",
                   "--device", "cpu", "--precision", "fp32", "--compile", "off", "--json", str(out)])
    for phase in ("model only", "apply video", "apply folder", "reference loop"):
        assert phase in res.output
    data = json.loads(out.read_text())
    rows = {r["phase"].split(" (")[0]: r for r in data["rows"]}
    assert rows["model only"]["vs_model"] == 1.0
    assert all(r["frames_per_s"] > 0 and r["peak_mem_bytes"] > 0 for r in data["rows"])
    assert data["setup"]["flop_per_frame"] > 0 and data["setup"]["device_peak_flop_per_s"] > 0
    assert data["setup"]["padded"] == [32, 24] and not data["setup"]["compiled"]


def test_bench_backends_cli_tiny(tmp_path, monkeypatch):
    """Every path that can run here gets a time and (but torch fp32, the reference) a PSNR; the
    others are listed as skipped with why; `torch auto` says which copy --precision auto picked."""
    from frametrans.bench.backends import PATHS
    from frametrans.engine import device as devices

    monkeypatch.setattr(devices, "cpu_bf16_pays", lambda: True)  # auto means bf16 on any CPU here
    out = tmp_path / "b.json"
    res = _invoke(["backends", "-m", "resnet", *TINY, "--size", "32", "--repeat", "1", "--frames", "2",
                   "--json", str(out)])
    data = json.loads(out.read_text())
    ran, skipped = set(data["seconds_per_frame"]), set(data["skipped"])
    assert ran | skipped == {name for name, _, _ in PATHS} and not ran & skipped
    assert {"torch fp32", "torch auto"} <= ran and data["speedup_vs_torch_fp32"]["torch fp32"] == 1.0
    assert set(data["psnr_vs_fp32_db"]) == ran - {"torch fp32"}
    assert all(p["worst"] >= 40.0 for name, p in data["psnr_vs_fp32_db"].items() if name.startswith("torch"))
    assert data["torch_auto"]["dtype"] == "bf16" and data["torch_auto"]["keep_fp32"] in ("none", "all")
    assert "torch auto here: bf16, keep_fp32=" in res.output and "--backend auto here:" in res.output


def test_bench_tiling_cli_tiny():
    res = _invoke(["tiling", "-m", "unet", "--config", "num_downs=3", "--config", "ngf=4", "--size", "96x64",
                   "--tile", "32", "--repeat", "1", "--device", "cpu", "--precision", "fp32"])
    assert "tiled / untiled" in res.output and "PSNR" in res.output


def test_bench_processes_cli_tiny(tmp_path, monkeypatch):
    """Run from a folder that holds another ``frametrans`` package (a checkout next to a ``pip
    install --target DIR`` found through PYTHONPATH; ``python -m`` puts the working folder first):
    the child processes still import the frametrans this process imported."""
    decoy = tmp_path / "checkout"
    (decoy / "frametrans").mkdir(parents=True)
    (decoy / "frametrans" / "__init__.py").write_text("raise ImportError('the decoy frametrans')\n")
    monkeypatch.chdir(decoy)
    res = _invoke(["processes", "-m", "resnet", *TINY, "--size", "32", "--frames", "2", "--device", "cpu",
                   "--precision", "fp32", "--compile", "off", "--workdir", "work", "--cold"])  # relative: resolved
    assert "speed-up over the reference loop" in res.output and "nothing cached (--cold)" in res.output
    worst = re.search(r"against the reference loop's: worst frame ([\d.]+|inf) dB", res.output)
    # both fp32: only the reference's truncation to 8 bits (where frametrans rounds) parts them
    assert worst and float(worst.group(1)) >= 45.0
    assert len(list((decoy / "work" / "out_frames").glob("*.png"))) == 2
    assert len(list((decoy / "work" / "ref_out").glob("*.png"))) == 2


def test_child_env_puts_the_imported_package_first(monkeypatch):
    import frametrans
    from frametrans.child import child_env, package_root

    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    env = child_env()
    parts = env["PYTHONPATH"].split(os.pathsep)
    assert parts[0] == str(package_root()) and "/somewhere/else" in parts
    assert (package_root() / "frametrans" / "__init__.py").resolve() == Path(frametrans.__file__).resolve()


def test_null_model_gives_back_every_frame_unchanged():
    from frametrans.bench.models import NullModel, null_translator
    from frametrans import registry

    assert "null" not in registry.names()  # users never see it
    runner = null_translator("cpu").variants[0].runner
    rng = np.random.default_rng(0)
    frames = [Frame(rng.integers(0, 256, (23, 37, 3), dtype=np.uint8)) for _ in range(5)]
    outs = list(runner.run(frames))
    assert [f for f, _ in outs] == frames
    assert all(np.array_equal(f.image, o) for f, o in outs)
    deep = rng.integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    assert np.array_equal(runner([deep])[0], deep)
    assert isinstance(runner.source, NullModel)


def test_bench_pipeline_cli_tiny(tmp_path):
    out = tmp_path / "p.json"
    res = _invoke(["pipeline", "--size", "40x24", "--frames", "3", "--repeat", "1", "--threads", "1,2",
                   "--device", "cpu", "--workdir", str(tmp_path / "w"), "--json", str(out)])
    assert "apply / codec" in res.output and "scaling png, 1 -> 2 threads" in res.output
    data = json.loads(out.read_text())
    rows = {(r["input"], r["threads"]): r for r in data["rows"]}
    assert set(rows) == {(k, n) for k in ("video", "png", "jpg") for n in (1, 2)}
    for r in rows.values():
        assert r["codec_fps"] > 0 and r["apply_fps"] > 0 and r["runner_fps"] > 0
        assert r["ratio"] == pytest.approx(r["apply_fps"] / r["codec_fps"])
    assert rows[("video", 1)]["codec_rgb_fps"] > 0 and rows[("png", 1)]["codec_rgb_fps"] is None
    assert set(data["scaling"]) == {"png", "jpg"} and data["setup"]["threads"] == [1, 2]
    for r in rows.values():  # apply's stages, ms per frame
        assert set(r["stages"]) == {"decode", "main", "encode"}
        assert all(t["cpu_ms"] > 0 and t["busy_ms"] > 0 for t in r["stages"].values())
    assert "| decode CPU / busy |" in res.output
    from frametrans.io.images import read_image

    for name in ("frame_00000.png", "frame_00002.png"):  # the null model: outputs are the inputs
        w = tmp_path / "w"
        np.testing.assert_array_equal(read_image(w / "out_png" / name).image,
                                      read_image(w / "in_png" / name).image)


def test_bench_pipeline_video_as_planes(tmp_path, monkeypatch):
    """--yuv on: the video phase's frames go to the null model as YUV planes (counted here)."""
    from frametrans.engine import yuv

    uploaded: list = []
    real = yuv.upload
    monkeypatch.setattr(yuv, "upload", lambda images, *a: (uploaded.append(len(images)), real(images, *a))[1])
    out = tmp_path / "p.json"
    res = _invoke(["pipeline", "--size", "40x24", "--frames", "3", "--repeat", "1", "--inputs", "video",
                   "--device", "cpu", "--yuv", "on", "--json", str(out)])
    assert "--yuv on" in res.output
    assert json.loads(out.read_text())["setup"]["yuv"] == "on" and sum(uploaded) == 3


def test_bench_pipeline_switch_interval_applies_during_the_run_only(tmp_path, monkeypatch):
    """--switch-interval: the run sees it (the writer pool's threads record it) and the process's
    own interval comes back after; the table and the JSON say which one ran."""
    import sys

    from frametrans.io import images

    seen: list = []
    real = images.write_image
    monkeypatch.setattr(images, "write_image", lambda *a, **k: (seen.append(sys.getswitchinterval()), real(*a, **k))[1])
    before = sys.getswitchinterval()
    out = tmp_path / "p.json"
    res = _invoke(["pipeline", "--size", "40x24", "--frames", "3", "--repeat", "1", "--inputs", "png",
                   "--threads", "1", "--device", "cpu", "--switch-interval", "0.0005", "--json", str(out)])
    assert "switch interval 0.5 ms" in res.output
    assert seen[:3] == [before] * 3  # the inputs, made before the run
    assert seen[3:] == [pytest.approx(0.0005)] * 3  # apply's three outputs
    assert sys.getswitchinterval() == before
    assert json.loads(out.read_text())["setup"]["switch_interval"] == pytest.approx(0.0005)


def test_bench_pipeline_refuses_bad_threads_and_inputs():
    for args in (["--threads", "0"], ["--threads", "2,x"], ["--inputs", "png,gif"], ["--switch-interval", "0"]):
        res = CliRunner().invoke(cli, ["bench", "pipeline", *args])
        assert res.exit_code == 2 and "Invalid value" in res.output, res.output


def test_bench_group_lists_subcommands():
    res = _invoke(["--help"])
    for name in ("apply", "processes", "tiling", "compile"):
        assert name in res.output


def test_reference_loop_is_the_same_model_as_apply(tmp_path):
    """The reference loop and `frametrans apply` (fp32) give the same picture (upstream truncates,
    we round: at most one level apart), so the speed comparison compares like with like."""
    from frametrans.apply import OutputOptions, Translator, apply_paths
    from frametrans.engine.runner import RunnerOptions

    ckpt = bench.prepare_model("resnet", tmp_path, {"ngf": 4, "n_blocks": 1})
    frames = bench.make_folder(tmp_path / "in", 36, 28, 2)
    bench.reference_loop(load_model(ckpt), frames, tmp_path / "ref", torch.device("cpu"))
    t = Translator(load_model(ckpt), RunnerOptions(device="cpu", precision="fp32", compile="off"))
    report = apply_paths([str(frames)], str(tmp_path / "ours"), t, OutputOptions(quiet=True))
    assert report.ok and report.frames == 2
    from PIL import Image

    for p in sorted(frames.iterdir()):
        ref = np.asarray(Image.open(tmp_path / "ref" / f"{p.stem}_fake.png")).astype(int)
        ours = np.asarray(Image.open(tmp_path / "ours" / p.name)).astype(int)
        assert ref.shape == ours.shape and np.abs(ref - ours).max() <= 1


def test_reference_loop_runs_torchs_own_instance_norm(tmp_path):
    """Upstream builds nn.InstanceNorm2d: the reference gets torch's own layers back, same weights."""
    from frametrans.bench.apply import with_torch_norms
    from frametrans.models.norms import InstanceNorm2d

    model = load_model(bench.prepare_model("resnet", tmp_path, {"ngf": 4, "n_blocks": 1}))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(type(m) is InstanceNorm2d for m in model.modules())
    with_torch_norms(model)
    kinds = {type(m) for m in model.modules()}
    assert InstanceNorm2d not in kinds and torch.nn.InstanceNorm2d in kinds
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_flops_peak_and_memory_helpers():
    from frametrans.models.resnet import ResnetConfig, ResnetGenerator

    m = ResnetGenerator(ResnetConfig(ngf=4, n_blocks=1))
    f64 = bench.model_flops(m, lambda mod, x: mod(x), 3, 64, 64)
    f128 = bench.model_flops(m, lambda mod, x: mod(x), 3, 128, 128)
    assert f64 > 0 and f128 == pytest.approx(4 * f64, rel=0.01)  # convolutions scale with area
    assert bench.device_peak_flops(torch.device("cpu"), torch.float32, seconds=0.05) > 1e8
    import mmap

    with bench.PeakMemory(torch.device("cpu")) as mem:
        # 64 MiB of fresh anonymous pages, touched: resident whatever malloc has cached (a process
        # that ran OpenVINO reuses freed blocks through its allocator, and np.ones then adds nothing)
        pages = mmap.mmap(-1, 64 * 2**20)
        np.frombuffer(pages, dtype=np.uint8)[:] = 1
    assert mem.peak >= mem.start and mem.added >= 32 * 2**20
    pages.close()


def test_prepare_model_is_reproducible(tmp_path):
    a = bench.prepare_model("unet", tmp_path / "a", {"num_downs": 3, "ngf": 4}, seed=3)
    b = bench.prepare_model("unet", tmp_path / "b", {"num_downs": 3, "ngf": 4}, seed=3)
    sa, sb = load_model(a).state_dict(), load_model(b).state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(ValueError, match="--config"):
        bench.prepare_model(str(a), tmp_path, {"ngf": 8})


@pytest.mark.slow
def test_bench_compile_cli_tiny(tmp_path):
    from frametrans.engine.compile import can_compile

    if can_compile(torch.device("cpu")):
        pytest.skip("cannot compile here")
    res = _invoke(["compile", "-m", "resnet", *TINY, "--size", "32", "--repeat", "1", "--device", "cpu",
                   "--precision", "fp32", "--workdir", str(tmp_path)])
    assert "break-even" in res.output


# ------------------------------------------------------------------------------------ bench gpu


@pytest.mark.parametrize("args, why", [
    ([], "needs a CUDA GPU"),
    (["--device", "cpu"], "runs only with --quick"),
    (["--device", "mps"], "use cuda, cuda:N, or cpu with --quick"),
])
def test_bench_gpu_refuses_in_one_line(args, why):
    if not args and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here")
    res = CliRunner().invoke(cli, ["bench", "gpu", *args])
    assert res.exit_code == 2
    (line,) = res.output.strip().splitlines()
    assert line.startswith("frametrans: error: bench gpu") and why in line


def test_bench_gpu_plan_covers_the_table_with_compiles_last():
    from frametrans.bench.gpu import GpuBench, plan

    pieces = plan(GpuBench())
    apply = {(p.settings["model"], p.settings["width"], p.settings["height"], p.settings["batch"])
             for p in pieces if p.kind == "apply"}
    assert apply == {("resnet", 256, 256, 16), ("unet", 256, 256, 16), ("resnet", 1920, 1080, 4),
                     ("unet", 1920, 1080, 4)}
    assert all(p.settings["compile"] == "off" and p.settings["precision"] == "bf16"
               for p in pieces if p.kind == "apply")
    assert {(p.settings["width"], p.settings["height"]) for p in pieces if p.kind == "pipeline"} == {
        (256, 256), (1920, 1080)}
    assert [(p.settings["width"], p.settings["inputs"]) for p in pieces
            if p.kind == "pipeline" and p.settings.get("yuv") == "off"] == [(1920, ("video",))]
    (mem,) = [p for p in pieces if p.kind == "memory"]
    assert (mem.settings["width"], mem.settings["height"], mem.settings["max_memory"]) == (3840, 2160, 4 * 2**30)
    assert {p.settings["method"] for p in pieces if p.kind == "training"} == {"cyclegan", "predictor"}
    assert [p.kind for p in pieces[-2:]] == ["compile", "compile"] and all(p.isolated for p in pieces[-2:])
    assert not any(p.isolated for p in pieces[:-2])


def test_bench_gpu_row_in_a_child_process():
    """Isolated rows (the compiles) run as ``python -m frametrans.bench.gpu KIND JSON``."""
    from frametrans.bench.gpu import GpuBench, Piece, _run_piece

    piece = Piece("ceiling", "tiny", "pipeline", dict(width=24, height=16, frames=2, repeat=1,
                                                      inputs=["png"], threads=[1], device="cpu"), isolated=True)
    row = _run_piece(piece, GpuBench(device="cpu"), left=300, log=lambda _: None)
    assert row["status"] == "ok", row
    assert row["result"]["rows"][0]["input"] == "png" and row["result"]["rows"][0]["apply_fps"] > 0
    bad = _run_piece(Piece("ceiling", "bad", "nonsense", {}), GpuBench(device="cpu"), 300, lambda _: None)
    assert bad["status"] == "error" and "unknown benchmark kind" in bad["why"]


@pytest.mark.slow
def test_bench_gpu_quick_smoke_run_on_the_cpu(tmp_path):
    _invoke(["gpu", "--device", "cpu", "--quick", "--out", str(tmp_path / "g")])
    data = json.loads((tmp_path / "g.json").read_text())
    md = (tmp_path / "g.md").read_text()
    status = {(r["table"], r["label"]): r["status"] for r in data["rows"]}
    assert {t for t, _ in status} == {"apply", "ceiling", "memory", "training", "compile"}
    assert all(s == "skipped" for (t, _), s in status.items() if t == "compile")
    must_run = [r for r in data["rows"] if r["table"] in ("ceiling", "memory", "training")
                or (r["table"] == "apply" and r["label"].startswith("ResNet"))]
    failed = [(r["label"], r.get("why")) for r in must_run if r["status"] != "ok"]
    assert not failed
    for heading in ("## Model and end to end", "## Host ceiling", "## One large frame within --max-memory",
                    "## Training", "## Compile on"):
        assert heading in md
    assert "ResNet-9 32x32, b2 |" in md and "bound)" in md


def test_bench_resume_measures_the_writer_and_a_killed_job(tmp_path):
    from support import tiny_resnet_file

    model = tiny_resnet_file(tmp_path)
    out = tmp_path / "resume.json"
    res = CliRunner().invoke(cli, ["bench", "resume", "-m", str(model), "--size", "48x32", "--seconds",
                                   "3", "--segment-seconds", "0.5", "--repeat", "1", "--precision",
                                   "fp32", "--json", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["frames"] == 75 and r["segmented_over_one_piece"] > 0
    assert r["equal_to_uninterrupted"] is True
    assert r["resumed_frames"] == 75 - r["killed_with_frames_done"]
    assert 0 < r["killed_with_frames_done"] < 75


def test_bench_temporal_cli_tiny(tmp_path):
    """Every mode of a tiny instance-norm model on a short clip: times, ratios to off, the warping
    error and the PSNR to off; stats and flow change the output, off is the reference."""
    from support import tiny_resnet_file
    from frametrans.bench.common import make_video

    model = tiny_resnet_file(tmp_path)
    clip = make_video(tmp_path / "clip.mp4", 64, 48, 6)
    out = tmp_path / "t.json"
    res = CliRunner().invoke(cli, ["bench", "temporal", "--clip", str(clip), "--models", str(model), "--repeat", "1",
                                   "--modes", "stats,off,flow", "--backend", "torch", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"off", "stats", "flow"} and rows["off"]["psnr_to_off"] is None
    assert all(rows[m]["vs_off_time"] > 0 and rows[m]["psnr_to_off"] < 99 for m in ("stats", "flow"))
    assert all(rows[m]["vs_off_error"] is not None for m in ("stats", "flow"))  # off listed after stats
    assert rows["flow"]["warping_error"] < rows["off"]["warping_error"]
    assert rows["flow"]["flow"] == "dis" and rows["off"]["flow"] is None  # auto on a CPU model: DIS
    assert "| input (the floor) |" in res.output and "vs off" in res.output and "| flow (dis) |" in res.output
    res = CliRunner().invoke(cli, ["bench", "temporal", "--clip", str(clip), "--models", str(model), "--repeat", "1",
                                   "--modes", "off,flow", "--backend", "torch", "--temporal-flow", "torch",
                                   "--json", str(out)])
    assert res.exit_code == 0 and "| flow (torch) |" in res.output, res.output
    assert json.loads(out.read_text())["settings"]["flow"] == "torch"
    bad = CliRunner().invoke(cli, ["bench", "temporal", "--clip", str(clip), "--modes", "stats,auto"])
    assert bad.exit_code == 2 and "off included" in bad.output
    res = CliRunner().invoke(cli, ["bench", "temporal", "--clip", str(clip), "--models", str(model), "--repeat", "1",
                                   "--modes", "off,flow", "--backend", "torch", "--size", "96x72", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "6 frames of 96x72" in res.output and json.loads(out.read_text())["settings"]["size"] == [96, 72]
    res = CliRunner().invoke(cli, ["bench", "temporal", "--clip", str(clip), "--models", str(model), "--repeat", "1",
                                   "--modes", "off", "--backend", "torch", "--size", "32", "--frames", "2"])
    assert res.exit_code == 0 and "2 frames of 32x32" in res.output, res.output  # N: square, as in the other benches
    bad = CliRunner().invoke(cli, ["bench", "temporal", "--clip", str(clip), "--size", "96x"])
    assert bad.exit_code == 2 and "WIDTHxHEIGHT" in bad.output
