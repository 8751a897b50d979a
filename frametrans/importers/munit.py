"""Import NVlabs/MUNIT generator checkpoints (``gen_XXXXXXXX.pt``).

Such a file holds ``{'a': state_dict of AdaINGen, 'b': state_dict of AdaINGen}``; load it with
``torch.load(path, map_location='cpu', weights_only=True)`` and hand the dict to
:func:`import_munit`. The architecture is read off the tensor names and shapes:

    in_channels, dim       enc_content.model.0.conv.weight      [dim, in_channels, 7, 7]
    n_downsample           stride-2 blocks enc_content.model.{1..n}.conv.weight
    n_res                  enc_content.model.{n+1}.model.{k}  (residual blocks)
    n_style_downsample     enc_style.model.{1..m}.conv.weight
    style_dim              enc_style.model.{m+2}.weight         [style_dim, D, 1, 1]
    mlp_dim, n_mlp_blocks  mlp.model.{i}.fc.weight
    activ == 'prelu'       ....activation.weight (PReLU is the only activation with weights)

``activ`` (other than prelu) and ``pad_type`` leave no trace in the weights; they come from the
upstream YAML (``yaml_config['gen']``) or default to upstream's relu / reflect.

Files trained with PyTorch 0.3 (and with the May 2018 code) also carry running statistics of the
content encoder's InstanceNorm layers; upstream master ignores them (it normalises every image by
its own statistics, see its ``pytorch03_to_pytorch04``), and so do we: they are dropped.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from frametrans.models.munit import ACTIVATIONS, MUNIT, PAD_TYPES, MUNITConfig

ARCH_NAME = "munit"

# running statistics of the content encoder's InstanceNorm layers (old files only)
_STALE_IN_STATS = re.compile(
    r"^enc_content\.model\.\d+\.(model\.\d+\.model\.\d+\.)?norm\."
    r"(running_mean|running_var|num_batches_tracked)$"
)
# the conv of an AdaIN block in the decoder's residual blocks
_ADAIN_CONV_BIAS = re.compile(r"^dec\.model\.0\.model\.\d+\.model\.\d+\.conv\.bias$")


def looks_like_munit(state: Any) -> bool:
    """Whether ``state`` (what ``torch.load`` returned) is a MUNIT ``gen_*.pt`` dict."""
    if not isinstance(state, Mapping) or not {"a", "b"} <= set(state):
        return False
    gen = state["a"]
    if not isinstance(gen, Mapping):
        return False
    return any(
        isinstance(k, str) and _strip_prefix(k) == "enc_content.model.0.conv.weight" for k in gen
    )


def import_munit(
    state: Mapping[str, Any], yaml_config: Optional[Mapping[str, Any]] = None
) -> Tuple[str, MUNITConfig, Dict[str, torch.Tensor]]:
    """Turn an upstream ``{'a': ..., 'b': ...}`` generator dict into ``('munit', config, weights)``.

    yaml_config: the upstream YAML parsed with ``yaml.safe_load``; ``gen.activ`` and
        ``gen.pad_type`` are taken from it, and its other ``gen`` sizes and ``input_dim_a/b``
        are checked against the weights.
    Returns the state dict with ``gen_a.`` / ``gen_b.`` prefixes, which loads strictly into
    ``MUNIT(config)``. Raises a one-line ``ValueError`` on anything it does not recognise.
    """
    if not isinstance(state, Mapping) or not {"a", "b"} <= set(state):
        found = sorted(map(str, state))[:5] if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(
            f"not a MUNIT generator file: found {found}, expected the keys 'a' and 'b'"
        )
    gens = {d: _clean(state[d], d) for d in ("a", "b")}
    found = {d: _infer(gens[d], d) for d in ("a", "b")}
    if found["a"] != found["b"]:
        a, b = found["a"], found["b"]
        diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
        raise ValueError(
            f"generators a and b differ in {diff} (a, b); expected one shared architecture"
        )
    inferred = found["a"]

    gen_yaml = _gen_section(yaml_config)
    _check_yaml_sizes(inferred, gen_yaml, yaml_config)
    activ = _pick_activ(inferred.pop("prelu"), gen_yaml)
    pad_type = str(gen_yaml.get("pad_type", "reflect"))
    if pad_type not in PAD_TYPES:
        raise ValueError(f"yaml gen.pad_type={pad_type!r} is not one of: {', '.join(PAD_TYPES)}")

    config = MUNITConfig(activ=activ, pad_type=pad_type, **inferred)
    config.validate()
    weights = {f"gen_{d}.{k}": v for d in ("a", "b") for k, v in gens[d].items()}
    _check_against_model(config, weights)
    return ARCH_NAME, config, weights


# --------------------------------------------------------------------------------------------
# Cleaning and inference
# --------------------------------------------------------------------------------------------


def _strip_prefix(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


def _clean(gen: Any, domain: str) -> Dict[str, torch.Tensor]:
    """Strip ``module.``, drop stale InstanceNorm statistics, fill missing dummy AdaIN buffers."""
    if not isinstance(gen, Mapping):
        raise ValueError(f"state[{domain!r}] is a {type(gen).__name__}, expected a state dict")
    out: Dict[str, torch.Tensor] = {}
    for key, value in gen.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(
                f"state[{domain!r}] entry {key!r} is a {type(value).__name__}, expected a tensor"
            )
        key = _strip_prefix(key)
        if _STALE_IN_STATS.match(key):
            continue
        out[key] = value
    # AdaIN's running_mean/running_var are unused placeholders; tolerate files without them
    for key in [k for k in out if _ADAIN_CONV_BIAS.match(k)]:
        stem = key[: -len("conv.bias")] + "norm."
        channels = out[key].shape[0]
        out.setdefault(stem + "running_mean", torch.zeros(channels))
        out.setdefault(stem + "running_var", torch.ones(channels))
    return out


def _shape(gen: Mapping[str, torch.Tensor], key: str, domain: str, ndim: int) -> Tuple[int, ...]:
    if key not in gen:
        raise ValueError(
            f"generator {domain}: missing {key}; expected an upstream AdaINGen state dict"
        )
    shape = tuple(gen[key].shape)
    if len(shape) != ndim:
        raise ValueError(f"generator {domain}: {key} has shape {shape}, expected {ndim} dimensions")
    return shape


def _count(gen: Mapping[str, torch.Tensor], pattern: str, start: int) -> int:
    """How many consecutive i >= start have ``pattern.format(i)`` in ``gen``."""
    i = start
    while pattern.format(i) in gen:
        i += 1
    return i - start


def _infer(gen: Mapping[str, torch.Tensor], domain: str) -> Dict[str, Any]:
    """Sizes of one AdaINGen from its tensor shapes (plus a 'prelu' flag)."""
    dim, in_channels, k, _ = _shape(gen, "enc_content.model.0.conv.weight", domain, 4)
    if k != 7:
        raise ValueError(
            f"generator {domain}: enc_content.model.0.conv.weight has a {k}x{k} kernel, "
            "expected 7x7"
        )
    n_down = _count(gen, "enc_content.model.{}.conv.weight", 1)
    res = 1 + n_down
    n_res = _count(gen, f"enc_content.model.{res}.model.{{}}.model.0.conv.weight", 0)
    if n_res == 0:
        raise ValueError(
            f"generator {domain}: no residual blocks at enc_content.model.{res}; "
            "expected an upstream AdaINGen state dict"
        )
    n_style_blocks = _count(gen, "enc_style.model.{}.conv.weight", 0)
    if n_style_blocks < 3:
        raise ValueError(
            f"generator {domain}: {n_style_blocks} conv blocks in enc_style, expected at least 3"
        )
    style_key = f"enc_style.model.{n_style_blocks + 1}.weight"
    style_dim = _shape(gen, style_key, domain, 4)[0]
    n_mlp = _count(gen, "mlp.model.{}.fc.weight", 0)
    if n_mlp < 2:
        raise ValueError(f"generator {domain}: {n_mlp} linear layers in mlp, expected at least 2")
    mlp_dim = _shape(gen, "mlp.model.0.fc.weight", domain, 2)[0]
    prelu = any(k.endswith("activation.weight") for k in gen)
    return dict(
        in_channels=in_channels,
        dim=dim,
        style_dim=style_dim,
        n_downsample=n_down,
        n_res=n_res,
        mlp_dim=mlp_dim,
        n_style_downsample=n_style_blocks - 1,
        n_mlp_blocks=n_mlp,
        prelu=prelu,
    )


# --------------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------------


def _gen_section(yaml_config: Optional[Mapping[str, Any]]) -> Mapping[str, Any]:
    if yaml_config is None:
        return {}
    if not isinstance(yaml_config, Mapping):
        raise ValueError(f"yaml config is a {type(yaml_config).__name__}, expected a mapping")
    gen = yaml_config.get("gen", {})
    if not isinstance(gen, Mapping):
        raise ValueError(f"yaml 'gen' is a {type(gen).__name__}, expected a mapping of options")
    return gen


def _check_yaml_sizes(
    inferred: Mapping[str, Any],
    gen_yaml: Mapping[str, Any],
    yaml_config: Optional[Mapping[str, Any]],
) -> None:
    """The sizes the YAML states must agree with the weights."""
    sizes = ("dim", "style_dim", "n_downsample", "n_res", "mlp_dim")
    stated = {k: gen_yaml[k] for k in sizes if k in gen_yaml}
    for key in ("input_dim_a", "input_dim_b"):
        if yaml_config is not None and key in yaml_config:
            stated[key] = yaml_config[key]
    for key, value in stated.items():
        weight_key = "in_channels" if key.startswith("input_dim") else key
        found = inferred[weight_key]
        if value != found:
            raise ValueError(f"yaml says {key}={value!r} but the weights have {weight_key}={found}")


def _pick_activ(prelu_in_weights: bool, gen_yaml: Mapping[str, Any]) -> str:
    activ = gen_yaml.get("activ")
    if activ is None:
        return "prelu" if prelu_in_weights else "relu"
    activ = str(activ)
    if activ not in ACTIVATIONS:
        raise ValueError(f"yaml gen.activ={activ!r} is not one of: {', '.join(ACTIVATIONS)}")
    if (activ == "prelu") != prelu_in_weights:
        has = "has" if prelu_in_weights else "has no"
        raise ValueError(f"yaml says gen.activ={activ!r} but the file {has} PReLU weights")
    return activ


# --------------------------------------------------------------------------------------------
# Final check
# --------------------------------------------------------------------------------------------


def _check_against_model(config: MUNITConfig, weights: Mapping[str, torch.Tensor]) -> None:
    """Names and shapes must match ``MUNIT(config)`` exactly (built on the meta device).

    The meta device allocates nothing; its first use in a process costs about two seconds.
    """
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in MUNIT(config).state_dict().items()}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) e.g. {unexpected[:3]}")
        raise ValueError(f"MUNIT file does not match the inferred {config}: {'; '.join(parts)}")
    for key, shape in expected.items():
        if tuple(weights[key].shape) != shape:
            raise ValueError(
                f"{key} has shape {tuple(weights[key].shape)}, expected {shape} for {config}"
            )
