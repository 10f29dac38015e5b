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

``load_adapter(model_or_backbone, path)`` attaches the adapter described by the file (no config
needed) and loads its tensors; it refuses, with a ``ConfigError``, a file whose backbone, adapter
tensors or shapes do not match the model.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from sparse_adapter.errors import ConfigError

FORMAT = "sparse-adapter/2"
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def saved_parameter_names(model: nn.Module) -> list[str]:
    """What an adapter file holds: every adapter parameter (trained or frozen) and every trained one (head)."""
    from sparse_adapter.adapters.base import adapter_parameter_names

    adapters = adapter_parameter_names(model)
    return [n for n, p in model.named_parameters() if n in adapters or p.requires_grad]


def trained_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters())
    return {name: named[name].detach().cpu().contiguous() for name in saved_parameter_names(model)}


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


def save_adapter(model: nn.Module, path: str | Path, metadata: dict | None = None,
                 masks: Mapping[str, torch.Tensor] | None = None) -> None:
    """Write the adapter (config, tensors, head, backbone identity) atomically to one safetensors file.

    ``masks`` (parameter name → bool, True = kept; a ``MaskSet`` works) makes those matrices sparse
    on disk. Frozen adapter matrices without a mask (AdapterFusion's sources) are stored sparsely
    by their non-zero pattern when that is smaller. Pruned entries come back as exact zeros.
    """
    from sparse_adapter.adapters import adapter_name
    from sparse_adapter.adapters.base import adapter_parameter_names

    path = Path(path)
    masks = dict(masks.items()) if masks is not None else {}
    frozen_adapters = {n for n, p in model.named_parameters() if not p.requires_grad} & adapter_parameter_names(model)
    tensors, shapes = {}, {}
    for name, tensor in trained_state_dict(model).items():
        mask = masks.get(name)
        if mask is None and name in frozen_adapters and tensor.dim() >= 2:
            mask = tensor != 0
        encoded = encode(name, tensor, mask)
        if name not in encoded:
            shapes[name] = list(tensor.shape)
        tensors.update(encoded)
    info = {k: str(v) for k, v in (metadata or {}).items()}
    config = getattr(model, "adapter_config", None)
    if config is not None:
        info["adapter"] = adapter_name(config)
        info["adapter_config"] = json.dumps(vars(config))
    info.update(format=FORMAT, backbone=json.dumps(backbone_identity(model)), head=json.dumps(head_identity(model)),
                shapes=json.dumps(shapes))
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        temporary = handle.name
    try:
        save_file(tensors, temporary, metadata=info)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


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
    for key in ("adapter_config", "backbone", "head", "shapes"):
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


def load_adapter(model_or_backbone, path: str | Path) -> nn.Module:
    """Attach the adapter saved in ``path`` and load its tensors; return the model.

    ``model_or_backbone`` is a task model (e.g. ``BertForSequenceClassification``), with or without
    the adapter already attached, or a backbone spec (``sparse_adapter.backbones.PretrainedBackbone``
    / ``RandomBackbone``), from which the model and head are built as the file describes. The file
    alone says which adapter to attach. A file that does not match the model (another backbone or
    hidden size, adapter tensors missing or extra, other shapes) raises ``ConfigError``.
    """
    from sparse_adapter.adapters import ADAPTERS
    from sparse_adapter.adapters.base import adapter_parameter_names

    tensors, _, metadata = read_adapter(path)
    head = metadata.get("head") or {}
    model = model_or_backbone
    if not isinstance(model, nn.Module):
        if not head.get("task_head"):
            raise ConfigError(f"adapter file '{path}' records no task head; build the model and pass it instead")
        model, _ = model_or_backbone.build(head["task_head"], num_labels=head["num_labels"], problem_type=head["problem_type"])
    legacy = "format" not in metadata  # a file from before format 2: tensors only, adapter must be attached
    if not legacy:
        check_backbone(model, metadata.get("backbone"), path)
    has_adapter = bool(adapter_parameter_names(model)) or getattr(model, "adapter_config", None) is not None
    if legacy and not has_adapter:
        raise ConfigError(f"adapter file '{path}' predates self-describing files: attach its adapter to the model first")
    if not has_adapter:
        name = metadata.get("adapter")
        if name not in ADAPTERS:
            raise ConfigError(f"adapter file '{path}' names adapter '{name}', which is unknown (choose from {', '.join(ADAPTERS)})")
        ADAPTERS[name](**metadata.get("adapter_config", {})).attach(model)
    expected = dict(model.named_parameters())
    wanted = set(saved_parameter_names(model))
    missing = sorted(wanted - set(tensors))
    if missing:
        raise ConfigError(
            f"adapter file '{path}' does not match the model: {len(missing)} tensors missing, e.g. {missing[0]} "
            f"(file: adapter={metadata.get('adapter')} {metadata.get('adapter_config')})"
        )
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ConfigError(f"adapter file '{path}' holds {len(extra)} tensors the model lacks, e.g. {extra[0]}")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ConfigError(
                f"adapter file '{path}': {name} has shape {tuple(tensor.shape)}, the model's is {tuple(expected[name].shape)}"
            )
    with torch.no_grad():
        for name, tensor in tensors.items():
            expected[name].copy_(tensor.to(expected[name].dtype))
    return model


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
