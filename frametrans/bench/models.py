"""The models the benchmarks run: an architecture name becomes a seeded random checkpoint, so
every path (in-process phases, whole processes, the reference loop) loads the same file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from frametrans.bench.common import make_frames
from frametrans.registry import IOContract, ModelConfig


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


# ----------------------------------------------------------------------------------- null model


@dataclass(frozen=True)
class NullConfig(ModelConfig):
    """The null model's config: RGB in, RGB out, values in [0, 1], any frame size."""

    channels: int = 3

    def contract(self) -> IOContract:
        return IOContract(value_range=(0.0, 1.0), size_multiple=1, in_channels=self.channels,
                          out_channels=self.channels)


class NullModel(torch.nn.Module):
    """The identity as a model: ``x`` [B, C, H, W] in [0, 1] comes back unchanged, so a frame goes
    through the whole apply path (upload, conversions, batching, queues, codecs) and comes out as
    it went in. Not in the registry (``frametrans models`` does not list it, checkpoints cannot
    name it): :func:`null_translator` builds it for ``frametrans bench pipeline``."""

    arch_name = "null"

    def __init__(self, config: NullConfig = NullConfig()) -> None:
        super().__init__()
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def null_translator(device: str = "auto", batch_size: Optional[int] = None, yuv: str = "auto") -> Any:
    """A :class:`~frametrans.apply.Translator` of :class:`NullModel` on ``device`` (fp32, eager),
    as ``frametrans apply`` would build one for a real model (``yuv``: ``RunnerOptions.yuv``)."""
    import dataclasses

    from frametrans.apply import Translator
    from frametrans.engine.runner import RunnerOptions

    fixed: Dict[str, Any] = {"device": device, "precision": "fp32", "compile": "off", "batch_size": batch_size,
                             "yuv": yuv}
    if "backend" in {f.name for f in dataclasses.fields(RunnerOptions)}:
        fixed["backend"] = "torch"  # the identity needs no graph runtime: torch runs it as it is
    return Translator(NullModel(), RunnerOptions(**fixed))
