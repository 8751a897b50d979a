"""The architectures; importing this package registers each of them in :mod:`frametrans.registry`."""

from frametrans.models import munit, patchgan, predictor, resnet, unet  # noqa: F401
