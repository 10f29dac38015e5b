"""BART: encoder, decoder self-attention + FFN, and the decoder's cross-attention as three parts."""

from sparse_adapter.adapters.layouts.base import LAYOUTS, Layout


def _attention(attention: str) -> dict[str, str]:
    return {"query": f"{attention}.q_proj", "key": f"{attention}.k_proj", "value": f"{attention}.v_proj",
            "attention_output": f"{attention}.out_proj"}


def _stack(blocks: str) -> Layout:
    """A BART encoder block, or the self-attention + FFN of a decoder block. BART applies dropout
    functionally, so serial adapters follow the sublayer's last projection (before dropout and
    the residual): the attention module (its output tuple's first element) and fc2."""
    return Layout(
        blocks=blocks,
        after_attention="self_attn",
        after_ffn="fc2",
        linears={**_attention("self_attn"), "intermediate": "fc1", "output": "fc2"},
        scaled={"key": "self_attn.k_proj", "value": "self_attn.v_proj"},
        scaled_input={"ffn": "fc2"},
        ffn_linears=("fc1", "fc2"),
        self_attention="self_attn",
        attention_style="bart",
    )


CROSS = Layout(  # the decoder's cross-attention over the encoder output (no FFN of its own)
    blocks="decoder.layers",
    after_attention="encoder_attn",
    after_ffn="",
    linears=_attention("encoder_attn"),
    scaled={"key": "encoder_attn.k_proj", "value": "encoder_attn.v_proj"},
    self_attention="encoder_attn",  # prefix tuning: a prefix before the encoder's keys and values
    attention_style="bart",
)

PARTS = {"encoder": _stack("encoder.layers"), "decoder": _stack("decoder.layers"), "cross": CROSS}

LAYOUTS.register("bart", PARTS)
