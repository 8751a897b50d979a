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
            f"{path}: safetensors file without frametrans metadata (found keys {sorted(meta)}); "
            "expected a file written by frametrans (convert foreign files with `frametrans convert`)"
        )
    try:
        arch = registry.get(meta["architecture"])
        config = arch.config_from_dict(json.loads(meta["config"]))
        provenance = json.loads(meta.get("provenance", "{}"))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: bad metadata: {exc}") from None
    params = sum(_numel(v["shape"]) for v in header.values() if v["dtype"].startswith(("F", "BF")))
    dtypes = sorted({v["dtype"] for v in header.values()})
    return CheckpointInfo(
        path=str(path), architecture=arch.name, config=config, contract=config.contract(),
        provenance=provenance, parameters=params, dtype=",".join(dtypes),
    )


def _read_safetensors_header(path: Path) -> Dict[str, Any]:
    """Parse the JSON header of a safetensors file, with clear errors for truncated/garbage files."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: file is {size} bytes, too short for a safetensors file")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > 100_000_000:
            raise CheckpointError(f"{path}: not a safetensors file (header length {n}, file {size} B)")
        if n > size - 8:
            raise CheckpointError(f"{path}: truncated: {size} bytes, the header alone needs {n + 8}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path}: corrupt safetensors header") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: truncated: {size} bytes, header promises {8 + n + end}")
    return header


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


MAX_PARAMETERS = 2_000_000_000


def _check_shapes(arch: registry.Architecture, config: Any, found: Dict[str, Any], path: Path) -> None:
    """Check the file's tensor names and shapes against the config before allocating anything.

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
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]})"
        )
    for key, want in expected.items():
        got = tuple(int(s) for s in found[key])
        if got != want:
            raise CheckpointError(
                f"{path}: tensor {key} has shape {got}, expected {want} for the config in the file"
            )


# ---------------------------------------------------------------------------------------------
# foreign formats


def _import_foreign(path: Path, yaml_config: Optional[PathLike] = None):
    """Read a foreign checkpoint safely; returns (architecture, config, state dict, format name)."""
    from frametrans.importers import munit as munit_importer
    from frametrans.importers import upstream

    state = _torch_load_safely(path)
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
            sample = sorted(k for k in state if isinstance(k, str))[:3]
            raise CheckpointError(
                f"{path}: unknown checkpoint layout (first keys {sample}); expected a "
                "pytorch-CycleGAN-and-pix2pix generator (*_net_G*.pth) or a MUNIT gen_*.pt file"
            )
    except CheckpointError:
        raise
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    arch = registry.get(name)
    config.validate()
    return arch, config, converted, source


def _torch_load_safely(path: Path) -> Any:
    """torch.load with weights_only=True: a file that asks to build any object is refused."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
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
