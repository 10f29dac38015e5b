"""The library's error contract: a wrong argument to a public function is one ``ConfigError`` naming it.

Each checker takes the value and the argument's name and raises before the function does any work (and
before anything is written), so a string where a model belongs, a bad regular expression, a numpy or
meta-device mask or an impossible setting reads as the CLI's one-line errors do, never as a traceback
from deep inside torch. Public functions call them in their first lines.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparse_adapter.errors import ConfigError


def _kind(value: Any) -> str:
    """A short, one-line description of a wrong value."""
    if isinstance(value, (list, tuple, dict, set)):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, (nn.Module, torch.Tensor)):
        return f"a {type(value).__name__}"
    shown = repr(value).splitlines()[0] if repr(value) else ""
    return f"{type(value).__name__} {shown[:40] + '…' if len(shown) > 40 else shown}"


def model(value: Any, name: str = "model") -> nn.Module:
    if isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{name}: expected a model (torch.nn.Module), got the name {str(value)!r}; build or load the model first")
    if not isinstance(value, nn.Module):
        raise ConfigError(f"{name}: expected a model (torch.nn.Module), got {_kind(value)}")
    if any(p.is_meta for p in value.parameters()):
        raise ConfigError(f"{name}: has parameters on the meta device (no values); load its weights first")
    return value


def number(value: Any, name: str, low: float | None = None, high: float | None = None, *, closed_high: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite number, got {_kind(value)}")
    if (low is not None and value < low) or (high is not None and (value > high if closed_high else value >= high)):
        bound = f"in [{low:g}, {high:g}{']' if closed_high else ')'}" if high is not None else "> 0" if low == 1e-12 else f"≥ {low:g}"
        raise ConfigError(f"{name}={value} must be {bound}")
    return value


def sparsity(value: Any, name: str = "sparsity") -> float:
    return number(value, name, 0.0, 1.0)


def integer(value: Any, name: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected an integer, got {_kind(value)}")
    if value < low:
        raise ConfigError(f"{name}={value} must be ≥ {low}")
    return value


def flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: expected True or False, got {_kind(value)}")
    return value


def regex(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a regular expression (a string) or None, got {_kind(value)}")
    try:
        re.compile(value)
    except re.error as error:
        raise ConfigError(f"{name}={value!r} is not a valid regular expression ({error})") from None
    return value


def choice(value: Any, name: str, options: Iterable[str]) -> str:
    options = list(options)
    if not isinstance(value, str) or value not in options:
        raise ConfigError(f"{name}={value!r} is unknown (choose from {', '.join(options)})")
    return value


def path(value: Any, name: str) -> Path:
    if not isinstance(value, (str, os.PathLike)) or str(value) == "":
        raise ConfigError(f"{name}: expected a path (str or os.PathLike), got {_kind(value)}")
    return Path(value)


def new_folder(value: Any, name: str) -> Path:
    """A folder to write into: absent or empty, never an existing file."""
    folder = path(value, name)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{name}={str(folder)!r} is an existing file; pass a new folder")
    if folder.is_dir() and any(folder.iterdir()):
        raise ConfigError(f"{name}={str(folder)!r}: not empty; save into a new folder")
    return folder


def new_file(value: Any, name: str) -> Path:
    """A file to write: its folder exists, and it is not a folder itself."""
    target = path(value, name)
    if target.is_dir():
        raise ConfigError(f"{name}={str(target)!r} is a folder; pass a file name")
    if not target.parent.is_dir():
        raise ConfigError(f"{name}={str(target)!r}: its folder {str(target.parent)!r} does not exist")
    return target


def existing(value: Any, name: str, *, folder: bool = False) -> Path:
    target = path(value, name)
    if not (target.is_dir() if folder else target.is_file()):
        raise ConfigError(f"{name}={str(target)!r}: no such {'folder' if folder else 'file'}")
    return target


def mapping(value: Any, name: str, allow_none: bool = False) -> Mapping | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: expected a mapping (dict){' or None' if allow_none else ''}, got {_kind(value)}")
    return value


def parameters(value: Any, name: str = "params") -> Mapping[str, nn.Parameter]:
    mapping(value, name)
    for key, parameter in value.items():
        if not isinstance(key, str) or not isinstance(parameter, torch.Tensor):
            raise ConfigError(f"{name}: expected parameter name → torch.nn.Parameter, got {key!r} → {_kind(parameter)}")
        if parameter.is_meta:
            raise ConfigError(f"{name}: '{key}' is on the meta device (no values)")
    return value


def masks(value: Any, params: Mapping[str, torch.Tensor] | None = None, name: str = "masks", *, boolean: bool = False,
          known: bool = True) -> Mapping:
    """Parameter name → torch tensor (True = kept), on a real device, shaped as the parameter it names
    (``known=False``: names that are no parameter are let through, for callers that ignore them)."""
    mapping(value, name)
    for key, mask in value.items():
        if not isinstance(mask, torch.Tensor):
            raise ConfigError(f"{name}: '{key}' is {type(mask).__module__}.{type(mask).__name__}, expected a torch.Tensor (torch.from_numpy?)")
        if mask.is_meta:
            raise ConfigError(f"{name}: '{key}' is on the meta device (no values)")
        if boolean and mask.dtype != torch.bool:
            raise ConfigError(f"{name}: '{key}' has dtype {mask.dtype}, expected torch.bool (True = kept)")
        if params is not None and (known or key in params):
            if key not in params:
                raise ConfigError(f"{name}: '{key}' is not a parameter of this model")
            shape = tuple(getattr(params[key], "ds_shape", params[key].shape))  # DeepSpeed ZeRO-3: the full shape
            if tuple(mask.shape) != shape:
                raise ConfigError(f"{name}: '{key}' has shape {tuple(mask.shape)}, the parameter {shape}")
    return value


def batches(value: Any, name: str = "batches", items: bool = True) -> Sequence:
    """A list of batches; ``items``: each a mapping (what ``model(**batch)`` takes; a custom loss takes anything)."""
    if isinstance(value, (str, bytes, Mapping, torch.Tensor)) or not isinstance(value, (Sequence, Iterable)):
        raise ConfigError(f"{name}: expected a list of batches (each a dict of tensors), got {_kind(value)}")
    value = value if isinstance(value, Sequence) else list(value)
    for i in range(len(value) if items else 0):  # by index: a Sequence that shows progress while iterated (PruneAtInit) is not walked
        if not isinstance(batch := value[i], Mapping):
            raise ConfigError(f"{name}[{i}]: expected a dict of tensors (input_ids, labels, ...), got {_kind(batch)}")
    return value


def callable_or_none(value: Any, name: str):
    if value is not None and not callable(value):
        raise ConfigError(f"{name}: expected a function or None, got {_kind(value)}")
    return value


def instance(value: Any, name: str, cls: type, allow_none: bool = False):
    if (value is None and allow_none) or isinstance(value, cls):
        return value
    raise ConfigError(f"{name}: expected a {cls.__name__}{' or None' if allow_none else ''}, got {_kind(value)}")


def optimizer(value: Any, name: str = "optimizer"):
    if value is None or isinstance(value, torch.optim.Optimizer) or isinstance(getattr(value, "optimizer", None), torch.optim.Optimizer):
        return value
    raise ConfigError(f"{name}: expected a torch optimizer (or a wrapper of one) or None, got {_kind(value)}")


def names(value: Any, name: str, allow_none: bool = True) -> list[str] | None:
    if value is None and allow_none:
        return None
    if isinstance(value, str) or not isinstance(value, Iterable) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name}: expected a list of module names, got {_kind(value)}")
    return list(value)


def checksum(value: Any, name: str = "checksum") -> str | None:
    if value is not None and not (isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value)):
        raise ConfigError(f"{name}: expected the file's SHA-256 checksum (64 hex digits) or None, got {_kind(value)}")
    return value
