"""Where adapters attach inside each Hugging Face architecture.

A layout names paths relative to one transformer block; adapters never rely on class names,
so a new architecture is one registry entry. An architecture is one or more *parts*, each a stack
of blocks with its own layout: an encoder has one ("encoder"); an encoder–decoder (BART) has the
encoder, the decoder's self-attention and FFN ("decoder") and the decoder's cross-attention
("cross"), the last two over the same decoder blocks. ``model.config.adapter_parts`` (set from
``backbone.adapter_parts``) chooses the parts that get adapters; all of them by default.
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
    # prefix tuning: the attention module (query/key/value Linears, HF attention interface) and its
    # calling convention, a key of adapters.prefix.PREFIX_WRAPPERS ("bert", "bart")
    self_attention: str | None = None
    attention_style: str = "bert"
    # parallel adapter: the FFN's output module, called as (ffn_hidden, ffn_input); the adapter reads
    # ffn_input and adds its output to the FFN output before the residual + LayerNorm
    ffn_output: str | None = None
    # IA³ target name -> path of the module whose output is scaled (keys, values, FFN activation)
    scaled: dict[str, str] = field(default_factory=dict)
    # IA³ target name -> path of the module whose *input* is scaled (BART: the FFN activation feeds fc2)
    scaled_input: dict[str, str] = field(default_factory=dict)
    # parallel adapter where the FFN is two plain Linears (BART): (first, second); the adapter reads
    # the first's input and adds to the second's output
    ffn_linears: tuple[str, str] | None = None

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




def _bart_attention(attention: str) -> dict[str, str]:
    return {"query": f"{attention}.q_proj", "key": f"{attention}.k_proj", "value": f"{attention}.v_proj",
            "attention_output": f"{attention}.out_proj"}


def _bart_stack(blocks: str) -> Layout:
    """A BART encoder block, or the self-attention + FFN of a decoder block. BART applies dropout
    functionally, so serial adapters follow the sublayer's last projection (before dropout and
    the residual): the attention module (its output tuple's first element) and fc2."""
    return Layout(
        blocks=blocks,
        after_attention="self_attn",
        after_ffn="fc2",
        linears={**_bart_attention("self_attn"), "intermediate": "fc1", "output": "fc2"},
        scaled={"key": "self_attn.k_proj", "value": "self_attn.v_proj"},
        scaled_input={"ffn": "fc2"},
        ffn_linears=("fc1", "fc2"),
        self_attention="self_attn",
        attention_style="bart",
    )


_BART_CROSS = Layout(  # the decoder's cross-attention over the encoder output (no FFN of its own)
    blocks="decoder.layers",
    after_attention="encoder_attn",
    after_ffn="",
    linears=_bart_attention("encoder_attn"),
    scaled={"key": "encoder_attn.k_proj", "value": "encoder_attn.v_proj"},
    self_attention="encoder_attn",  # prefix tuning: a prefix before the encoder's keys and values
    attention_style="bart",
)

_ENCODER = {"encoder": _BERT_LIKE}
_BART = {"encoder": _bart_stack("encoder.layers"), "decoder": _bart_stack("decoder.layers"), "cross": _BART_CROSS}

LAYOUTS: dict[str, dict[str, Layout]] = {
    "bert": _ENCODER,
    "roberta": _ENCODER,
    "xlm-roberta": _ENCODER,
    "electra": _ENCODER,
    "bart": _BART,
}


def layouts_for(model: nn.Module) -> dict[str, Layout]:
    """The layouts of the parts that get adapters (``model.config.adapter_parts``; all by default)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in LAYOUTS:
        raise ConfigError(
            f"backbone: adapters do not know the '{model_type}' architecture yet "
            f"(supported: {', '.join(sorted(LAYOUTS))})"
        )
    parts = LAYOUTS[model_type]
    chosen = getattr(config, "adapter_parts", None) or list(parts)
    unknown = [p for p in chosen if p not in parts]
    if unknown:
        raise ConfigError(f"backbone.adapter_parts={list(chosen)}: '{model_type}' has the parts {', '.join(parts)}")
    return {part: parts[part] for part in chosen}


def layout_for(model: nn.Module) -> Layout:
    """The first chosen part's layout (encoder-only models have one part)."""
    return next(iter(layouts_for(model).values()))


def require_slot(model: nn.Module, slot: str, adapter: str) -> None:
    """A clear error when no chosen part of the architecture has ``slot`` (the variant cannot attach)."""
    layouts = layouts_for(model)
    if not any(getattr(layout, slot) for layout in layouts.values()):
        raise ConfigError(
            f"adapter={adapter}: the '{model.config.model_type}' layout has no '{slot}' slot in "
            f"{', '.join(layouts)} yet"
        )


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module, Layout]]:
    """(qualified name, block, layout) for every block of every chosen part of a task model.

    A decoder block appears once per part that uses it ("decoder" and "cross"), each time with the
    layout of that part, so a variant attaches to its self-attention and cross-attention alike.
    """
    base = model.base_model
    prefix = model.base_model_prefix
    found = []
    for layout in layouts_for(model).values():
        blocks = base.get_submodule(layout.blocks)
        found += [(f"{prefix}.{layout.blocks}.{i}", block, layout) for i, block in enumerate(blocks)]
    return found


def replace_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)
