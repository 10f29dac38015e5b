"""Llama-like decoders (Llama, Mistral, Qwen2, Qwen3): pre-norm blocks, grouped-query attention.

Serial adapters follow each sublayer's output before the residual add (AdapterHub's Llama
placement: the output of ``self_attn``, after ``o_proj``, and of ``mlp``); k/v are narrower than q
under GQA, which every slot takes from the modules themselves. Prefix tuning joins at
transformers' attention interface, after RoPE (the prefix is not rotated) and after the cache.
"""

from sparse_adapter.adapters.layouts.base import LAYOUTS, Layout

DECODER = Layout(
    blocks="layers",
    after_attention="self_attn",
    after_ffn="mlp",
    linears={
        "query": "self_attn.q_proj",
        "key": "self_attn.k_proj",
        "value": "self_attn.v_proj",
        "attention_output": "self_attn.o_proj",
        "gate": "mlp.gate_proj",
        "intermediate": "mlp.up_proj",
        "output": "mlp.down_proj",
    },
    self_attention="self_attn",
    attention_style="interface",
    prefix_key="k_proj",
    scaled={"key": "self_attn.k_proj", "value": "self_attn.v_proj"},
    scaled_input={"ffn": "mlp.down_proj"},  # act(gate) ⊙ up: the FFN activation
    ffn_module="mlp",
    final_norm="norm",
)

PARTS = {"decoder": DECODER}

LAYOUTS.register(("llama", "mistral", "qwen2", "qwen3"), PARTS)
