"""Where adapters attach inside each Hugging Face architecture.

A layout names paths relative to one transformer block; adapters never rely on class names,
so a new architecture is one registry entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from sparse_adapter.errors import ConfigError


@dataclass(frozen=True)
class Layout:
    blocks: str  # path (from the base model) of the ModuleList of transformer blocks
    after_attention: str  # module whose output a serial adapter follows (Houlsby)
    after_ffn: str  # ditto for the feed-forward sublayer (Houlsby, Pfeiffer)
    linears: dict[str, str] = field(default_factory=dict)  # LoRA target name -> path in a block
    # prefix tuning: the self-attention module (query/key/value Linears, HF attention interface)
    self_attention: str | None = None
    # parallel adapter: the FFN's output module, called as (ffn_hidden, ffn_input); the adapter reads
    # ffn_input and adds its output to the FFN output before the residual + LayerNorm
    ffn_output: str | None = None
    # IA³ target name -> path of the module whose output is scaled (keys, values, FFN activation)
    scaled: dict[str, str] = field(default_factory=dict)

    def require(self, slot: str, adapter: str) -> str:
        path = getattr(self, slot)
        if not path:
            raise ConfigError(f"adapter={adapter}: this architecture's layout has no '{slot}' slot yet")
        return path


_BERT_LIKE = Layout(
    blocks="encoder.layer",
    # after the sublayer's projection and dropout, before the residual + LayerNorm (Houlsby 2019)
    after_attention="attention.output.dropout",
    after_ffn="output.dropout",
    linears={
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attention_output": "attention.output.dense",
        "intermediate": "intermediate.dense",
        "output": "output.dense",
    },
    self_attention="attention.self",
    ffn_output="output",
    scaled={"key": "attention.self.key", "value": "attention.self.value", "ffn": "intermediate"},
)

LAYOUTS: dict[str, Layout] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
}


def layout_for(model: nn.Module) -> Layout:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in LAYOUTS:
        raise ConfigError(
            f"backbone: adapters do not know the '{model_type}' architecture yet "
            f"(supported: {', '.join(sorted(LAYOUTS))})"
        )
    return LAYOUTS[model_type]


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, block) for every transformer block of a task model."""
    layout = layout_for(model)
    base = model.base_model
    prefix = model.base_model_prefix
    blocks = base.get_submodule(layout.blocks)
    return [(f"{prefix}.{layout.blocks}.{i}", block) for i, block in enumerate(blocks)]


def replace_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)
