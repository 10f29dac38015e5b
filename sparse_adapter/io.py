"""Adapter-only weights on disk: the trained tensors and nothing of the frozen backbone."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def trained_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_adapter(model: nn.Module, path: str | Path, metadata: dict | None = None) -> None:
    """Write the trained weights (adapters and head; pruned entries are exact zeros) atomically."""
    path = Path(path)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        temporary = handle.name
    try:
        save_file(trained_state_dict(model), temporary, metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def load_adapter(model: nn.Module, path: str | Path) -> None:
    """Load weights written by ``save_adapter`` into a model with the same adapter attached."""
    state = load_file(str(path))
    missing = set(state) - set(dict(model.named_parameters()))
    if missing:
        raise KeyError(f"{path}: tensors not in the model: {sorted(missing)[:3]}")
    model.load_state_dict(state, strict=False)


def write_json_atomic(data: dict, path: str | Path) -> None:
    """Write JSON through a temporary file so a crash never leaves a half-written file.

    The temporary name is unique per call: two writers sharing one fixed ``.tmp`` name truncate
    each other's file and can publish corrupt JSON.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
