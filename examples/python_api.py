"""The Python API in five steps: run with `python examples/python_api.py OUT_DIR`.

Uses the bundled models and the sample files in examples/data; writes into OUT_DIR.
"""

import sys
from pathlib import Path

import numpy as np

from frametrans.apply import OutputOptions, Translator, apply_paths
from frametrans.checkpoint import load_model, read_info
from frametrans.engine.runner import Runner, RunnerOptions
from frametrans.io.images import read_image, write_image

DATA = Path(__file__).resolve().parent / "data"
out = Path(sys.argv[1] if len(sys.argv) > 1 else "api_out")
out.mkdir(parents=True, exist_ok=True)

# 1. what is in a checkpoint (bundled name, our .safetensors, or a foreign .pth/.pt)
info = read_info(DATA.parent.parent / "frametrans" / "zoo" / "cyclegan.safetensors")
print(info.architecture, info.config, info.contract, sep="\n")

# 2. files and folders, exactly like the CLI (outputs written atomically, failures reported)
translator = Translator.load("cyclegan", RunnerOptions(precision="auto"))
report = apply_paths([str(DATA / "astronaut.png")], str(out / "astronaut_painted.png"), translator,
                     OutputOptions(overwrite=True, quiet=True))
print("written:", report.written, "failed:", report.failed)

# 3. numpy in, numpy out: any size, uint8 or uint16, batched when sizes match
runner = Runner(load_model("pix2pix"), RunnerOptions(batch_size=2))
gray = read_image(DATA / "coffee.jpg").image.mean(axis=2, keepdims=True).astype(np.uint8)
colour = runner([gray, gray[:, ::-1].copy()])
write_image(out / "coffee_colourised.png", colour[0])

# 4. MUNIT: three sampled styles, each fixed for a whole clip
styles = Translator.load("munit", num_styles=3, seed=1)
image = read_image(DATA / "astronaut.png").image
for variant in styles.variants:
    write_image(out / f"astronaut_munit{variant.suffix}.png", variant.runner([image])[0])

# 5. next frames of a clip
from frametrans.predict_next import PredictOptions, predict_next  # noqa: E402

predict_next(str(DATA / "moving_digits.mp4"), str(out / "digits_next"),
             PredictOptions(model="predictor", side_by_side=True, overwrite=True, quiet=True))
print("done:", sorted(p.name for p in out.iterdir()))
