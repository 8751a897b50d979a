"""What several training methods share beyond :mod:`frametrans.train.base`: the unpaired data of
CycleGAN and MUNIT. Method modules import from here, never from each other."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from frametrans.train.datasets import Augment, TrainDataset, UnpairedDataset, data_path, find_domains
from frametrans.train.options import CycleGANOptions, MUNITOptions


def build_unpaired_data(o: CycleGANOptions | MUNITOptions) -> Tuple[TrainDataset, List[Dict[str, torch.Tensor]], None]:
    """(unpaired training data, fixed (A, B) couples for the sample grids, no validation).

    --data DIR (trainA/ + trainB/ or A/ + B/) or --data-a X --data-b Y, each a folder of images, a
    folder of videos or a video; resized as --resize says (MUNIT: short side by default)."""
    augment = Augment(o.size, o.crop, o.flip, o.resize)
    a, b = find_domains(data_path(o.data), data_path(o.data_a), data_path(o.data_b), augment,
                        o.frame_every, o.max_frames)
    train = UnpairedDataset(a, b, augment, o.seed)
    return train, train.evaluation(o.sample_count), None
