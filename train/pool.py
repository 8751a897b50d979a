"""The image history buffer of Shrivastava et al., as pytorch-CycleGAN-and-pix2pix uses it.

The discriminator sees a mix of the newest fakes and older ones, which damps oscillation. The pool
owns a ``torch.Generator`` (passed in), and :meth:`ImagePool.state_dict` carries the stored images
and that generator's state, so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch


class ImagePool:
    """Up to ``size`` past images; :meth:`query` returns a batch mixing new and stored ones.

    size: 0 disables the pool (query returns its input).
    generator: a CPU ``torch.Generator`` for the coin flips and slot choices.
    """

    def __init__(self, size: int, generator: torch.Generator) -> None:
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.size = size
        self.generator = generator
        self.images: List[torch.Tensor] = []  # each [C, H, W], detached

    def __len__(self) -> int:
        return len(self.images)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] (any device/dtype) -> [B, C, H, W], detached.

        While the pool is filling, each image is stored and returned. Once full, each image is
        returned with probability 1/2; otherwise it replaces a random stored image, which is
        returned in its place (upstream behaviour).
        """
        if self.size == 0:
            return images.detach()
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
                continue
            if torch.rand((), generator=self.generator).item() > 0.5:
                slot = int(torch.randint(0, self.size, (), generator=self.generator).item())
                old = self.images[slot].to(device=image.device, dtype=image.dtype)
                self.images[slot] = image.clone()
                out.append(old)
            else:
                out.append(image)
        return torch.stack(out, dim=0)

    def state_dict(self) -> Dict[str, Any]:
        """Plain containers: the stored images (on the CPU) and the generator state."""
        return {
            "size": self.size,
            "images": [img.detach().cpu() for img in self.images],
            "rng": self.generator.get_state(),
        }

    def load_state_dict(self, state: Dict[str, Any], device: torch.device | None = None) -> None:
        if int(state["size"]) != self.size:
            raise ValueError(f"pool size in the saved state is {state['size']}, this run uses {self.size}")
        self.images = [img.to(device) if device is not None else img for img in state["images"]]
        self.generator.set_state(state["rng"])
