"""Architecture registry: name -> (module class, config dataclass), plus the I/O contract.

Every architecture in :mod:`frametrans.models` registers itself with :func:`register`. The config
dataclass is frozen and holds exactly the constructor arguments, so ``arch name + config`` rebuilds
the module (that is what our checkpoints store). The config also answers :meth:`contract`, the
facts the engine needs to feed the model: value range, size multiple, channels, frames, style code.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple, Type

# Hard limits for configs read from files: an absurd config is refused before any allocation.
MAX_CHANNELS = 4096
MAX_BLOCKS = 64


@dataclass(frozen=True)
class IOContract:
    """What the engine must know to feed a model and read its output.

    value_range: the range of input and output pixel values, (-1.0, 1.0) for the tanh generators,
        (0.0, 1.0) for the next-frame predictor.
    size_multiple: height and width of the input must be multiples of this (pad, then crop back).
    in_channels / out_channels: channels of one frame in and out (3 for RGB, 1 for grayscale).
    frames_in / frames_out: frames stacked along channels (1 for image-to-image models).
    style_dim: length of the style code the model takes (0: no style code).
    """

    value_range: Tuple[float, float]
    size_multiple: int
    in_channels: int
    out_channels: int
    frames_in: int = 1
    frames_out: int = 1
    style_dim: int = 0

    @property
    def takes_style(self) -> bool:
        return self.style_dim > 0

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


class ModelConfig:
    """Mixin for the frozen config dataclasses of every architecture."""

    def contract(self) -> IOContract:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when a value is out of its sane range."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int):
                continue
            limit = MAX_BLOCKS if _is_count(f.name) else MAX_CHANNELS
            if not 0 <= value <= limit:
                raise ValueError(f"config field {f.name}={value} is out of range 0..{limit}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def _is_count(field_name: str) -> bool:
    return field_name.startswith(("n_", "num_")) or field_name in {"depth", "context", "horizon"}


@dataclass(frozen=True)
class Architecture:
    """A registered architecture: its name, config class and module class."""

    name: str
    config_cls: Type[Any]
    module_cls: Type[Any]
    role: str  # "generator", "discriminator", "munit" or "predictor"

    def config_from_dict(self, values: Dict[str, Any]) -> Any:
        """Build and validate the config from plain values (e.g. JSON read from a checkpoint)."""
        known = {f.name: f for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown config field(s) for {self.name}: {', '.join(unknown)}")
        hints = typing.get_type_hints(self.config_cls)
        coerced = {k: _checked(self.name, k, v, hints.get(k)) for k, v in values.items()}
        config = self.config_cls(**coerced)
        config.validate()
        return config

    def build(self, config: Any) -> Any:
        return self.module_cls(config)


def _checked(arch: str, name: str, value: Any, hint: Any) -> Any:
    """Check a config value read from a file against the field's type; tuples come back from JSON
    lists. Raises ValueError naming the field, so a bad file never reaches torch."""
    if isinstance(value, list):
        return tuple(value)
    ok = {
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        bool: lambda v: isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
        str: lambda v: isinstance(v, str),
    }.get(hint)
    if ok is not None and not ok(value):
        raise ValueError(f"config field {name}={value!r} of {arch} must be {hint.__name__}")
    return value


_REGISTRY: Dict[str, Architecture] = {}


def register(name: str, config_cls: Type[Any], role: str) -> Callable[[Type[Any]], Type[Any]]:
    """Class decorator: ``@register("resnet_generator", ResnetConfig, "generator")``."""

    def wrap(module_cls: Type[Any]) -> Type[Any]:
        if name in _REGISTRY and _REGISTRY[name].module_cls is not module_cls:
            raise ValueError(f"architecture {name!r} registered twice")
        _REGISTRY[name] = Architecture(name, config_cls, module_cls, role)
        module_cls.arch_name = name
        return module_cls

    return wrap


def get(name: str) -> Architecture:
    """The architecture registered under ``name``; ValueError listing the known names otherwise."""
    _load_models()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown architecture {name!r}; known: {known}") from None


def names() -> list[str]:
    _load_models()
    return sorted(_REGISTRY)


def _load_models() -> None:
    import frametrans.models  # noqa: F401  (importing registers every architecture)
