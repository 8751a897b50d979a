"""Training pix2pix, CycleGAN, MUNIT and the next-frame predictor (installed as frametrans.train).

Python API::

    from frametrans.train import CycleGANOptions, train
    result = train("cyclegan", CycleGANOptions(data="horse2zebra", iters=1000), "runs/h2z")

The options classes import without torch (the CLI builds its flags from them); ``train`` and the
rest of :mod:`frametrans.train.trainer` load torch when first used.
"""

from typing import Any

from frametrans.train.options import (CycleGANOptions, MUNITOptions, Pix2PixOptions, PredictorOptions,
                                      TrainOptions)

__all__ = ["train", "TrainResult", "TrainingStopped", "TrainOptions", "Pix2PixOptions", "CycleGANOptions",
           "MUNITOptions", "PredictorOptions"]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainResult", "TrainingStopped"):
        from frametrans.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'frametrans.train' has no attribute {name!r}")
