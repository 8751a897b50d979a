"""Every example runs, so none of them rots: the Python API script, the shell pipelines, the configs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from frametrans import zoo
from support.threads import user_env

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
needs_zoo = pytest.mark.skipif(
    not {"cyclegan", "pix2pix", "munit", "predictor"} <= set(zoo.names()), reason="bundled models missing")


@pytest.mark.parametrize("config", sorted((EXAMPLES / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_training_configs_resolve(config):
    from frametrans.train.trainer import read_config_file, resolve_options

    method = config.name.split("_")[0]
    options = resolve_options(method, read_config_file(config))
    assert options["iters"] > 0


@needs_zoo
@pytest.mark.slow
def test_python_api_example(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "python_api.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=user_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {p.name for p in tmp_path.iterdir()}
    assert {"astronaut_painted.png", "coffee_colourised.png", "astronaut_munit_style0.png",
            "astronaut_munit_style2.png", "digits_next"} <= names


@needs_zoo
@pytest.mark.slow
def test_shell_pipelines_example(tmp_path):
    env = user_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(EXAMPLES / "pipelines.sh"), str(tmp_path)], capture_output=True,
                          text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "clip_painted.mp4").stat().st_size > 10_000
    assert (tmp_path / "colour" / "astronaut.png").exists()
    assert (tmp_path / "xargs" / "coffee.jpg").exists()


@needs_zoo
@pytest.mark.slow
def test_readme_images_script(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "zoo" / "readme_images.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=user_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    import cv2

    assert cv2.imread(str(tmp_path / "clip_cyclegan.png")).shape == (180, 640, 3)
    assert cv2.imread(str(tmp_path / "predict_next.png")).shape == (512, 384, 3)


def test_unpaired_data_holds_out_the_demo_clip():
    """The bundled cyclegan's and munit's recipe data: their held-out pictures (chelsea, flower, the
    demo clip's own frames) never appear in training, and the two domains share no photo."""
    import numpy as np

    sys.path.insert(0, str(EXAMPLES / "zoo"))
    try:
        from make_data import CLIP_FRAMES, training_photos, unpaired_photos
    finally:
        sys.path.remove(str(EXAMPLES / "zoo"))
    a, b, held = unpaired_photos(training_photos())
    assert not set(a) & set(b) and not (set(a) | set(b)) & set(held)
    assert {"chelsea", "flower"} <= set(held) and len(held) == 2 + len(range(0, CLIP_FRAMES, 6))
    training = list(a.values()) + list(b.values())
    for name, img in held.items():
        assert not any(t.shape == img.shape and np.array_equal(t, img) for t in training), name
    assert min(int(n[4:]) for n in list(a) + list(b) if n.startswith("bbb_")) == CLIP_FRAMES


def test_gil_pressure_script_prints_its_table(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "gil_pressure.py"), "--size", "64x48", "--seconds", "0.1"],
                          capture_output=True, text=True, timeout=120, env=user_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and line.endswith("x |")]
    assert len(rows) == 7 and all(float(r.split("|")[2]) > 0 for r in rows)
    assert list(tmp_path.iterdir()) == []  # its files go to a temporary folder
