"""The models the benchmarks run: an architecture name becomes a seeded random checkpoint, so
every path (in-process phases, whole processes, the reference loop) loads the same file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch

from frametrans.bench.common import make_frames


def prepare_model(model: str, workdir: Path, config: Optional[Dict[str, Any]] = None, seed: int = 0) -> Path:
    """A checkpoint path for ``model``: an architecture name (``resnet``, ``unet``...) is built with
    ``config`` overrides, initialised from ``seed`` and saved under ``workdir``; anything else is a
    checkpoint path or bundled name, returned resolved."""
    from frametrans import registry
    from frametrans.checkpoint import resolve, save_model
    from frametrans.models.layers import init_weights

    if model in registry.names():
        arch = registry.get(model)
        cfg = arch.config_from_dict(dict(config or {}))
        net = arch.build(cfg)
        init_weights(net, "normal", 0.02, generator=torch.Generator().manual_seed(seed))
        _calibrate_batch_norm(net, seed)
        tag = "_".join(f"{k}{v}" for k, v in sorted((config or {}).items()))
        Path(workdir).mkdir(parents=True, exist_ok=True)
        path = Path(workdir) / f"{model}{'_' + tag if tag else ''}_seed{seed}.safetensors"
        save_model(net, path, provenance={"bench": f"random init, seed {seed}"})
        return path
    if config:
        raise ValueError("--config overrides apply to architecture names, not to checkpoints")
    return resolve(model)


def _calibrate_batch_norm(net: torch.nn.Module, seed: int, side: int = 256) -> None:
    """Give batch-norm layers the running statistics of real-looking frames (a few forwards in
    train mode), so a randomly initialised U-Net is not degenerate in eval mode: with N(0, 0.02)
    weights and unit running variances its activations shrink layer by layer to ~0 (a constant
    output, denormal floats), which says nothing about speed or precision.

    Training-like, not inference: the module is left in train mode; only its saved state (running
    statistics included) matters to the caller."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    contract = net.config.contract()
    m = contract.size_multiple
    side = max(side, m) // m * m
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    net.train()
    frames = [torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1
              for img in make_frames(side, side, 4, seed)]
    c = contract.in_channels
    with torch.no_grad():
        for i in range(0, len(frames), 2):  # batches of two different frames
            x = torch.stack(frames[i:i + 2])[:, :c]
            net(x.repeat(1, -(-c // x.shape[1]), 1, 1)[:, :c])
    for bn in norms:
        bn.momentum = 0.1


def describe_model(model: torch.nn.Module) -> str:
    """``resnet(ngf=64, ...), 11.4 M parameters``."""
    cfg = getattr(model, "config", None)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    fields = ", ".join(f"{k}={v}" for k, v in (cfg.to_dict().items() if cfg is not None else []))
    return f"{type(model).arch_name}({fields}), {params:.1f} M parameters"
