"""Make the README's pictures with the bundled models, through the CLI as a user runs it.

    python examples/zoo/readme_images.py [OUT_DIR]      # default: docs/images

- clip_cyclegan.png: frame 40 of examples/data/clip.mp4 | the bundled cyclegan's output, each
  320x180 (from `frametrans apply examples/data/clip.mp4 -o ... --model cyclegan`).
- predict_next.png: last context frame | prediction | truth for predicted frames 1, 4, 7 and 10 of
  `frametrans predict-next examples/data/moving_digits.mp4 --side-by-side --eval`, shown 2x.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data"


def _frame(path: Path, index: int) -> np.ndarray:
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i == index:
                return f.to_ndarray(format="rgb24")
    raise ValueError(f"{path} has no frame {index}")


def _run(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "frametrans.cli", *args, "--quiet"], check=True)


def _save(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    print(path, rgb.shape[1], "x", rgb.shape[0])


def clip_cyclegan(out: Path, tmp: Path) -> None:
    painted = tmp / "painted.mp4"
    _run("apply", str(DATA / "clip.mp4"), "-o", str(painted), "--model", "cyclegan", "--crf", "12")
    halves = [cv2.resize(_frame(p, 40), (320, 180), interpolation=cv2.INTER_AREA)
              for p in (DATA / "clip.mp4", painted)]
    _save(out / "clip_cyclegan.png", np.hstack(halves))


def predict_next(out: Path, tmp: Path) -> None:
    frames = tmp / "pred"
    _run("predict-next", str(DATA / "moving_digits.mp4"), "-o", str(frames), "--side-by-side", "--eval")
    pngs = sorted(frames.glob("*.png"))
    rows = [cv2.cvtColor(cv2.imread(str(pngs[i])), cv2.COLOR_BGR2RGB) for i in (0, 3, 6, 9)]
    grid = np.vstack(rows)
    _save(out / "predict_next.png", cv2.resize(grid, (grid.shape[1] * 2, grid.shape[0] * 2),
                                              interpolation=cv2.INTER_NEAREST))


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clip_cyclegan(out, Path(tmp))
        predict_next(out, Path(tmp))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "images")
