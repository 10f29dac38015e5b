"""Adapter files: the adapter's tensors, its config, the head and the backbone's identity in one
safetensors file, with pruned matrices stored sparsely so the file shrinks with sparsity.

Layout of a file (format ``sparse-adapter/2``):

- a dense tensor is stored under its parameter name;
- a sparse one as ``<name>::values`` (the kept entries, row-major) plus either ``<name>::bits``
  (the mask, 8 entries per byte) or ``<name>::indices`` (flat positions of the kept entries,
  int16 or int32), whichever is smaller; the shape is in the metadata;
- metadata (JSON strings): ``adapter`` (registry name), ``adapter_config``, ``backbone``
  (model_type, hidden_size, num_hidden_layers, name), ``head`` (task head and its config),
  ``shapes`` of the sparse tensors, plus whatever the caller adds.

This module knows the format only (no adapter variant): AdapterFusion reads its sources with it,
and ``sparse_adapter.io`` writes files and attaches what they describe.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from torch import nn

from sparse_adapter.errors import ConfigError

FORMAT = "sparse-adapter/2"
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    flat = mask.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)])
    return (flat.view(-1, 8) * _BITS).sum(dim=1, dtype=torch.uint8)


def unpack_bits(bits: torch.Tensor, numel: int) -> torch.Tensor:
    return ((bits.view(-1, 1) & _BITS) > 0).reshape(-1)[:numel]


def encode(name: str, tensor: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Dense, or kept values + mask (bits or indices), whichever takes fewer bytes."""
    tensor = tensor.detach().cpu().contiguous()
    if mask is None:
        return {name: tensor}
    mask = mask.detach().cpu().to(torch.bool).reshape(-1)
    values = tensor.reshape(-1)[mask].contiguous()
    kept = int(mask.sum())
    index_dtype = torch.int16 if tensor.numel() <= 65536 else torch.int32  # int16 holds 0..65535, shifted
    index_bytes = kept * torch.tensor([], dtype=index_dtype).element_size()
    bits_bytes = (tensor.numel() + 7) // 8
    dense_bytes = tensor.numel() * tensor.element_size()
    if values.numel() * values.element_size() + min(index_bytes, bits_bytes) >= dense_bytes:
        return {name: tensor}
    if index_bytes < bits_bytes:
        positions = torch.nonzero(mask).reshape(-1)
        if index_dtype == torch.int16:
            positions = positions - 32768  # int16 holds 0..65535 shifted
        return {f"{name}::values": values, f"{name}::indices": positions.to(index_dtype).contiguous()}
    return {f"{name}::values": values, f"{name}::bits": pack_bits(mask)}


def decode(tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, list[int]]) -> tuple[dict, dict]:
    """(dense tensors, masks of the sparse ones) from a file's raw tensors."""
    dense, masks = {}, {}
    for key, tensor in tensors.items():
        if "::" not in key:
            dense[key] = tensor
    for name, shape in shapes.items():
        numel = int(torch.Size(shape).numel())
        values = tensors[f"{name}::values"]
        if f"{name}::bits" in tensors:
            mask = unpack_bits(tensors[f"{name}::bits"], numel)
        else:
            positions = tensors[f"{name}::indices"].to(torch.int64)
            if tensors[f"{name}::indices"].dtype == torch.int16:
                positions = positions + 32768
            mask = torch.zeros(numel, dtype=torch.bool)
            mask[positions] = True
        full = torch.zeros(numel, dtype=values.dtype)
        full[mask] = values
        dense[name], masks[name] = full.view(shape), mask.view(shape)
    return dense, masks


def backbone_identity(model: nn.Module) -> dict:
    config = model.config
    return {
        "model_type": config.model_type,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "name": getattr(config, "_name_or_path", "") or "",
    }


def head_identity(model: nn.Module) -> dict:
    from sparse_adapter.backbones import TASK_MODEL_CLASSES

    task_head = None
    for key, auto_name in TASK_MODEL_CLASSES.items():
        mapping = getattr(transformers, auto_name)._model_mapping
        if type(model.config) in mapping and mapping[type(model.config)] is type(model):
            task_head = key
    config = model.config
    return {"task_head": task_head, "class": type(model).__name__, "num_labels": config.num_labels,
            "problem_type": config.problem_type}


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(dense tensors, masks of the sparsely stored ones, metadata with JSON fields decoded)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"adapter file '{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = dict(handle.metadata() or {})
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's input
        raise ConfigError(f"adapter file '{path}' is not a readable safetensors file: {error}") from error
    for key in ("adapter_config", "backbone", "head", "shapes", "pruner"):
        if key in metadata:
            metadata[key] = json.loads(metadata[key])
    tensors, masks = decode(raw, metadata.get("shapes", {}))
    return tensors, masks, metadata


def check_backbone(model: nn.Module, saved: dict | None, path: str | Path, setting: str = "adapter file") -> None:
    """Refuse a file trained on another backbone (type, hidden size, depth or name)."""
    if not saved:
        raise ConfigError(f"{setting} '{path}' records no backbone identity (written by an older version?)")
    ours = backbone_identity(model)
    for key in ("model_type", "hidden_size", "num_hidden_layers"):
        if saved.get(key) != ours[key]:
            raise ConfigError(
                f"{setting} '{path}' was trained on another backbone: {key}={saved.get(key)} in the file, "
                f"{ours[key]} in this model"
            )
    if saved.get("name") and ours["name"] and Path(saved["name"]).name != Path(ours["name"]).name:
        raise ConfigError(f"{setting} '{path}' was trained on backbone '{saved['name']}', this model is '{ours['name']}'")
