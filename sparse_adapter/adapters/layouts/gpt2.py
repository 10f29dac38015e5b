"""GPT-2: pre-norm blocks, ``Conv1D`` projections (weight stored in×out) and one fused ``c_attn``
computing query, key and value; the abstract names address its thirds."""

from sparse_adapter.adapters.layouts.base import LAYOUTS, Layout, Slice

_QKV = "attn.c_attn"

DECODER = Layout(
    blocks="h",
    after_attention="attn",  # after c_proj and its dropout, before the residual add
    after_ffn="mlp",
    linears={
        "query": Slice(_QKV, 0, 3),
        "key": Slice(_QKV, 1, 3),
        "value": Slice(_QKV, 2, 3),
        "attention_output": "attn.c_proj",
        "intermediate": "mlp.c_fc",
        "output": "mlp.c_proj",
    },
    self_attention="attn",
    attention_style="interface",
    prefix_key=Slice("c_attn", 1, 3),
    scaled={"key": Slice(_QKV, 1, 3), "value": Slice(_QKV, 2, 3)},
    scaled_input={"ffn": "mlp.c_proj"},
    ffn_module="mlp",
    final_norm="ln_f",
)

PARTS = {"decoder": DECODER}

LAYOUTS.register("gpt2", PARTS)
