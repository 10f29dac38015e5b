"""sparse-adapter: prune adapters at initialization (He et al., EMNLP 2022 Findings).

The library needs torch and transformers only; Lightning and Hydra live in ``tasks/``,
``callbacks/`` and ``train.py``.
"""

from sparse_adapter.adapters import ADAPTERS, AdapterConfig, attach_adapter
from sparse_adapter.errors import ConfigError
from sparse_adapter.io import load_adapter, read_adapter, save_adapter
from sparse_adapter.merging import merge_lora
from sparse_adapter.pruning import MaskSet, PrunerConfig, prune

__all__ = [
    "ADAPTERS", "AdapterConfig", "ConfigError", "MaskSet", "PrunerConfig", "attach_adapter", "load_adapter", "prune",
    "read_adapter", "save_adapter",
    "merge_lora",
]
