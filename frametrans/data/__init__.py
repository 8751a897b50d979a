"""Datasets generated on the fly for training and benchmarking (no Click, no training loop here)."""

from frametrans.data.moving_digits import (
    SOURCES,
    TEST_SEED,
    VALIDATION_SEED,
    DataSourceError,
    Datasets,
    MovingDigits,
    load_digits,
    make_datasets,
    read_idx_images,
)

__all__ = [
    "SOURCES", "TEST_SEED", "VALIDATION_SEED", "DataSourceError", "Datasets", "MovingDigits",
    "load_digits", "make_datasets", "read_idx_images",
]
