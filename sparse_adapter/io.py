"""Save and load adapters (the format is ``sparse_adapter.adapter_file``) and write JSON atomically.

``save_adapter`` writes the adapter's tensors, config, head and backbone identity to one
safetensors file, pruned matrices stored sparsely. ``load_adapter(model_or_backbone, path)`` attaches the adapter described by the file (no config
needed) and loads its tensors; it refuses, with a ``ConfigError``, a file whose backbone, adapter
tensors or shapes do not match the model.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from sparse_adapter.adapter_file import (FORMAT, backbone_identity, check_backbone, check_declared_sizes, encode, head_identity,
                                         read_adapter, seal)
from sparse_adapter import arguments as check
from sparse_adapter.adapters import ADAPTERS, adapter_name
from sparse_adapter.adapters.base import adapter_parameter_names
from sparse_adapter.errors import ConfigError, StorageError

__all__ = ["atomic_path", "check_backbone", "disk_fault", "load_adapter", "read_adapter", "save_adapter", "trained_state_dict", "write_json_atomic"]


def saved_parameter_names(model: nn.Module) -> list[str]:
    """What an adapter file holds: every adapter parameter (trained or frozen) and every trained one (head)."""
    adapters = adapter_parameter_names(model)
    return [n for n, p in model.named_parameters() if n in adapters or p.requires_grad]


def trained_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters())
    return {name: named[name].detach().cpu().contiguous() for name in saved_parameter_names(model)}


def save_adapter(model: nn.Module, path: str | Path, metadata: dict | None = None,
                 masks: Mapping[str, torch.Tensor] | None = None) -> None:
    """Write the adapter (config, tensors, head, backbone identity) atomically to one safetensors file.

    ``masks`` (parameter name → bool, True = kept; a ``MaskSet`` works) makes those matrices sparse
    on disk. Frozen adapter matrices without a mask (AdapterFusion's sources) are stored sparsely
    by their non-zero pattern when that is smaller. Pruned entries come back as exact zeros.
    """
    check.model(model), check.new_file(path, "path"), check.mapping(metadata, "metadata", allow_none=True)
    path = Path(path)
    masks = dict(masks.items()) if hasattr(masks, "items") else check.mapping(masks, "masks", allow_none=True) or {}
    check.masks(masks, dict(model.named_parameters()), known=False)  # names of no saved tensor are ignored
    frozen_adapters = {n for n, p in model.named_parameters() if not p.requires_grad} & adapter_parameter_names(model)
    tensors, shapes = {}, {}
    for name, tensor in trained_state_dict(model).items():
        mask, inferred = masks.get(name), False
        if mask is None and name in frozen_adapters and tensor.dim() >= 2:
            mask, inferred = tensor != 0, True
        encoded = encode(name, tensor, mask, inferred)
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
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=seal(tensors, info))


def load_adapter(model_or_backbone, path: str | Path, checksum: str | None = None) -> nn.Module:
    """Attach the adapter saved in ``path`` and load its tensors; return the model.

    ``model_or_backbone`` is a task model (e.g. ``BertForSequenceClassification``), with or without
    the adapter already attached, or a backbone spec (``sparse_adapter.backbones.PretrainedBackbone``
    / ``RandomBackbone``), from which the model and head are built as the file describes. The file
    alone says which adapter to attach. A file that does not match the model (another backbone or
    hidden size, adapter tensors missing or extra, other shapes) raises ``ConfigError``; so does one whose sizes
    (head labels, adapter width) ask for more than it holds. ``checksum``: the file's checksum, pinned (see
    ``sparse_adapter.adapter_file``: checksums detect accidents; set SPARSE_ADAPTER_HMAC_KEY for authenticity).
    """
    if not isinstance(model_or_backbone, nn.Module) and not hasattr(model_or_backbone, "build"):
        raise ConfigError(f"model_or_backbone: expected a model (torch.nn.Module) or a backbone spec, got {type(model_or_backbone).__name__}")
    tensors, _, metadata = read_adapter(path, checksum=checksum)
    head = metadata.get("head") or {}
    model = model_or_backbone
    hidden = model.config.hidden_size if isinstance(model, nn.Module) else (metadata.get("backbone") or {}).get("hidden_size")
    check_declared_sizes(path, metadata, tensors, hidden if isinstance(hidden, int) and not isinstance(hidden, bool) else 1)
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


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a unique temporary path beside ``path``; on success it is fsynced and renamed to ``path``.

    On any failure (ENOSPC, a permission error, a kill signal's exception) the temporary file is removed,
    so a full or read-only disk never leaves a partial file behind; an ``OSError`` becomes one
    ``StorageError`` naming the file.
    """
    path = Path(path)
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        yield Path(temporary)
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except OSError as error:
        raise StorageError(f"cannot write {path}: {error.strerror or error}{_hint(error)}") from error
    except Exception as error:  # torch's zip writer and safetensors report a full disk in their own exceptions
        code = re.search(r"os error (\d+)", str(error))  # safetensors (Rust) names the errno
        cause = OSError(int(code.group(1)), os.strerror(int(code.group(1)))) if code else disk_fault(path.parent)
        if cause is None:
            raise
        raise StorageError(f"cannot write {path}: {cause.strerror or cause}{_hint(cause)}") from error
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)


def disk_fault(directory: Path) -> OSError | None:
    """The OSError a 64 KiB probe write in ``directory`` raises now (a full or read-only disk), or None."""
    probe = None
    try:
        handle, probe = tempfile.mkstemp(dir=directory, prefix=".probe.", suffix=".tmp")
        try:
            os.write(handle, bytes(65536))
            os.fsync(handle)
        finally:
            os.close(handle)
    except OSError as error:
        return error
    finally:
        if probe is not None and os.path.exists(probe):
            os.remove(probe)
    return None


def _hint(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return " (the disk is full: free space, or choose another hydra.run.dir)"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return " (not writable: check its permissions, or choose another hydra.run.dir)"
    return ""


def write_json_atomic(data: dict, path: str | Path) -> None:
    """Write JSON through a temporary file so a crash never leaves a half-written file.

    The temporary name is unique per call: two writers sharing one fixed ``.tmp`` name truncate
    each other's file and can publish corrupt JSON.
    """
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    with atomic_path(path) as temporary:
        with open(temporary, "w") as stream:
            stream.write(text)
