"""The runner's forward functions: ``forward(model, x)``, how the model is called on a padded batch,
and how the graph and compile caches name one."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from frametrans.engine.backends import stateful

__all__ = ["ForwardFn", "default_forward", "forward_token"]

#: ``forward(model, x [B, C, H, W]) -> [B, C_out, H, W]``.
ForwardFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def default_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def forward_token(forward: ForwardFn) -> Optional[str]:
    """How the graph cache names ``forward``: ``""`` for :func:`default_forward`, its ``cache_token``,
    or None (not cacheable). A smoothed forward (``--temporal stats``) is named by the forward it
    wraps, plus :data:`~frametrans.engine.backends.stateful.TOKEN` (its graph carries the state)."""
    smoothed = getattr(forward, "smoother", None) is not None
    inner = forward.__wrapped__ if smoothed else forward  # type: ignore[attr-defined]
    token = "" if inner is default_forward else getattr(inner, "cache_token", None)
    return f"{token}|{stateful.TOKEN}" if smoothed and token is not None else token
