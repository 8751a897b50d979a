"""Import generator state dicts saved by pytorch-CycleGAN-and-pix2pix (``*_net_G*.pth``).

Upstream saves bare state dicts: no architecture name, no hyperparameters. Everything is inferred
from the tensor names and shapes:

* U-Net (``unet_128``, ``unet_256``, any depth): keys nest as ``model.model.1.model.3.model.3...``;
  the nesting depth is ``num_downs``, ``model.model.0.weight`` is [ngf, in, 4, 4] and the outermost
  up-conv ``model.model.3.weight`` is [2*ngf, out, 4, 4].
* ResNet (``resnet_6blocks``, ``resnet_9blocks``, any count): ``model.N.conv_block.J`` keys;
  ``model.1.weight`` is [ngf, in, 7, 7]; the conv positions J inside a block give the padding
  (1 and 5: padded, 0 and 3: zero) and the dropout (one more between the convs).
* norm: BatchNorm layers carry weight/bias/running stats and convs have no bias; InstanceNorm
  (affine=False) layers carry nothing and convs have a bias; neither: 'none'.

Old files carry InstanceNorm ``running_mean``/``running_var``/``num_batches_tracked``; upstream's
``load_networks`` drops them (its InstanceNorm tracks no statistics), and so do we. U-Net dropout
and ResNet 'replicate' padding leave no trace in the keys: they come back as False and 'reflect'.

Loading is up to the caller (``torch.load(path, weights_only=True)``); this module only maps a
state dict to ``(arch name, config, clean state dict)``.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

import torch
from torch import nn

from frametrans.registry import ModelConfig, get

PREFIXES = ("module.", "_orig_mod.")  # DataParallel, torch.compile
_STATS = ("running_mean", "running_var", "num_batches_tracked")
_RESNET_BLOCK = re.compile(r"^model\.(\d+)\.conv_block\.(\d+)\.")
_RESNET_FIRST_BLOCK = 10  # pad, conv, norm, relu, then 2 x (conv, norm, relu)
# conv positions inside ResnetBlock.conv_block -> (padding, dropout)
_RESNET_CONV_LAYOUTS = {(1, 5): ("reflect", False), (1, 6): ("reflect", True),
                        (0, 3): ("zero", False), (0, 4): ("zero", True)}


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove leading ``module.`` / ``_orig_mod.`` (in any order, any count) from every key."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise ValueError(f"state dict key {key!r} is not a string")
        name = key
        while name.startswith(PREFIXES):
            name = name.split(".", 1)[1]
        if name in out:
            raise ValueError(f"state dict has {name!r} both with and without a module. prefix")
        out[name] = value
    return out


def _layout(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """'unet', 'resnet' or None, from the key names alone (prefixes already stripped)."""
    keys = list(state)
    if not keys or not all(k.startswith("model.") for k in keys):
        return None
    if any(k.startswith("model.model.") for k in keys):
        return "unet"
    first = state.get("model.1.weight")
    if isinstance(first, torch.Tensor) and first.dim() == 4 and tuple(first.shape[2:]) == (7, 7):
        if all(re.match(r"^model\.\d+\.", k) for k in keys):
            return "resnet"
    return None


def looks_like_upstream(state: Mapping[str, torch.Tensor]) -> bool:
    """True when ``state`` has the key layout of an upstream U-Net or ResNet generator."""
    try:
        return _layout(strip_prefixes(state)) is not None
    except (ValueError, AttributeError):
        return False


def _weight(state: Mapping[str, torch.Tensor], key: str, arch: str, dims: int = 4) -> torch.Tensor:
    value = state.get(key)
    if not isinstance(value, torch.Tensor) or value.dim() != dims:
        found = "missing" if value is None else f"shape {_shape(value)}"
        raise ValueError(
            f"upstream {arch} generator: expected a {dims}-D tensor {key}, found {found}"
        )
    return value


def _shape(value: object) -> str:
    return str(list(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _norm(state: Mapping[str, torch.Tensor], norm_key: str, conv_key: str, arch: str) -> str:
    """'batch' when the norm layer has a weight, 'instance' when the conv before it has a bias."""
    has_norm, has_bias = norm_key in state, conv_key in state
    if has_norm and has_bias:
        raise ValueError(
            f"upstream {arch} generator: found both norm weights ({norm_key}) and conv biases "
            f"({conv_key}); expected one of them (batch or instance norm)"
        )
    return "batch" if has_norm else "instance" if has_bias else "none"


def _infer_unet(state: Mapping[str, torch.Tensor]) -> ModelConfig:
    from frametrans.models.unet import UNetConfig

    first = _weight(state, "model.model.0.weight", "unet")  # [ngf, in, 4, 4]
    last = _weight(state, "model.model.3.weight", "unet")  # ConvT [2*ngf, out, 4, 4]
    # Sequential of level 0 is model.model.; its inner block sits at index 1, deeper ones at 3.
    seqs = ["model.model."]
    while True:
        block = seqs[-1] + ("1." if len(seqs) == 1 else "3.")
        if not any(k.startswith(block + "model.") for k in state):
            break
        seqs.append(block + "model.")
    if len(seqs) < 2:
        raise ValueError("upstream unet generator: found no inner block under model.model.1.model.")
    inner = seqs[-1]  # innermost: LeakyReLU, conv, ReLU, convT, norm
    norm = _norm(state, inner + "4.weight", inner + "1.bias", "unet")
    return UNetConfig(
        in_channels=int(first.shape[1]),
        out_channels=int(last.shape[1]),
        num_downs=len(seqs),
        ngf=int(first.shape[0]),
        norm=norm,
        dropout=False,
    )


def _infer_resnet(state: Mapping[str, torch.Tensor]) -> ModelConfig:
    from frametrans.models.resnet import ResnetConfig

    first = _weight(state, "model.1.weight", "resnet")  # [ngf, in, 7, 7]
    convs: dict[int, set[int]] = {}
    for key, value in state.items():
        m = _RESNET_BLOCK.match(key)
        if m and key.endswith(".weight") and isinstance(value, torch.Tensor) and value.dim() == 4:
            convs.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    n_blocks = len(convs)
    expected = set(range(_RESNET_FIRST_BLOCK, _RESNET_FIRST_BLOCK + n_blocks))
    if set(convs) != expected:
        raise ValueError(
            f"upstream resnet generator: found residual blocks at model.{sorted(convs)}, "
            f"expected consecutive indices from model.{_RESNET_FIRST_BLOCK}"
        )
    padding, dropout = "reflect", False
    layouts = {tuple(sorted(v)) for v in convs.values()}
    if layouts:
        if len(layouts) > 1 or next(iter(layouts)) not in _RESNET_CONV_LAYOUTS:
            raise ValueError(
                f"upstream resnet generator: found conv_block conv positions {sorted(layouts)}, "
                f"expected one of {sorted(_RESNET_CONV_LAYOUTS)}"
            )
        padding, dropout = _RESNET_CONV_LAYOUTS[next(iter(layouts))]
    # after the blocks: 2 x (convT, norm, ReLU), pad, final conv 7x7
    last = _weight(state, f"model.{_RESNET_FIRST_BLOCK + n_blocks + 7}.weight", "resnet")
    return ResnetConfig(
        in_channels=int(first.shape[1]),
        out_channels=int(last.shape[0]),
        ngf=int(first.shape[0]),
        n_blocks=n_blocks,
        norm=_norm(state, "model.2.weight", "model.1.bias", "resnet"),
        dropout=dropout,
        padding=padding,
    )


def _fit(arch: str, config: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop InstanceNorm statistics, add missing BatchNorm counters, then check keys and shapes."""
    config.validate()
    with torch.device("meta"):  # shapes only, no memory
        model = get(arch).build(config)
    modules = dict(model.named_modules())
    expected = model.state_dict()
    for key in list(state):
        owner, _, leaf = key.rpartition(".")
        if leaf in _STATS and isinstance(modules.get(owner), nn.InstanceNorm2d):
            del state[key]  # upstream's __patch_instance_norm_state_dict does the same
    for key in expected:
        owner, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked" and key not in state:  # files saved before torch 0.4.1
            state[key] = torch.tensor(0, dtype=torch.long)
    what = f"{arch} {config}"
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"upstream {arch} file does not fit the inferred {what}: "
            f"missing {len(missing)} key(s) {missing[:3]}, "
            f"unexpected {len(unexpected)} {unexpected[:3]}"
        )
    for key, want in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            raise ValueError(
                f"upstream {arch} file: {key} has {_shape(got)}, the inferred {what} "
                f"expects {list(want.shape)}"
            )
    return state


def import_upstream_generator(
    state: Mapping[str, torch.Tensor],
) -> tuple[str, ModelConfig, dict[str, torch.Tensor]]:
    """Map an upstream generator state dict to ``(arch name, config, clean state dict)``.

    The clean state dict loads with ``load_state_dict(strict=True)`` into
    ``frametrans.registry.get(arch).build(config)``. Raises ``ValueError`` (one line: what was
    found vs expected) for an unknown layout or shapes that do not fit.
    """
    clean = strip_prefixes(state)
    arch = _layout(clean)
    if arch is None:
        sample = list(clean)[:3]
        raise ValueError(
            "not an upstream pix2pix/CycleGAN generator: expected keys like model.model.0.weight "
            f"(unet) or model.1.weight + model.10.conv_block.1.weight (resnet), found {sample}"
        )
    config = _infer_unet(clean) if arch == "unet" else _infer_resnet(clean)
    return arch, config, _fit(arch, config, clean)
