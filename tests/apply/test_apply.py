"""`frametrans apply` as a user runs it: images, folders, videos, pipes, MUNIT styles, resume."""

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from frametrans.checkpoint import save_model
from frametrans.cli.main import cli
from frametrans.io.images import read_image
from frametrans.models.munit import MUNIT, MUNITConfig
from frametrans.models.resnet import ResnetConfig, ResnetGenerator
from support import SAMPLE_CLIP
from support.cli import main_in_process
from support.media import make_clip

CLIP = SAMPLE_CLIP


@pytest.fixture(scope="module")
def resnet_path(tmp_path_factory):
    torch.manual_seed(0)
    model = ResnetGenerator(ResnetConfig(ngf=4, n_blocks=1))
    return save_model(model, tmp_path_factory.mktemp("m") / "rn.safetensors")


@pytest.fixture(scope="module")
def munit_path(tmp_path_factory):
    torch.manual_seed(0)
    model = MUNIT(MUNITConfig(dim=4, style_dim=3, n_res=1, mlp_dim=8))
    return save_model(model, tmp_path_factory.mktemp("m") / "munit.safetensors")


def run(*args, input=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    return result


def expected_fp32(model_path, image):
    """The model's output computed by hand: [0,255] -> [-1,1], reflect pad to 4, forward, crop."""
    from frametrans.checkpoint import load_model

    model = load_model(model_path).eval()
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    h, w = x.shape[-2:]
    ph, pw = (-h) % 4, (-w) % 4
    x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    with torch.no_grad():
        y = model(x)[..., :h, :w]
    return ((y + 1) * 127.5).round().clamp(0, 255).byte()[0].permute(1, 2, 0).numpy()


def test_image_output_matches_hand_computed_forward(tmp_path, resnet_path):
    image = skimage.data.astronaut()[:301, :457]  # odd size, not a multiple of 4
    Image.fromarray(image).save(tmp_path / "in.png")
    res = run("apply", tmp_path / "in.png", "-o", tmp_path / "out.png", "-m", resnet_path,
              "--precision", "fp32", "--quiet")
    assert res.exit_code == 0, res.output
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == image.shape
    diff = np.abs(out.astype(int) - expected_fp32(resnet_path, image).astype(int))
    assert diff.max() <= 1


def test_tiny_and_gray_and_rgba_images(tmp_path, resnet_path):
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(tmp_path / "dot.png")
    Image.fromarray(skimage.data.camera()[:13, :7]).save(tmp_path / "gray.png")
    rgba = np.dstack([skimage.data.chelsea()[:40, :50], np.linspace(0, 255, 40 * 50).reshape(40, 50).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    res = run("apply", tmp_path, "-o", tmp_path / "out", "-m", resnet_path, "--quiet")
    assert res.exit_code == 0, res.output
    assert np.asarray(Image.open(tmp_path / "out" / "dot.png")).shape[:2] == (1, 1)
    assert np.asarray(Image.open(tmp_path / "out" / "gray.png")).shape[:2] == (13, 7)
    out_alpha = np.asarray(Image.open(tmp_path / "out" / "alpha.png"))
    assert out_alpha.shape == (40, 50, 4)
    assert np.array_equal(out_alpha[..., 3], rgba[..., 3]), "alpha must pass through unchanged"


def test_folder_recursive_names_ext_and_resume(tmp_path, resnet_path):
    src = tmp_path / "photos"
    (src / "sub dir").mkdir(parents=True)
    Image.fromarray(skimage.data.coffee()[:64, :80]).save(src / "a.jpg")
    Image.fromarray(skimage.data.chelsea()[:50, :60]).save(src / "sub dir" / "ünï b.png")
    out = tmp_path / "out"
    res = run("apply", src, "-o", out, "-m", resnet_path, "--recursive", "--ext", "png", "--quiet")
    assert res.exit_code == 0, res.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a.png", "sub dir/ünï b.png"]
    # a second run refuses to overwrite, --skip-existing redoes only what is missing
    res = run("apply", src, "-o", out, "-m", resnet_path, "--recursive", "--ext", "png")
    assert res.exit_code != 0 and "exists" in res.output
    kept = out / "a.png"
    mtime = kept.stat().st_mtime_ns
    (out / "sub dir" / "ünï b.png").unlink()
    res = run("apply", src, "-o", out, "-m", resnet_path, "--recursive", "--ext", "png", "--skip-existing")
    assert res.exit_code == 0, res.output
    assert (out / "sub dir" / "ünï b.png").exists() and kept.stat().st_mtime_ns == mtime
    assert not [p for p in out.rglob(".*") if p.is_file()], "temporary files left behind"


def test_folder_output_syncs_each_output_folder_once(tmp_path, resnet_path, monkeypatch):
    import frametrans.atomic as atomic

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for name in ["a.png", "b.png", "c.png", "sub/d.png", "sub/e.png"]:
        Image.fromarray(skimage.data.coffee()[:24, :32]).save(src / name)
    synced = []
    monkeypatch.setattr(atomic, "fsync_dir", lambda folder: synced.append(Path(folder)))
    res = run("apply", src, "-o", tmp_path / "out", "-m", resnet_path, "--recursive", "--quiet", "--io-threads", 2)
    assert res.exit_code == 0, res.output
    assert sorted(synced) == [tmp_path / "out", tmp_path / "out" / "sub"]
    assert len(list((tmp_path / "out").rglob("*.png"))) == 5


def test_bad_file_in_folder_does_not_stop_the_others(tmp_path, resnet_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(skimage.data.coffee()[:32, :32]).save(src / "good.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (src / "empty.jpg").write_bytes(b"")
    res = run("apply", src, "-o", tmp_path / "out", "-m", resnet_path, "--quiet")
    assert res.exit_code == 1
    assert (tmp_path / "out" / "good.png").exists()
    assert "broken.png" in res.output and "empty.jpg" in res.output
    assert not (tmp_path / "out" / "broken.png").exists()


def test_an_opencv_error_fails_its_input_only():
    """An OpenCV call that raises for one input (cv2.error is none of the I/O errors) is that
    input's failure, reported on one line; the job goes on to the next."""
    import cv2

    from frametrans.apply.jobs import Job
    from frametrans.apply.report import Report, run_job

    def opencv_refuses() -> None:
        cv2.resize(np.zeros((0, 0), np.uint8), (4, 4))

    report = Report()
    run_job(opencv_refuses, Job(Path("clip.mp4"), Path("out.mp4"), "video"), report)
    run_job(lambda: None, Job(Path("next.mp4"), Path("out2.mp4"), "video"), report)
    assert len(report.failed) == 1 and report.failed[0][0] == "clip.mp4"
    assert "\n" not in report.failed[0][1] and "resize" in report.failed[0][1]


def _gif_delays(path):
    """The delay of each frame (centiseconds) and the loop count as a browser reads them."""
    import re

    data = Path(path).read_bytes()
    delays = [int.from_bytes(m.group(1)[1:3], "little") for m in re.finditer(rb"\x21\xf9\x04(.{4})\x00", data, re.S)]
    with Image.open(path) as im:
        return delays, im.info.get("loop")


def test_gif_to_gif_keeps_its_timing_and_loop_count_and_says_it_drops_transparency(tmp_path, resnet_path, caplog):
    """A GIF written again as GIF ends on its own last delay (it ended on one period at the average
    rate: 2 s became 0.73 s) and keeps its loop count (a play-once GIF looped forever); transparent
    pixels are written opaque with a warning instead of silently."""
    rng = np.random.default_rng(0)
    pics = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    pics[0].save(tmp_path / "hold.gif", save_all=True, append_images=pics[1:], duration=[100, 100, 2000], loop=3)
    pics[0].save(tmp_path / "once.gif", save_all=True, append_images=pics[1:], duration=[100, 100, 2000])
    for name, loop in (("hold", 3), ("once", None)):
        res = run("apply", tmp_path / f"{name}.gif", "-o", tmp_path / f"o_{name}.gif", "-m", resnet_path,
                  "--compile", "off")
        assert res.exit_code == 0, res.output
        assert _gif_delays(tmp_path / f"o_{name}.gif") == ([10, 10, 200], loop)
        assert "transparency dropped" not in res.output  # opaque GIFs decode with an all-255 alpha
    rgba = []
    for i in range(3):
        a = np.zeros((32, 32, 4), np.uint8)
        a[8:24, 8 + i:24 + i] = (200, 50, 50, 255)
        rgba.append(Image.fromarray(a, "RGBA"))
    rgba[0].save(tmp_path / "trans.gif", save_all=True, append_images=rgba[1:], duration=100, loop=0, disposal=2)
    res = run("apply", tmp_path / "trans.gif", "-o", tmp_path / "o_trans.mp4", "-m", resnet_path, "--compile", "off")
    assert res.exit_code == 0 and "o_trans.mp4: video outputs (GIF included) are written opaque" in res.output


def test_gif_options_never_stop_the_job(tmp_path, monkeypatch):
    """Reading a GIF's loop count through Pillow is best effort: a GIF over Pillow's pixel bound
    (FFmpeg decodes it) keeps FFmpeg's defaults instead of raising out of the job."""
    from frametrans.io.video import gif_container_options

    rng = np.random.default_rng(0)
    pics = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    pics[0].save(tmp_path / "a.gif", save_all=True, append_images=pics[1:], duration=100, loop=2)
    assert gif_container_options(tmp_path / "a.gif") == {"loop": "2", "final_delay": "10"}
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32 x 32 is over twice that: a "bomb"
    assert gif_container_options(tmp_path / "a.gif") == {}
    assert gif_container_options(tmp_path / "missing.gif") == {}


def test_output_that_is_an_input_is_refused(tmp_path, resnet_path):
    Image.fromarray(skimage.data.coffee()[:32, :32]).save(tmp_path / "a.png")
    res = run("apply", tmp_path / "a.png", "-o", tmp_path / "a.png", "-m", resnet_path, "--overwrite")
    assert res.exit_code != 0 and "is one of the inputs" in res.output


def test_list_from_stdin(tmp_path, resnet_path):
    for name in ("x.png", "y.png"):
        Image.fromarray(skimage.data.coffee()[:32, :40]).save(tmp_path / name)
    listing = f"{tmp_path / 'x.png'}\n{tmp_path / 'y.png'}\n"
    res = run("apply", "--list", "-", "-o", tmp_path / "out", "-m", resnet_path, "--quiet", input=listing)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.png", "y.png"]


def _streams(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        pts = [f.pts for f in c.decode(v)]
    with av.open(str(path)) as c:
        audio = [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]
    return pts, audio


def test_video_frames_timestamps_and_audio_copied(tmp_path, resnet_path):
    out = tmp_path / "out.mp4"
    res = run("apply", CLIP, "-o", out, "-m", resnet_path, "--quiet", "--precision", "fp32")
    assert res.exit_code == 0, res.output
    pts_in, audio_in = _streams(CLIP)
    pts_out, audio_out = _streams(out)
    assert len(pts_out) == len(pts_in) == 75
    with av.open(str(CLIP)) as a, av.open(str(out)) as b:
        tb_in, tb_out = a.streams.video[0].time_base, b.streams.video[0].time_base
    assert [p * tb_in for p in pts_in] == [p * tb_out for p in pts_out]
    assert audio_out == audio_in, "audio packets must be copied byte for byte"


def test_no_audio_into_mkv(tmp_path, resnet_path):
    """--no-audio drops the audio track (a small clip with one: what is dropped does not depend on
    the picture size), and .mkv gets H.264."""
    clip = tmp_path / "with_audio.mp4"
    make_clip(clip, n=6, audio=True)
    with av.open(str(clip)) as c:
        assert c.streams.audio
    res = run("apply", clip, "-o", tmp_path / "silent.mkv", "-m", resnet_path, "--quiet", "--no-audio",
              "--precision", "fp32")
    assert res.exit_code == 0, res.output
    with av.open(str(tmp_path / "silent.mkv")) as c:
        assert not c.streams.audio and c.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in c.decode(c.streams.video[0])) == 6


def _raw_frames(n, w, h):
    rng = np.random.default_rng(0)
    base = skimage.data.astronaut()[:h, :w]
    return [np.roll(base, 3 * i, axis=1) ^ rng.integers(0, 2, base.shape, dtype=np.uint8) for i in range(n)]


def test_raw_pipe_round_trip_subprocess(tmp_path, resnet_path):
    w, h = 36, 20
    frames = _raw_frames(5, w, h)
    cmd = [sys.executable, "-m", "frametrans.cli", "apply", "-", "--size", f"{w}x{h}", "-o", "-",
           "-m", str(resnet_path), "--precision", "fp32", "--quiet"]
    proc = subprocess.run(cmd, input=b"".join(f.tobytes() for f in frames), capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(proc.stdout) == 5 * w * h * 3, "stdout must carry only frames"
    got = np.frombuffer(proc.stdout, np.uint8).reshape(5, h, w, 3)
    for i in (0, 4):
        assert np.abs(got[i].astype(int) - expected_fp32(resnet_path, frames[i]).astype(int)).max() <= 1
    # a partial last frame is reported, not padded
    proc = subprocess.run(cmd, input=b"".join(f.tobytes() for f in frames) + b"\0" * 100, capture_output=True)
    assert proc.returncode == 1
    assert len(proc.stdout) == 5 * w * h * 3
    assert "100" in proc.stderr.decode() and proc.stderr.decode().count("\n") <= 2


def test_y4m_out(tmp_path, resnet_path):
    """In-process (the pipe itself, in a real process, is test_raw_pipe_round_trip_subprocess's)."""
    w, h = 32, 16
    frames = _raw_frames(3, w, h)
    res = run("apply", "-", "--size", f"{w}x{h}", "-o", "-", "--y4m", "-m", resnet_path, "--quiet",
              input=b"".join(f.tobytes() for f in frames))
    assert res.exit_code == 0, res.stderr
    assert res.stdout_bytes.startswith(b"YUV4MPEG2 W32 H16")
    assert res.stdout_bytes.count(b"FRAME") == 3


def test_tiled_equals_untiled_through_cli(tmp_path, resnet_path):
    image = skimage.data.astronaut()[:150, :200]
    Image.fromarray(image).save(tmp_path / "in.png")
    common = ["-m", resnet_path, "--precision", "fp32", "--quiet"]
    assert run("apply", tmp_path / "in.png", "-o", tmp_path / "full.png", *common).exit_code == 0
    res = run("apply", tmp_path / "in.png", "-o", tmp_path / "tiled.png", "--tile", "64", *common)
    assert res.exit_code == 0, res.output
    full = np.asarray(Image.open(tmp_path / "full.png")).astype(int)
    tiled = np.asarray(Image.open(tmp_path / "tiled.png")).astype(int)
    assert np.abs(full - tiled).max() <= 2


def test_munit_styles_named_and_distinct(tmp_path, munit_path):
    Image.fromarray(skimage.data.chelsea()[:64, :64]).save(tmp_path / "cat.png")
    res = run("apply", tmp_path / "cat.png", "-o", f"{tmp_path}/out/", "-m", munit_path,
              "--num-styles", "3", "--seed", "1", "--quiet")
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["cat_style0.png", "cat_style1.png", "cat_style2.png"]
    outs = [np.asarray(Image.open(tmp_path / "out" / n)).astype(int) for n in names]
    assert np.abs(outs[0] - outs[1]).mean() > 0.5
    res = run("apply", tmp_path / "cat.png", "-o", tmp_path / "guided.png", "-m", munit_path,
              "--style", tmp_path / "cat.png", "--direction", "b2a", "--quiet")
    assert res.exit_code == 0, res.output
    assert read_image(tmp_path / "guided.png").image.shape == (64, 64, 3)


def test_munit_styles_run_in_batches_and_alone_give_the_same_pixels(munit_path, monkeypatch):
    """Several styles run the frames in the runner's batches, each style the same batches (a style
    run alone gives its pixels bit for bit; with one frame at a time they moved by a grey level)."""
    from frametrans.apply import Translator
    from frametrans.apply.translator import run_variants
    from frametrans.engine.runner import Runner, RunnerOptions
    from frametrans.io.frame import Frame

    options = RunnerOptions(device="cpu", precision="fp32", batch_size=3, compile="off", backend="torch")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(7)] + \
        [rng.integers(0, 256, (16, 32, 3), dtype=np.uint8) for _ in range(2)]
    batches, launch = [], Runner._launch

    def counted(self, frames, images, *a, **k):
        batches.append(len(images))
        return launch(self, frames, images, *a, **k)
    monkeypatch.setattr(Runner, "_launch", counted)
    both = Translator.load(munit_path, options, num_styles=2, seed=1)
    outs = [dict(o) for _, o in run_variants([Frame(image=i) for i in images], both)]
    assert batches == [3, 3, 3, 3, 1, 1, 2, 2]  # per batch: style 0, then style 1
    alone = [dict(o) for _, o in run_variants([Frame(image=i) for i in images], both.subset(["_style1"]))]
    assert [list(o) for o in alone] == [["_style1"]] * 9
    assert all(np.array_equal(a["_style1"], b["_style1"]) for a, b in zip(outs, alone))


def test_style_i_of_a_seed_is_the_same_for_any_number_of_styles():
    """Style codes drawn one after the other: --num-styles 3 starts with --num-styles 2's codes
    (drawn together, as randn(k, style_dim), style 1 of 3 was not style 1 of 2 at style_dim 8)."""
    from frametrans.apply import Translator
    from frametrans.engine.runner import RunnerOptions
    from support import tiny_model

    model = tiny_model("munit", style_dim=8)
    options = RunnerOptions(device="cpu", precision="fp32")
    codes = {k: Translator(model, options, num_styles=k, seed=1).styles for k in (1, 2, 3, 8)}
    assert all(torch.equal(codes[8][i], codes[k][i]) for k in codes for i in range(k))
    assert len({tuple(c.flatten().tolist()) for c in codes[8]}) == 8 and codes[8][0].shape == (1, 8, 1, 1)


def test_a_subset_of_styles_shares_the_whole_translators_runners(munit_path):
    from frametrans.apply import Translator
    from frametrans.engine.runner import RunnerOptions

    whole = Translator.load(munit_path, RunnerOptions(device="cpu", precision="fp32"), num_styles=3, seed=1)
    part = whole.subset(["_style2", "_style0"])
    assert [v.suffix for v in part.variants] == ["_style0", "_style2"]
    assert [v.runner for v in part.variants] == [whole.variants[0].runner, whole.variants[2].runner]
    assert part.fingerprint() == whole.fingerprint() and whole.subset(["_style0", "_style1", "_style2"]) is whole
    smoothed = part.stream_variants(0.9)  # --temporal stats: made once, by the whole translator
    assert [v.suffix for v in smoothed] == ["_style0", "_style2"] and smoothed[0].smoother is not None
    assert smoothed == [v for v in whole.stream_variants(0.9) if v.suffix != "_style1"]
    assert part.subset(["_style2"]).stream_variants(0.9) == smoothed[1:]
    part.expect(40)
    assert whole._expected == (40,)  # the smoothed variants made later learn the job's length
    with pytest.raises(ValueError, match="no output variant"):
        whole.subset(["_style7"])


def test_skip_existing_runs_only_the_missing_styles(tmp_path, munit_path, monkeypatch):
    """Still images whose outputs exist in part run only the styles they still need."""
    from frametrans.apply import OutputOptions, Translator, apply_paths
    from frametrans.engine.runner import Runner, RunnerOptions

    options = RunnerOptions(device="cpu", precision="fp32", compile="off", backend="torch")
    translator = Translator.load(munit_path, options, num_styles=3, seed=1)
    for name in ("a", "b"):
        Image.fromarray(skimage.data.chelsea()[:24, :32]).save(tmp_path / f"{name}.png")
    (tmp_path / "out").mkdir()
    for k in (0, 1):
        (tmp_path / "out" / f"a_style{k}.png").write_bytes(b"kept")
    frames = {}
    launch = Runner._launch

    def counted(self, batch, images, *a, **k):
        frames[id(self)] = frames.get(id(self), 0) + len(images)
        return launch(self, batch, images, *a, **k)
    monkeypatch.setattr(Runner, "_launch", counted)
    report = apply_paths([str(tmp_path / "a.png"), str(tmp_path / "b.png")], str(tmp_path / "out"), translator,
                         OutputOptions(skip_existing=True, quiet=True))
    assert [frames.get(id(v.runner), 0) for v in translator.variants] == [1, 1, 2]
    assert sorted(p.name for p in report.written) == ["a_style2.png", "b_style0.png", "b_style1.png", "b_style2.png"]
    assert sorted(p.name for p in report.skipped) == ["a_style0.png", "a_style1.png"]


def test_skip_existing_keeps_each_munit_style_output(tmp_path, munit_path):
    """--skip-existing after a run whose style outputs were edited or removed in part: the outputs
    there are kept as they are (a user's edit included) and reported as skipped; only the missing
    ones are written, equal to a fresh run's. Still images, an animated WebP, a GIF (a video in one
    piece) and an MP4 (segmented)."""
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(skimage.data.chelsea()[:40, :48]).save(src / "cat.png")
    # another group of styles, and another size: no run batches it with cat (a batch of 2 may round
    # differently from a batch of 1, and only the fresh run has cat and dog in one group)
    Image.fromarray(skimage.data.astronaut()[:32, :48]).save(src / "dog.png")
    frames = [Image.fromarray(skimage.data.coffee()[i:i + 32, :40]) for i in (0, 4, 8)]
    frames[0].save(src / "anim.webp", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    make_clip(src / "clip.gif", n=3, h=32, w=40, codec="gif", pix_fmt="rgb8")
    make_clip(src / "clip.mp4", n=3, h=32, w=40)
    common = ["-m", munit_path, "--seed", "1", "--precision", "fp32", "--crf", "0", "--quiet"]
    assert run("apply", src, "-o", tmp_path / "fresh", "--num-styles", "3", *common).exit_code == 0
    out = tmp_path / "out"
    assert run("apply", src, "-o", out, "--num-styles", "3", *common).exit_code == 0
    names = ["cat{}.png", "anim{}.webp", "clip{}.gif", "clip{}.mp4"]
    for n in names:  # style0 edited by hand, style1 and (but for the video) style2 removed
        edited = out / n.format("_style0")
        edited.write_bytes(edited.read_bytes() + b"edited")
        (out / n.format("_style1")).unlink()
        if not n.endswith(".mp4"):
            (out / n.format("_style2")).unlink()
    (out / "dog_style2.png").unlink()
    before = {n: (out / n.format("_style0")).read_bytes() for n in names + ["dog{}.png"]}
    res = run("apply", src, "-o", out, "--num-styles", "3", "--skip-existing", *common[:-1])
    assert res.exit_code == 0, res.output
    assert "8 written" in res.output and "7 skipped" in res.output
    assert (out / "dog_style0.png").read_bytes() == before["dog{}.png"]
    assert np.array_equal(read_image(out / "dog_style2.png").image, read_image(tmp_path / "fresh" / "dog_style2.png").image)
    for n in names:
        assert (out / n.format("_style0")).read_bytes() == before[n]
        for k in ("_style1", "_style2"):  # the same pixels as the fresh run's (--crf 0: lossless)
            ours, fresh = (_decoded_frames(d / n.format(k)) for d in (out, tmp_path / "fresh"))
            assert len(ours) == len(fresh) and all(np.array_equal(a, b) for a, b in zip(ours, fresh)), n.format(k)
    assert sorted(p.name for p in out.iterdir()) == sorted(n.format(k) for n in names + ["dog{}.png"]
                                                           for k in ("_style0", "_style1", "_style2"))


def _decoded_frames(path: Path) -> list:
    from frametrans.io.images import iter_image_frames
    from frametrans.io.video import iter_video_frames

    frames = iter_video_frames(path) if path.suffix in (".mp4", ".gif") else iter_image_frames(path)
    return [f.image for f in frames]


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "must be > 0"),
    (["--device", "tpu"], "unknown device"),
    (["--device", "cuda"], "CUDA is not available"),
    (["--precision", "fp16", "--device", "cpu"], "fp16 is not supported on the CPU"),
    (["--tile", "64", "--tile-overlap", "64"], "too large"),
    (["--num-styles", "2"], "need a MUNIT model"),
])
def test_bad_options_rejected_before_work(tmp_path, resnet_path, args, message, capsys):
    """Through the real entry point, in this process (a new interpreter per case costs seconds)."""
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA present")
    Image.fromarray(skimage.data.coffee()[:32, :32]).save(tmp_path / "a.png")
    code, _, err = main_in_process(capsys, "apply", tmp_path / "a.png", "-o", tmp_path / "b.png",
                                   "-m", resnet_path, *args)
    assert code != 0
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "b.png").exists()


def test_verbose_apply_reports_time_by_stage(tmp_path, resnet_path, capsys):
    """`frametrans -v apply` ends with each stage's time per frame (a video: decode thread, the
    model's thread, encode thread); without -v that line stays out."""
    clip = tmp_path / "c.mp4"
    make_clip(clip, n=5)
    code, _, err = main_in_process(capsys, "-v", "apply", clip, "-o", tmp_path / "o.mp4", "-m", resnet_path)
    assert code == 0, err
    line = next(x for x in err.splitlines() if "per frame by stage" in x)
    for stage in ("decode", "main", "encode"):
        assert f"{stage} " in line and "ms CPU" in line
    code, _, err = main_in_process(capsys, "apply", clip, "-o", tmp_path / "o2.mp4", "-m", resnet_path)
    assert code == 0 and "per frame by stage" not in err
    code, _, err = main_in_process(capsys, "-v", "apply", clip, "-o", tmp_path / "o2.mp4", "-m", resnet_path,
                                   "--skip-existing")
    assert code == 0 and "per frame by stage" not in err  # nothing ran: no empty line


def test_video_stages_count_every_frame(tmp_path, resnet_path):
    from frametrans.apply import OutputOptions, Translator, apply_paths
    from frametrans.checkpoint import load_model
    from frametrans.engine.runner import RunnerOptions

    clip = tmp_path / "c.mp4"
    make_clip(clip, n=7)
    t = Translator(load_model(resnet_path), RunnerOptions(device="cpu", precision="fp32", compile="off"))
    report = apply_paths([str(clip)], str(tmp_path / "o.mp4"), t, OutputOptions(quiet=True))
    assert report.frames == 7
    assert {k: v.items for k, v in report.stages.items()} == {"decode": 7, "main": 7, "encode": 7}
    assert report.stages["main"].wall >= report.stages["main"].cpu > 0
