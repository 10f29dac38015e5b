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
    "ADAPTERS", "AdapterConfig", "ConfigError", "MaskSet", "PrunerConfig", "SparseAdapterCallback", "attach_adapter",
    "hold_masks", "load_adapter", "merge_lora", "prune", "prune_peft_model", "read_adapter", "save_adapter",
]

# the PEFT and Trainer entry points import on first use: `import sparse_adapter` need not load peft or the Trainer
_LAZY = {"prune_peft_model": "sparse_adapter.peft", "hold_masks": "sparse_adapter.hold",
         "SparseAdapterCallback": "sparse_adapter.hf_trainer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparse_adapter' has no attribute '{name}'")
