"""Prefix tuning (Li & Liang, 2021): trained key/value vectors prepended in every self-attention.

A wrapper puts ``length`` prefix keys and values in front of the sequence's, extends the attention
mask for them (prefix positions are visible to every query; padding stays masked) and calls the
attention kernel the model is configured with (eager or SDPA), so the prefix really enters
attention. A layout's ``attention_style`` picks the wrapper: ``prefix_attention`` re-runs BERT's or
BART's projections; ``prefix_interface`` runs the model's own forward and joins at transformers'
attention interface (Llama, Qwen, Mistral, GPT-2, T5).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from sparse_adapter.adapters.base import ADAPTERS, AdapterConfig, freeze_backbone
from sparse_adapter.adapters.layouts import replace_submodule, require_slot, transformer_blocks
from sparse_adapter.adapters.prefix_attention import BartPrefixAttention, PrefixAttention
from sparse_adapter.adapters.prefix_interface import InterfacePrefixAttention
from sparse_adapter.schema import ranged

PREFIX_WRAPPERS: dict[str, type[PrefixAttention]] = {
    "bert": PrefixAttention, "bart": BartPrefixAttention, "interface": InterfacePrefixAttention,
}


def insert_prefix(model: nn.Module, length: int, mlp_hidden: int, init_std: float, adapter: str = "prefix") -> list[str]:
    """Wrap every block's self-attention with a prefix; return the prunable matrix names."""
    require_slot(model, "self_attention", adapter)
    prunable = []
    for block_name, block, layout in transformer_blocks(model):
        path = layout.self_attention
        if not path:
            continue
        wrapper = PREFIX_WRAPPERS[layout.attention_style]
        extra = (layout.prefix_key,) if layout.prefix_key else ()
        replace_submodule(block, path, wrapper(block.get_submodule(path), length, mlp_hidden, init_std, *extra))
        name = f"{block_name}.{path}"
        if mlp_hidden > 0:
            prunable += [f"{name}.embedding", f"{name}.mlp.0.weight", f"{name}.mlp.2.weight"]
        else:
            prunable += [f"{name}.prefix_key", f"{name}.prefix_value"]
    return prunable


@ADAPTERS.register("prefix")
@dataclass
class PrefixConfig(AdapterConfig):
    length: int = ranged(30, ge=1)  # prefix vectors per layer (keys and values each)
    mlp_hidden: int = ranged(0, ge=0)  # > 0: reparametrise the prefix through an MLP of this width (merged after training)
    init_std: float = ranged(0.02, gt=0.0)

    size_field = "length"

    def insert(self, model: nn.Module) -> list[str]:
        freeze_backbone(model)
        return insert_prefix(model, self.length, self.mlp_hidden, self.init_std)

    def merged(self) -> "PrefixConfig":
        return PrefixConfig(length=self.length, mlp_hidden=0, init_std=self.init_std)
