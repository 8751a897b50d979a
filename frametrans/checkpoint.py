"""Self-describing checkpoints: safetensors weights + metadata that rebuilds the model.

Our format is one ``.safetensors`` file whose string metadata holds::

    frametrans_format  "1"
    architecture       registry name, e.g. "resnet"
    config             JSON of the frozen config dataclass (the constructor arguments)
    contract           JSON of the I/O contract (informational; recomputed from the config)
    provenance         JSON: how it was made (trainer, data, steps, date, importer)

Foreign checkpoints (pytorch-CycleGAN-and-pix2pix ``*_net_G*.pth``, MUNIT ``gen_*.pt``) are read
with ``torch.load(weights_only=True)``, recognised by their key layout and converted. Nothing here
ever unpickles arbitrary objects.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from frametrans import registry
from frametrans.atomic import atomic_path
from frametrans.io.errors import first_line

FORMAT_VERSION = "1"

# Bounds checked before anything is read or allocated (see README, "Untrusted checkpoints").
MAX_PARAMETERS = 2_000_000_000  # the model, counted on an empty "meta" copy
MAX_HEADER_BYTES = 100_000_000  # a safetensors JSON header (the safetensors library's own bound)
MAX_METADATA_VALUE_BYTES = 1_000_000  # one metadata string (provenance is the largest)
MAX_CONFIG_BYTES = 64_000  # the config JSON: a dozen fields
MAX_PICKLE_BYTES = 32_000_000  # data.pkl of a .pth zip: ~200 B per tensor
MAX_SMALL_RECORD_BYTES = 64_000  # version, byteorder, ... records of a .pth zip
MAX_STORAGE_BYTES = 4 * MAX_PARAMETERS  # tensor data of a foreign file: fp32 at the limit
PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: the message says what was found and what was expected."""


@dataclass
class CheckpointInfo:
    """What a checkpoint describes, read without building the model."""

    path: str
    architecture: str
    config: Any
    contract: registry.IOContract
    provenance: Dict[str, Any] = field(default_factory=dict)
    parameters: int = 0
    dtype: str = "float32"
    source_format: str = "frametrans"


def save_model(
    model: nn.Module,
    path: PathLike,
    provenance: Optional[Dict[str, Any]] = None,
    dtype: Optional[torch.dtype] = None,
) -> Path:
    """Write ``model`` (a registered architecture) to ``path`` atomically; returns the path.

    dtype: store floating tensors in this dtype (e.g. torch.float16 for bundled models); loading
    always gives float32 modules.
    """
    from safetensors.torch import save_file

    arch = registry.get(type(model).arch_name)
    config = model.config
    tensors = {}
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.contiguous()
    metadata = {
        "frametrans_format": FORMAT_VERSION,
        "architecture": arch.name,
        "config": json.dumps(config.to_dict()),
        "contract": json.dumps(config.contract().to_dict()),
        "provenance": json.dumps(provenance or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_info(path: PathLike) -> CheckpointInfo:
    """Architecture, config, contract and provenance of a checkpoint, without loading weights."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return _read_our_info(path)
    arch, config, state, source = _import_foreign(path)
    return CheckpointInfo(
        path=str(path), architecture=arch.name, config=config, contract=config.contract(),
        parameters=sum(t.numel() for t in state.values() if t.is_floating_point()),
        provenance={"imported_from": source}, source_format=source,
    )


def load_model(path_or_name: PathLike, yaml_config: Optional[PathLike] = None) -> nn.Module:
    """Build the model a checkpoint describes and load its weights (float32, on the CPU).

    path_or_name: one of our ``.safetensors`` files, a foreign ``.pth``/``.pt`` file, or the name
        of a bundled model (``frametrans models`` lists them).
    yaml_config: for MUNIT imports, the upstream YAML config (for ``activ``/``pad_type``).
    """
    path = resolve(path_or_name)
    if path.suffix == ".safetensors":
        info = _read_our_info(path)
        arch, config = registry.get(info.architecture), info.config
        header = _read_safetensors_header(path)
        _check_shapes(arch, config, {k: v["shape"] for k, v in header.items() if k != "__metadata__"}, path)
        state = _read_our_tensors(path)
    else:
        arch, config, state, _ = _import_foreign(path, yaml_config)
        _check_shapes(arch, config, {k: v.shape for k, v in state.items()}, path)
    model = arch.build(config)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model


def resolve(path_or_name: PathLike) -> Path:
    """A path as given when it exists, else a bundled model's path; CheckpointError otherwise."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    from frametrans import zoo

    bundled = zoo.path_of(str(path_or_name))
    if bundled is not None:
        return bundled
    if path.exists():
        raise CheckpointError(f"{path}: is not a file")
    names = ", ".join(zoo.names()) or "none"
    raise CheckpointError(f"{path}: no such file, and not a bundled model (bundled: {names})")


# ---------------------------------------------------------------------------------------------
# our format


def _read_our_info(path: Path) -> CheckpointInfo:
    header = _read_safetensors_header(path)
    meta = header.pop("__metadata__", None) or {}
    if meta.get("frametrans_format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: safetensors file without frametrans metadata (found keys "
            f"{_some(sorted(meta))}); expected a file written by frametrans (convert foreign "
            "files with `frametrans convert`)"
        )
    for key in ("architecture", "config"):
        if key not in meta:
            raise CheckpointError(f"{path}: bad metadata: no {key!r}; expected the keys "
                                  "frametrans_format, architecture, config, contract, provenance")
    try:
        arch = registry.get(meta["architecture"])
        values = _metadata_json(meta, "config", MAX_CONFIG_BYTES)
        if not isinstance(values, dict):
            raise ValueError(f"config is a JSON {type(values).__name__}, expected a JSON object")
        _check_config_fields(arch, values)
        config = arch.config_from_dict(values)
        provenance = _metadata_json(meta, "provenance", MAX_METADATA_VALUE_BYTES, default={})
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: bad metadata: {_clip(first_line(exc))}") from None
    params = sum(_numel(v["shape"]) for v in header.values() if v["dtype"].startswith(("F", "BF")))
    dtypes = sorted({v["dtype"] for v in header.values()})
    return CheckpointInfo(
        path=str(path), architecture=arch.name, config=config, contract=config.contract(),
        provenance=provenance, parameters=params, dtype=",".join(dtypes),
    )


def _metadata_json(meta: Dict[str, str], key: str, limit: int, default: Any = None) -> Any:
    """json.loads of one metadata value, refused above ``limit`` bytes or nested too deeply."""
    if key not in meta:
        return default
    text = meta[key]
    if len(text) > limit:
        raise ValueError(f"{key} is {_size(len(text))} of JSON, expected at most {_size(limit)}")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{key} JSON is nested too deeply, expected a flat JSON object") from None
    except ValueError as exc:  # JSONDecodeError, and integers over Python's digit limit
        raise ValueError(f"{key} is not valid JSON ({_clip(first_line(exc), 80)})") from None


def _check_config_fields(arch: registry.Architecture, values: Dict[str, Any]) -> None:
    """Unknown config fields, named a few at a time (a hostile file may hold millions)."""
    known = [f.name for f in dataclasses.fields(arch.config_cls)]
    unknown = sorted(k for k in values if k not in set(known))
    if unknown:
        raise ValueError(
            f"unknown config field(s) for {arch.name}: {_some(unknown)}; "
            f"expected some of: {', '.join(known)}"
        )


# A safetensors header is {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}}:
# three levels of JSON nesting at most.
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_HEADER_DEPTH = 3
_JSON_STRING = re.compile(rb'"[^"]*"')  # once escaped backslashes and quotes are gone
_JSON_INNERMOST = re.compile(rb"[\[{][^\[\]{}]*[\]}]")
_EXPECTED_TENSOR = 'expected {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]} per tensor'


def _read_safetensors_header(path: Path) -> Dict[str, Any]:
    """Parse and check the JSON header of a safetensors file, before any tensor is read.

    Every problem is one CheckpointError line: the file, what is wrong, what was expected. The
    header is read only when its stated length is sane, and parsed only when its nesting is.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: file is {size} bytes, too short for a safetensors file")
        n = int.from_bytes(head, "little")
        if n < 2 or n > MAX_HEADER_BYTES:
            raise CheckpointError(
                f"{path}: not a safetensors file: header length {n} (file {size} B); expected "
                f"2 to {MAX_HEADER_BYTES:,} bytes of JSON"
            )
        if n > size - 8:
            raise CheckpointError(f"{path}: truncated: {size} bytes, the header alone needs {n + 8}")
        header = _parse_header_json(path, f.read(n))
    end = _check_header(path, header)
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: truncated: {size} bytes, header promises {8 + n + end}")
    return header


def _parse_header_json(path: Path, raw: bytes) -> Dict[str, Any]:
    """json.loads with the nesting bounded first: drop the escapes and the strings, then peel the
    innermost bracket pairs three times; a bracket left over means deeper (or unbalanced) JSON.
    Linear time, a few copies of the header at most."""
    structure = _JSON_STRING.sub(b'""', raw.replace(b"\\\\", b"").replace(b'\\"', b""))
    opened = structure.count(b"[") + structure.count(b"{")
    if opened != structure.count(b"]") + structure.count(b"}"):
        raise CheckpointError(
            f"{path}: corrupt safetensors header: not valid JSON (brackets do not balance); "
            f"{_EXPECTED_TENSOR}"
        )
    for _ in range(_HEADER_DEPTH):
        structure = _JSON_INNERMOST.sub(b"", structure)
    if b"[" in structure or b"{" in structure:
        raise CheckpointError(
            f"{path}: corrupt safetensors header: JSON nested deeper than {_HEADER_DEPTH} levels; "
            f"{_EXPECTED_TENSOR}"
        )
    del structure
    try:
        text = raw.decode("utf-8")
        del raw  # the caller keeps no reference: one copy of the header less at the peak
        header = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(
            f"{path}: corrupt safetensors header: not valid JSON ({_clip(first_line(exc), 80)}); "
            f"{_EXPECTED_TENSOR}"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{path}: corrupt safetensors header: a JSON {type(header).__name__}; expected an "
            "object of tensors"
        )
    return header


def _check_header(path: Path, header: Dict[str, Any]) -> int:
    """Check every entry of a parsed header; returns the end of the data section it describes."""

    def bad(what: str, expected: str = _EXPECTED_TENSOR,
            problem: str = "corrupt safetensors header") -> CheckpointError:
        return CheckpointError(f"{path}: {problem}: {what}; {expected}")

    meta = header.get("__metadata__")
    if meta is not None:
        if not isinstance(meta, dict):
            raise bad(f"__metadata__ is a JSON {type(meta).__name__}", "expected an object of strings")
        for key, value in meta.items():
            if not isinstance(value, str):
                raise bad(f"__metadata__ value {_short(key)} is a JSON {type(value).__name__}",
                          "expected a string")
            if len(value) > MAX_METADATA_VALUE_BYTES:
                raise bad(f"__metadata__ value {_short(key)} is {_size(len(value))}",
                          f"expected at most {_size(MAX_METADATA_VALUE_BYTES)} per value",
                          "refused safetensors header")
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensor = f"tensor {_short(name)}"
        if not isinstance(entry, dict):
            raise bad(f"{tensor} is a JSON {type(entry).__name__}")
        for key in ("dtype", "shape", "data_offsets"):
            if key not in entry:
                raise bad(f"{tensor} has no {key}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPE_BYTES:
            raise bad(f"{tensor} has dtype {_short(dtype)}",
                      f"expected one of {', '.join(_DTYPE_BYTES)}")
        if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
            raise bad(f"{tensor} has shape {_short(shape)}",
                      "expected a list of non-negative integers, e.g. [64, 3, 7, 7]")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_count, offsets))
                or offsets[0] > offsets[1]):
            raise bad(f"{tensor} has data_offsets {_short(offsets)}",
                      "expected [begin, end] with 0 <= begin <= end")
        nbytes = _numel(shape) * _DTYPE_BYTES[dtype]
        if offsets[1] - offsets[0] != nbytes:
            raise bad(f"{tensor} spans {offsets[1] - offsets[0]} bytes",
                      f"expected {nbytes} for {dtype} {shape}")
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            raise bad(f"tensor {_short(name)} starts at byte {begin}",
                      f"expected {end}: tensors tile the data section without gaps or overlaps")
        end = stop
    return end


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(value: Any, limit: int = 60) -> str:
    """repr of a name or value from a file, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _some(names: list, shown: int = 5) -> str:
    """At most ``shown`` names, then 'and N more'."""
    text = ", ".join(_short(n, 40) for n in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _read_our_tensors(path: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: cannot read tensors: {exc}") from None


def _numel(shape: Any) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _check_shapes(arch: registry.Architecture, config: Any, found: Dict[str, Any], path: Path) -> int:
    """Check the file's tensor names and shapes against the config before allocating anything;
    returns the number of elements the model's state holds.

    The model is first built on the ``meta`` device (no memory), so an absurd config or a file whose
    tensors don't fit its config gets one line, not an allocation failure or a torch traceback.
    """
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in arch.build(config).state_dict().items()}
    n_params = sum(_numel(s) for s in expected.values())
    if n_params > MAX_PARAMETERS:
        raise CheckpointError(f"{path}: config asks for {n_params:.3g} parameters; refused (limit {MAX_PARAMETERS:.0e})")
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{path}: weights do not fit {arch.name}: "
            f"{len(missing)} missing (e.g. [{_some(missing, 2)}]), "
            f"{len(extra)} unexpected (e.g. [{_some(extra, 2)}])"
        )
    for key, want in expected.items():
        got = tuple(int(s) for s in found[key])
        if got != want:
            raise CheckpointError(
                f"{path}: tensor {key} has shape {got}, expected {want} for the config in the file"
            )
    return n_params


# ---------------------------------------------------------------------------------------------
# foreign formats


def _import_foreign(path: Path, yaml_config: Optional[PathLike] = None):
    """Read a foreign checkpoint safely; returns (architecture, config, state dict, format name).

    A torch.save zip is checked in three steps before any tensor record is inflated: the record
    sizes in its central directory, then the key layout and shapes (data.pkl loaded with every
    tensor on the "meta" device), then the tensor bytes against what that architecture needs.
    """
    storage_bytes = _check_zip_records(path)
    if storage_bytes is not None:
        shapes_only = _torch_load_safely(path, meta=True)  # reads data.pkl, no tensor record
        arch, config, shapes_only, _ = _recognise(path, shapes_only, yaml_config)
        _check_storage_need(path, arch, config, shapes_only, storage_bytes)
    else:
        size = path.stat().st_size
        if size > MAX_STORAGE_BYTES + MAX_PICKLE_BYTES:
            raise CheckpointError(
                f"{path}: {_size(size)} legacy (non-zip) PyTorch file; expected at most "
                f"{_size(MAX_STORAGE_BYTES + MAX_PICKLE_BYTES)} (fp32 at {MAX_PARAMETERS:.0e} parameters)"
            )
    return _recognise(path, _torch_load_safely(path), yaml_config)


def _recognise(path: Path, state: Any, yaml_config: Optional[PathLike]):
    """(architecture, config, converted state, format name) of a loaded foreign state dict."""
    from frametrans.importers import munit as munit_importer
    from frametrans.importers import upstream

    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, expected a dict of tensors")
    try:
        if munit_importer.looks_like_munit(state):
            yaml_dict = _read_yaml(yaml_config) if yaml_config else None
            name, config, converted = munit_importer.import_munit(state, yaml_dict)
            source = "munit"
        elif upstream.looks_like_upstream(state):
            name, config, converted = upstream.import_upstream_generator(state)
            source = "pytorch-CycleGAN-and-pix2pix"
        else:
            sample = sorted(_short(k, 40) for k in state if isinstance(k, str))[:3]
            raise CheckpointError(
                f"{path}: unknown checkpoint layout (first keys [{', '.join(sample)}]); expected a "
                "pytorch-CycleGAN-and-pix2pix generator (*_net_G*.pth) or a MUNIT gen_*.pt file"
            )
    except CheckpointError:
        raise
    except ValueError as exc:
        raise CheckpointError(f"{path}: {_clip(first_line(exc))}") from None
    arch = registry.get(name)
    config.validate()
    return arch, config, converted, source


_TORCH_ZIP_MAGIC = b"PK\x03\x04"  # what torch.load checks to pick its zip reader
_TENSOR_RECORD = re.compile(r"data/\w+")


def _check_zip_records(path: Path) -> Optional[int]:
    """Check a torch.save zip's records from its central directory (nothing is inflated).

    Returns the total uncompressed bytes of its tensor records (``archive/data/N``), or None for
    a legacy (non-zip) file. data.pkl must be there and below MAX_PICKLE_BYTES, the small records
    below MAX_SMALL_RECORD_BYTES, the tensor records together below MAX_STORAGE_BYTES.
    """
    with open(path, "rb") as f:
        if f.read(4) != _TORCH_ZIP_MAGIC:
            return None
    try:
        with zipfile.ZipFile(path) as archive:
            records = [(i.filename, i.file_size) for i in archive.infolist()]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (corrupt zip: {_clip(first_line(exc), 120)})"
        ) from None
    layout = "expected torch.save's layout: archive/data.pkl, archive/data/0, ..."
    pickles = [name for name, _ in records if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        names = _some([name for name, _ in records], 3)
        raise CheckpointError(
            f"{path}: zip with {len(pickles)} data.pkl records (records: {names}); {layout}"
        )
    prefix = pickles[0][: -len("data.pkl")]
    storage = 0
    for name, size in records:
        inner = name[len(prefix):] if name.startswith(prefix) else None
        if inner is not None and _TENSOR_RECORD.fullmatch(inner):
            storage += size
            continue
        limit = MAX_PICKLE_BYTES if inner == "data.pkl" else MAX_SMALL_RECORD_BYTES
        if size > limit:
            raise CheckpointError(
                f"{path}: record {_short(name)} inflates to {_size(size)}; expected at most "
                f"{_size(limit)} for it in a torch.save file"
            )
    if storage > MAX_STORAGE_BYTES:
        raise CheckpointError(
            f"{path}: tensor records inflate to {_size(storage)}; expected at most "
            f"{_size(MAX_STORAGE_BYTES)} (fp32 at {MAX_PARAMETERS:.0e} parameters)"
        )
    return storage


def _check_storage_need(path: Path, arch: registry.Architecture, config: Any,
                        shapes: Dict[str, Any], storage_bytes: int) -> None:
    """The tensor records may hold at most what the recognised model needs, in float64."""
    need = 8 * _check_shapes(arch, config, {k: v.shape for k, v in shapes.items()}, path)
    need += MAX_SMALL_RECORD_BYTES  # slack: statistics the importers drop, tiny tensors
    if storage_bytes > need:
        raise CheckpointError(
            f"{path}: tensor records inflate to {_size(storage_bytes)}; the {arch.name} model its "
            f"keys describe needs at most {_size(need)}"
        )


def _torch_load_safely(path: Path, meta: bool = False) -> Any:
    """torch.load with weights_only=True: a file that asks to build any object is refused.

    meta: every tensor on the "meta" device: only data.pkl is read, no tensor record.
    """
    try:
        return torch.load(str(path), map_location="meta" if meta else "cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None and "global" not in str(exc).lower():
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt pickle data)") from None
        what = f"GLOBAL {found.group(1)}" if found else "objects other than tensors"
        raise CheckpointError(
            f"{path}: refused: the file asks to unpickle {what}; only tensors and plain "
            "containers are loaded (weights_only)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, IndexError,
            ValueError, TypeError, AttributeError) as exc:
        if isinstance(exc, (KeyError, IndexError, TypeError, AttributeError)) or not str(exc).strip():
            first = "corrupt or not pickle/zip data"
        else:
            first = first_line(exc)[:160]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first})") from None


def _read_yaml(path: PathLike) -> Dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a YAML mapping (the upstream MUNIT config)")
    return data
