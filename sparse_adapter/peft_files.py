"""Integrity of sparse PEFT folders (``save_sparse_peft``/``load_sparse_peft``): the same per-tensor checksums as
our adapter files, a checksum of ``adapter_config.json``, sizes checked before PEFT allocates, strict loading.

The config is hashed because PEFT builds the model from it: an added ``target_modules`` entry or a larger ``r``
would otherwise create LoRA tensors the file never held (random, or gigabytes before any check).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from sparse_adapter.adapter_file import SPARSE_EXPANSION, check_authentic, decode, read_safetensors, seal, verify
from sparse_adapter.errors import ConfigError

log = logging.getLogger(__name__)
CONFIG_FILE = "adapter_config.json"
SIZE_FIELDS = ("r",)  # PEFT config fields that set a factor's width (rank_pattern's values too)


def _config_digest(folder: Path) -> str:
    return hashlib.sha256((folder / CONFIG_FILE).read_bytes()).hexdigest()


def seal_peft(folder: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    """The file's metadata with ``adapter_config.json``'s SHA-256 and every tensor's checksum (as ``seal``)."""
    return seal(tensors, {**metadata, CONFIG_FILE: _config_digest(Path(folder))})


def _check_sizes(path: Path, config: Mapping, tensors: Mapping[str, torch.Tensor], hidden: int) -> None:
    largest = max((t.numel() for t in tensors.values()), default=0)
    asked = {f: config.get(f) for f in SIZE_FIELDS if config.get(f) is not None}
    pattern = config.get("rank_pattern") or {}
    if isinstance(pattern, Mapping):
        asked.update({f"rank_pattern.{k}": v for k, v in pattern.items()})
    for field, value in asked.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{path.parent / CONFIG_FILE}: {field}={value!r} is not a size")
        if value * max(hidden, 1) > largest:
            raise ConfigError(f"{path.parent / CONFIG_FILE}: {field}={value} asks for {value} × {hidden} entries per factor, more than"
                              f" {path.name} holds in any tensor ({largest}); refused before allocating")


def read_sparse_peft(folder: str | Path, path: Path, fmt: str, hidden: int, checksum: str | None = None) -> tuple[dict, dict, dict]:
    """(tensors, masks, metadata) of a sparse PEFT folder, verified and size-checked, before PEFT builds anything."""
    folder = Path(folder)
    raw, metadata = read_safetensors(path, str(path))
    if metadata.get("format") != fmt:
        raise ConfigError(f"{path}: not a sparse PEFT file (format {metadata.get('format')!r})")
    if not (folder / CONFIG_FILE).is_file():
        raise ConfigError(f"{folder}: no {CONFIG_FILE}")
    if verify(path, raw, metadata):
        if metadata.get(CONFIG_FILE) != _config_digest(folder):
            raise ConfigError(f"{folder / CONFIG_FILE}: does not match the checksum in {path.name} (the config was changed after"
                              " it was written, e.g. a target_modules entry added)")
    else:
        log.warning("%s carries no checksum (written before checksums were added): its contents are not verified", path)
    check_authentic(path, metadata, checksum)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
        shapes = json.loads(metadata.get("shapes", "{}"))
    except ValueError as error:
        raise ConfigError(f"{folder}: {CONFIG_FILE} or the file's 'shapes' is not valid JSON ({error})") from error
    if not isinstance(config, dict):
        raise ConfigError(f"{folder / CONFIG_FILE}: not a JSON object")
    tensors, masks = decode(raw, shapes, path, max_numel=SPARSE_EXPANSION * max(path.stat().st_size, 1))  # bounded by the file
    _check_sizes(path, config, tensors, hidden)
    return tensors, masks, metadata


def check_filled(path: Path, model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Strict loading: every tensor the PEFT model trains must come from the file (none left at its random init)."""
    missing = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in tensors)
    if missing:
        raise ConfigError(f"{path}: holds no tensor for {missing[0]} ({len(missing)} missing): the config asks for modules the"
                          " file cannot fill (target_modules or r edited?)")
