"""What a layout is: paths, relative to one transformer block, of the modules adapters attach to.

Adapters never rely on class names, so a new architecture is one family file that registers its parts
(``LAYOUTS.register(model_types, parts)``). The named fields below are the attachment points the
built-in variants use; ``points`` holds any other a variant needs (``AdapterConfig.needs``).
An architecture is one or more *parts*, each a stack of blocks with its own layout: an encoder has
one ("encoder"); an encoder–decoder (BART, T5) has the encoder, the decoder's self-attention and
FFN ("decoder") and the decoder's cross-attention ("cross"), the last two over the same decoder
blocks; a decoder-only model (Llama, GPT-2) has one ("decoder").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sparse_adapter.registry import Registry


@dataclass(frozen=True)
class Slice:
    """The ``index``-th of ``parts`` equal slices of a module's output features: one projection of a
    fused one (GPT-2's ``c_attn`` computes query, key and value in one matrix)."""

    path: str
    index: int
    parts: int


Target = str | Slice  # a module path in a block, or a slice of its output


@dataclass(frozen=True)
class Layout:
    blocks: str  # path (from the base model) of the ModuleList of transformer blocks
    after_attention: str  # module whose output a serial adapter follows (Houlsby)
    after_ffn: str  # ditto for the feed-forward sublayer (Houlsby, Pfeiffer)
    linears: dict[str, Target] = field(default_factory=dict)  # LoRA target name -> path in a block
    # prefix tuning: the attention module and its calling convention, a key of
    # adapters.prefix.PREFIX_WRAPPERS ("bert", "bart": own forward; "interface": the model's own
    # forward, the prefix joins at transformers' attention interface, after RoPE and the cache)
    self_attention: str | None = None
    attention_style: str = "bert"
    prefix_key: Target | None = None  # "interface" style: the key projection (relative to self_attention), its width
    # parallel adapter where the FFN output module is called as (ffn_hidden, ffn_input) (BERT); the
    # adapter reads ffn_input and adds its output to the FFN output before the residual + LayerNorm
    ffn_output: str | None = None
    # IA³ target name -> module whose output is scaled (keys, values, FFN activation)
    scaled: dict[str, Target] = field(default_factory=dict)
    # IA³ target name -> path of the Linear whose *input* is scaled (the FFN activation feeds fc2 / down_proj)
    scaled_input: dict[str, str] = field(default_factory=dict)
    # parallel adapter where the FFN is two plain Linears (BART): (first, second); the adapter reads
    # the first's input and adds to the second's output
    ffn_linears: tuple[str, str] | None = None
    # parallel adapter where the FFN is one module called with its input (Llama's mlp, GPT-2's mlp,
    # T5's DenseReluDense): the adapter reads that input and adds to the module's output
    ffn_module: str | None = None
    # any other attachment point, by name: what a variant outside this package needs (``Layout.point``)
    points: dict[str, Target] = field(default_factory=dict)
    # a causal LM's final norm (path from the base model), between the last block and the output embeddings:
    # with it the LM head is a per-token function of the last block's output (pruning.lm_head: GraSP in chunks)
    final_norm: str | None = None

    def point(self, name: str):
        """The attachment point ``name`` (a named field or one of ``points``); None if this part lacks it."""
        return getattr(self, name) if name in POINT_FIELDS else self.points.get(name)

    def available(self) -> list[str]:
        """The attachment points this part has."""
        return [name for name in (*POINT_FIELDS, *self.points) if self.point(name)]


POINT_FIELDS = ("after_attention", "after_ffn", "linears", "self_attention", "ffn_output", "scaled", "scaled_input",
                "ffn_linears", "ffn_module")

# model type -> its parts' layouts, or a function of the model config giving them (T5: gated FFN or not); each
# architecture file registers itself: LAYOUTS.register(("llama", "mistral"), PARTS)
LAYOUTS = Registry("architecture", "backbone.model_type")


def target_path(target: Target) -> str:
    return target.path if isinstance(target, Slice) else target
