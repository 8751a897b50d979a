"""The option schema machinery: frozen dataclasses whose fields carry help, choices and range.

A training method's options are one frozen dataclass (:mod:`frametrans.train.options`); each field
is declared with :func:`option`, which records in the field's metadata what the command line, the
``--config`` YAML file and the Python API all need:

    lr: float = option(2e-4, "Base learning rate.", low=0, low_open=True)

From that one declaration, :func:`specs` derives an :class:`OptionSpec` (name, type from the
annotation, default, help, choices, range), which

- checks a value given to the dataclass (:meth:`OptionSpec.check`, run by ``__post_init__``),
- parses a value from a YAML file or the command line (:meth:`OptionSpec.parse`),
- and describes the Click option (``cli/train_cmd.py`` generates the flags from it).

No torch here: ``frametrans train --help`` imports this module.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple, Type, TypeVar

_META = "frametrans.option"
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}

T = TypeVar("T", bound="OptionsBase")


def option(default: Any, help: str, *, choices: Iterable[Any] = (), low: Optional[float] = None,
           high: Optional[float] = None, low_open: bool = False, high_open: bool = False,
           default_text: Optional[str] = None, cli: bool = True) -> Any:
    """A dataclass field with its option metadata.

    choices: the allowed values (empty: any value of the field's type). low, high: the range of a
    number (inclusive; ``low_open``/``high_open`` make a bound exclusive). default_text: what
    ``--help`` shows as the default when it is derived (e.g. ``min(--size, 256)``). cli: False for
    fields whose flag is defined elsewhere (the shared ``--device`` and ``--quiet``).
    """
    meta = dict(help=help, choices=tuple(choices), low=low, high=high, low_open=low_open,
                high_open=high_open, default_text=default_text, cli=cli)
    return dataclasses.field(default=default, metadata={_META: meta})


def option_like(cls: type, name: str, default: Any) -> Any:
    """The field ``name`` of ``cls`` with another default (a method overriding a shared default)."""
    (base,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return dataclasses.field(default=default, metadata=base.metadata)


@dataclass(frozen=True)
class OptionSpec:
    """One option: ``name`` (underscored; the flag is ``--name-with-dashes``), ``kind`` (int,
    float, str or bool), ``optional`` (None allowed: unset, or derived at resolution)."""

    name: str
    kind: type
    optional: bool
    default: Any
    help: str
    choices: Tuple[Any, ...] = ()
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    default_text: Optional[str] = None
    cli: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        """The range as words (``> 0``, ``in [0, 1)``); '' when unbounded."""
        fmt = lambda v: str(int(v)) if float(v).is_integer() else str(v)  # noqa: E731
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{fmt(self.low)}, {fmt(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {fmt(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {fmt(self.high)}"
        return ""

    def check(self, value: Any) -> Any:
        """A value from Python code -> the value (ints widened to float for float options);
        ValueError naming the flag when its type, choice or range is wrong."""
        if value is None:
            if self.optional:
                return None
            raise ValueError(f"{self.flag} needs a value")
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.kind is str and isinstance(value, Path):
            value = str(value)
        if not isinstance(value, self.kind) or (self.kind is int and isinstance(value, bool)):
            raise ValueError(f"{self.flag} {value!r} is not {_kind_name(self.kind)}")
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.flag} {value!r} is not one of: {', '.join(map(str, self.choices))}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{self.flag} must be a finite number, got {value}")
        if not self._in_range(value):
            raise ValueError(f"{self.flag} must be {self.range_text()}, got {value}")
        return value

    def _in_range(self, v: Any) -> bool:
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        if self.high is not None and (v >= self.high if self.high_open else v > self.high):
            return False
        return True

    def parse(self, value: Any) -> Any:
        """A value from a YAML file or the command line (text, or what YAML made of it) -> the
        checked value; ValueError with a short reason."""
        if isinstance(value, str) and self.kind is not str:
            text = value.strip()
            try:
                if self.kind is bool:
                    if text.lower() not in _TRUE | _FALSE:
                        raise ValueError
                    value = text.lower() in _TRUE
                else:
                    value = self.kind(text)
            except ValueError:
                raise ValueError(f"{self.flag} {value!r} is not {_kind_name(self.kind)}") from None
        elif self.kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        elif self.kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        return self.check(value)

    def metavar(self) -> str:
        if self.choices:
            return "[" + "|".join(map(str, self.choices)) + "]"
        return {int: "INTEGER", float: "FLOAT", str: "TEXT", bool: "BOOLEAN"}[self.kind]


def _kind_name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "text", bool: "true or false"}[kind]


_SPECS: Dict[type, Tuple[OptionSpec, ...]] = {}


def specs(cls: type) -> Tuple[OptionSpec, ...]:
    """The option specs of an options dataclass, in field order (computed once per class)."""
    if cls in _SPECS:
        return _SPECS[cls]
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_META)
        if meta is None:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with option()")
        kind, optional = _unwrap(hints[f.name])
        out.append(OptionSpec(f.name, kind, optional, f.default, **meta))
    _SPECS[cls] = tuple(out)
    return _SPECS[cls]


def _unwrap(hint: Any) -> Tuple[type, bool]:
    """``int`` -> (int, False); ``Optional[int]`` -> (int, True)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return hint, False


def spec_of(cls: type) -> Dict[str, OptionSpec]:
    return {s.name: s for s in specs(cls)}


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptionsBase:
    """Base of the options dataclasses: every field is checked when an instance is made, so an
    instance always holds valid values (types, choices, ranges, :meth:`check_together`)."""

    def __post_init__(self) -> None:
        for spec in specs(type(self)):
            value = getattr(self, spec.name)
            checked = spec.check(value)
            if checked is not value:
                object.__setattr__(self, spec.name, checked)
        self.check_together()

    def check_together(self) -> None:
        """Rules that involve several fields (subclasses extend it)."""

    def __getitem__(self, name: str) -> Any:
        """Read an option by its name (the key of a config file), as ``getattr``."""
        if name not in self.__dataclass_fields__:
            raise KeyError(name)
        return getattr(self, name)

    def to_dict(self) -> Dict[str, Any]:
        """Every option -> value, plain Python values (the YAML config and state.pt carry this)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def given(self) -> Dict[str, Any]:
        """The options whose values differ from the class defaults."""
        return {s.name: getattr(self, s.name) for s in specs(type(self)) if getattr(self, s.name) != s.default}

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)


def parse_layer(cls: Type[OptionsBase], raw: Mapping[str, Any], source: str) -> Dict[str, Any]:
    """A mapping of option names (dashes or underscores) to raw values -> parsed values.

    None values stay None (= not set in this layer). ValueError ``SOURCE: ...`` on an unknown name
    or a bad value, one line."""
    known = spec_of(cls)
    out: Dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        spec = known.get(name)
        if spec is None:
            raise ValueError(f"{source}: unknown option {key!r} (known: {', '.join(sorted(known))})")
        try:
            out[name] = None if value is None else spec.parse(value)
        except ValueError as exc:
            raise ValueError(f"{source}: {name}: {exc}") from None
    return out


def check_layer(cls: Type[OptionsBase], layer: Mapping[str, Any], what: str) -> None:
    """ValueError naming the unknown keys of ``layer`` (``what``: e.g. 'pix2pix')."""
    unknown = sorted(set(layer) - set(spec_of(cls)))
    if unknown:
        raise ValueError(f"unknown option(s) for {what}: {', '.join(unknown)}")


def merge_layers(*layers: Mapping[str, Any]) -> Dict[str, Any]:
    """Merge option dicts, lowest priority first; None values do not override.

    The run length is one setting: a layer that sets ``iters`` clears an ``epochs`` from lower
    layers and the other way round (so ``--iters`` on the CLI wins over a saved ``epochs``).
    """
    merged: Dict[str, Any] = {}
    for layer in layers:
        given = {k: v for k, v in layer.items() if v is not None}
        if "iters" in given and "epochs" in given:
            raise ValueError("give --iters or --epochs, not both")
        if "iters" in given:
            merged["epochs"] = None
        if "epochs" in given:
            merged["iters"] = None
        merged.update(given)
    return merged


def read_config_file(path: Path) -> Dict[str, Any]:
    """A YAML mapping of option names (dashes or underscores) to values, names underscored."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}
