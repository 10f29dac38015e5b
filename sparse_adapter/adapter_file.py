"""Adapter files: the adapter's tensors, its config, the head and the backbone's identity in one
safetensors file, with pruned matrices stored sparsely so the file shrinks with sparsity.

Layout of a file (format ``sparse-adapter/2``):

- a dense tensor is stored under its parameter name;
- a sparse one as ``<name>::values`` (the kept entries, row-major) plus either ``<name>::bits``
  (the mask, 8 entries per byte) or ``<name>::indices`` (flat positions of the kept entries,
  int16 or int32), whichever is smaller; the shape is in the metadata. Every pruned tensor (one saved with
  a mask) is stored this way, so its mask comes back; files written before that stored a pruned tensor
  densely where that was smaller, and such a tensor comes back without a mask;
- metadata (JSON strings): ``adapter`` (registry name), ``adapter_config``, ``backbone``
  (model_type, hidden_size, num_hidden_layers, name), ``head`` (task head and its config),
  ``shapes`` of the sparse tensors, plus whatever the caller adds;
- ``checksums`` (SHA-256 of every stored tensor and metadata field, as JSON) and ``checksum`` (SHA-256
  of that JSON): ``read_adapter`` names the tensor or field that changed after writing, and refuses
  non-finite tensors and sparse parts that do not fit their shape. Files from before the checksum load
  with a warning.

This module knows the format only (no adapter variant): AdapterFusion reads its sources with it,
and ``sparse_adapter.io`` writes files and attaches what they describe.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from sparse_adapter.errors import ConfigError

log = logging.getLogger(__name__)
FORMAT = "sparse-adapter/2"
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    flat = mask.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)])
    return (flat.view(-1, 8) * _BITS).sum(dim=1, dtype=torch.uint8)


def unpack_bits(bits: torch.Tensor, numel: int) -> torch.Tensor:
    return ((bits.view(-1, 1) & _BITS) > 0).reshape(-1)[:numel]


def encode(name: str, tensor: torch.Tensor, mask: torch.Tensor | None, inferred: bool = False) -> dict[str, torch.Tensor]:
    """Kept values + mask (bits or indices, whichever is smaller). A pruning mask is state, so it is always
    stored, even where the dense tensor alone would be a few bytes smaller; an ``inferred`` mask (a frozen
    tensor's non-zero pattern) only when that makes the file smaller."""
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
    if inferred and values.numel() * values.element_size() + min(index_bytes, bits_bytes) >= dense_bytes:
        return {name: tensor}
    if index_bytes < bits_bytes:
        positions = torch.nonzero(mask).reshape(-1)
        if index_dtype == torch.int16:
            positions = positions - 32768  # int16 holds 0..65535 shifted
        return {f"{name}::values": values, f"{name}::indices": positions.to(index_dtype).contiguous()}
    return {f"{name}::values": values, f"{name}::bits": pack_bits(mask)}


# ---- integrity: every tensor and metadata field hashed, so an edited file is refused, not loaded ----

CHECKSUMS, CHECKSUM = "checksums", "checksum"  # per-entry SHA-256 (JSON) and the SHA-256 of that JSON
# Checksums detect accidents (a flipped bit, a truncated copy), not tampering: anyone can re-seal an edited file.
# Authenticity: set SPARSE_ADAPTER_HMAC_KEY when writing and reading (files then carry an HMAC-SHA256 of the
# checksum listing, verified on every read), or pin the ``checksum`` you recorded (read_adapter(checksum=...)).
SIGNATURE, HMAC_KEY = "hmac", "SPARSE_ADAPTER_HMAC_KEY"
SPARSE_EXPANSION = 256  # a sparse part may decode to at most this many entries per byte of its file (≥ 0.05% density)
JSON_FIELDS = ("adapter_config", "backbone", "head", "shapes", "pruner")


def _digest(*parts: bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "little") + part)
    return hasher.hexdigest()


def tensor_digest(name: str, tensor: torch.Tensor) -> str:
    raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return _digest(name.encode(), str(tensor.dtype).encode(), json.dumps(list(tensor.shape)).encode(), raw)


def entry_digests(raw: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, str]:
    """``tensor:<key>`` and ``field:<key>`` → SHA-256, over the stored bytes (raw tensors, metadata strings)."""
    digests = {f"tensor:{key}": tensor_digest(key, tensor) for key, tensor in sorted(raw.items())}
    digests.update({f"field:{key}": _digest(key.encode(), str(value).encode())
                    for key, value in sorted(metadata.items()) if key not in (CHECKSUMS, CHECKSUM, SIGNATURE)})
    return digests


def seal(raw: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    """The metadata with the file's checksums added (``save_adapter`` calls this last)."""
    listing = json.dumps(entry_digests(raw, metadata), sort_keys=True)
    sealed = {**metadata, CHECKSUMS: listing, CHECKSUM: hashlib.sha256(listing.encode()).hexdigest()}
    key = os.environ.get(HMAC_KEY)
    if key:
        sealed[SIGNATURE] = hmac.new(key.encode(), listing.encode(), hashlib.sha256).hexdigest()
    return sealed


def check_authentic(path, metadata: Mapping[str, str], checksum: str | None = None) -> None:
    """The pinned ``checksum`` and, with SPARSE_ADAPTER_HMAC_KEY set, the file's HMAC; ConfigError if either fails.

    Run after ``verify`` (which ties every tensor and field to the listing the HMAC and the checksum cover)."""
    if checksum is not None and metadata.get(CHECKSUM) != checksum:
        raise ConfigError(f"'{path}': checksum {metadata.get(CHECKSUM)} is not the pinned checksum {checksum} (another or an edited file)")
    key = os.environ.get(HMAC_KEY)
    if not key:
        return
    if SIGNATURE not in metadata:
        raise ConfigError(f"'{path}': {HMAC_KEY} is set but the file carries no HMAC (written without the key, or by someone else)")
    want = hmac.new(key.encode(), str(metadata.get(CHECKSUMS, "")).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, str(metadata[SIGNATURE])):
        raise ConfigError(f"'{path}': its HMAC does not match {HMAC_KEY} (the file was changed, or signed with another key)")


def verify(path: Path, raw: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bool:
    """ConfigError naming the edited tensor or field; False for a file written before checksums (not checked)."""
    if CHECKSUM not in metadata and CHECKSUMS not in metadata:
        return False
    listing = metadata.get(CHECKSUMS, "")
    if hashlib.sha256(listing.encode()).hexdigest() != metadata.get(CHECKSUM):
        raise ConfigError(f"adapter file '{path}': metadata field '{CHECKSUMS}' does not match its checksum (the file was edited)")
    saved = json.loads(listing)
    now = entry_digests(raw, metadata)
    for entry in sorted(set(saved) | set(now)):
        if saved.get(entry) != now.get(entry):
            kind, _, key = entry.partition(":")
            what = "tensor" if kind == "tensor" else "metadata field"
            change = "is missing" if entry not in now else "was added" if entry not in saved else "does not match its checksum"
            raise ConfigError(f"adapter file '{path}': {what} '{key}' {change} (the file was changed after it was written)")
    return True


def _decode_error(path, name: str, problem: str) -> ConfigError:
    return ConfigError(f"adapter file '{path}': tensor '{name}' {problem}")


def decode(tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, list[int]], path: str | Path = "?",
           max_numel: int | None = None) -> tuple[dict, dict]:
    """(dense tensors, masks of the sparse ones) from a file's raw tensors; ConfigError naming a tensor that does not fit.

    ``max_numel`` bounds what one sparse part may decode to (``SPARSE_EXPANSION`` × the file's bytes): a shape in
    the metadata is checked against it before anything is allocated."""
    dense, masks = {}, {}
    for key, tensor in tensors.items():
        if "::" not in key:
            dense[key] = tensor
    if not isinstance(shapes, Mapping):
        raise ConfigError(f"adapter file '{path}': metadata field 'shapes' is not a mapping of tensor names to shapes")
    for name, shape in shapes.items():
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise _decode_error(path, name, f"has an invalid shape {shape!r} in metadata field 'shapes'")
        numel = math.prod(shape)
        if max_numel is not None and numel > max_numel:
            raise _decode_error(path, name, f"asks for {numel} entries in metadata field 'shapes', more than a file of its size"
                                            f" can describe ({max_numel}); refused before allocating")
        if tensors.get(f"{name}::indices") is not None and tensors[f"{name}::indices"].dtype == torch.int16 and numel > 65536:
            raise _decode_error(path, name, f"has int16 indices but {numel} entries in metadata field 'shapes' (at most 65536)")
        if f"{name}::values" not in tensors:
            raise _decode_error(path, name, "is listed in 'shapes' but its values are missing")
        values = tensors[f"{name}::values"]
        if f"{name}::bits" in tensors:
            bits = tensors[f"{name}::bits"]
            if bits.dtype != torch.uint8 or bits.numel() != (numel + 7) // 8:
                raise _decode_error(path, name, f"has a mask of {bits.numel()} bytes, its shape {shape} needs {(numel + 7) // 8}")
            mask = unpack_bits(bits, numel)
        elif f"{name}::indices" in tensors:
            positions = tensors[f"{name}::indices"].to(torch.int64).reshape(-1)
            if tensors[f"{name}::indices"].dtype == torch.int16:
                positions = positions + 32768
            if positions.numel() and (positions.min() < 0 or positions.max() >= numel):
                raise _decode_error(path, name, f"has kept positions outside its shape {shape}")
            mask = torch.zeros(numel, dtype=torch.bool)
            mask[positions] = True
            if int(mask.sum()) != positions.numel():
                raise _decode_error(path, name, "lists a kept position twice")
        else:
            raise _decode_error(path, name, "has values but neither a bit mask nor indices")
        if values.dim() != 1 or values.numel() != int(mask.sum()):
            raise _decode_error(path, name, f"has {values.numel()} kept values, its mask keeps {int(mask.sum())} (shape {shape})")
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
    import transformers

    from sparse_adapter.backbones import TASK_HEADS

    task_head = None
    for key, head in TASK_HEADS.items():
        mapping = getattr(transformers, head.auto_class)._model_mapping
        if type(model.config) in mapping and mapping[type(model.config)] is type(model):
            task_head = key
    config = model.config
    return {"task_head": task_head, "class": type(model).__name__, "num_labels": config.num_labels,
            "problem_type": config.problem_type}


def read_safetensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; ConfigError naming ``what`` when it cannot be read (the header
    bounds every tensor by the file's own size, so nothing is allocated beyond it)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})  # noqa: SIM118
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's input
        raise ConfigError(f"{what} is not a readable safetensors file: {error}") from error


def read_adapter(path: str | Path, checksum: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(dense tensors, masks of every pruned tensor, metadata with JSON fields decoded).

    ``checksum``: the file's ``checksum`` as you recorded it (pinned): another value is refused."""
    from sparse_adapter import arguments as check

    path = check.path(path, "path")
    check.checksum(checksum)
    if not path.is_file():
        raise ConfigError(f"adapter file '{path}' does not exist")
    raw, metadata = read_safetensors(path, f"adapter file '{path}'")
    checked = verify(path, raw, metadata)
    check_authentic(path, metadata, checksum)
    if not checked:
        log.warning("adapter file '%s' carries no checksum (written before checksums were added): its contents are not verified", path)
    for key in JSON_FIELDS:
        if key in metadata:
            try:
                metadata[key] = json.loads(metadata[key])
            except ValueError as error:
                raise ConfigError(f"adapter file '{path}': metadata field '{key}' is not valid JSON ({error})") from error
    metadata.pop(CHECKSUMS, None)
    tensors, masks = decode(raw, metadata.get("shapes", {}), path, max_numel=SPARSE_EXPANSION * max(path.stat().st_size, 1))
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ConfigError(f"adapter file '{path}': tensor '{name}' holds {bad} non-finite value(s) (NaN or Inf)")
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


# adapter settings that size a tensor the loader allocates (alpha, dropout and the like are not sizes)
SIZE_FIELDS = ("bottleneck", "r", "size", "length", "mlp_hidden")


def check_declared_sizes(path, metadata: Mapping, tensors: Mapping[str, torch.Tensor], hidden: int) -> None:
    """Sizes the metadata asks the loader to allocate (head labels, adapter widths), checked before building anything.

    Each such size spans at least one stored matrix across the hidden width (``num_labels`` × hidden for the
    head; an adapter width × hidden over its matrices, GQA's narrow key/value prefixes summed over layers), so
    no legitimate size times the hidden size exceeds the entries the file holds."""
    held = sum(t.numel() for t in tensors.values())
    head, config = metadata.get("head") or {}, metadata.get("adapter_config") or {}
    asked = {"head.num_labels": head.get("num_labels") if isinstance(head, Mapping) else None}
    if isinstance(config, Mapping):
        asked.update({f"adapter_config.{k}": config[k] for k in SIZE_FIELDS if k in config})
    for field, value in asked.items():
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"adapter file '{path}': metadata field '{field}'={value!r} is not a size")
        if value * max(int(hidden), 1) > held:
            raise ConfigError(f"adapter file '{path}': metadata field '{field}'={value} asks for {value} × {hidden} entries, more"
                              f" than the file holds ({held}); refused before allocating")
