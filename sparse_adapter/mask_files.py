"""The masks file of a Hugging Face ``Trainer`` checkpoint (``SparseAdapterCallback`` writes it, a resume reads it).

Its own module so that the callback (``hf_trainer``) and the resume lookup (``hf_resume``) both import it and
neither imports the other.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sparse_adapter.errors import ConfigError
from sparse_adapter.io import atomic_path

MASKS_FILE = "sparse_adapter_masks.safetensors"


def save_masks(masks: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Bool masks as uint8 safetensors (full tensors: gather sharded masks before saving)."""
    from safetensors.torch import save_file

    with atomic_path(path) as temporary:
        packed = {name: mask.detach().cpu().to(torch.uint8).contiguous() for name, mask in masks.items()}
        save_file(packed, str(temporary))


def read_masks(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise ConfigError(f"resume: {path} is missing; the checkpoint was not written with SparseAdapterCallback")
    return {name: mask.to(torch.bool) for name, mask in load_file(str(path)).items()}
