"""Tiny training runs for tests: photos, options, exports, losses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List
import cv2
import numpy as np


FAST = dict(quiet=True, log_every=1, sample_every=1000, val_every=1000, save_every=1000)


def _photos(size: int = 32) -> List[np.ndarray]:
    from skimage import data

    return [cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
            for img in (data.astronaut(), data.chelsea(), data.coffee())]


def _write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def _target(rgb: np.ndarray) -> np.ndarray:
    return (255 - rgb)[:, ::-1].copy()  # a learnable, non-trivial mapping


def tiny(method: str, root: Path) -> Dict[str, Any]:
    """Options of a seconds-long run of ``method`` on the fixture data."""
    if method == "pix2pix":
        return dict(FAST, data=str(root / "aligned"), size=36, crop=32, num_downs=5, ngf=4, ndf=4,
                    n_layers_d=2, batch_size=2, iters=4)
    if method == "cyclegan":
        return dict(FAST, data=str(root / "unpaired"), size=36, crop=32, ngf=4, n_blocks=1, ndf=4,
                    n_layers_d=2, pool_size=2, batch_size=2, iters=4)
    if method == "munit":
        return dict(FAST, data=str(root / "unpaired"), size=32, crop=32, dim=4, style_dim=2, n_res=1,
                    mlp_dim=8, dis_dim=4, dis_layers=2, dis_scales=2, batch_size=2, iters=4, cyc_weight=1.0)
    if method == "predictor":
        return dict(FAST, data="moving-digits", size=32, context=3, horizon=2, width=4, depth=2,
                    batch_size=4, iters=4, val_count=4)
    raise AssertionError(method)


EXPORTS = {"pix2pix": ["G.safetensors"], "cyclegan": ["G_A.safetensors", "G_B.safetensors"],
           "munit": ["munit.safetensors"], "predictor": ["predictor.safetensors"]}


def losses_of(run: Path) -> List[Dict[str, float]]:
    lines = (run / "losses.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


def _tiny_args(method: str, root: Path) -> List[str]:
    args = []
    for k, v in tiny(method, root).items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args += [flag] if v else []
        else:
            args += [flag, str(v)]
    return args
