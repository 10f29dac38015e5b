"""T5 and mT5: encoder, decoder self-attention + FFN, and cross-attention (``EncDecAttention``) as
three parts. Pre-norm sublayers ``layer.i``; the FFN is ``DenseReluDense`` with ``wi`` or, gated
(T5 v1.1, mT5, Flan-T5), ``wi_0``/``wi_1``. The relative position bias is the model's own: a
prefix joins at the attention interface with zero bias, the sequence's bias untouched."""

from sparse_adapter.adapters.layouts.base import LAYOUTS, Layout


def _attention(path: str) -> dict[str, str]:
    return {"query": f"{path}.q", "key": f"{path}.k", "value": f"{path}.v", "attention_output": f"{path}.o"}


def _stack(blocks: str, ffn_layer: int, gated: bool) -> Layout:
    attention, ffn = "layer.0.SelfAttention", f"layer.{ffn_layer}.DenseReluDense"
    inner = {"gate": f"{ffn}.wi_0", "intermediate": f"{ffn}.wi_1"} if gated else {"intermediate": f"{ffn}.wi"}
    return Layout(
        blocks=blocks,
        after_attention=attention,  # its output tuple's first element, before dropout and the residual
        after_ffn=ffn,
        linears={**_attention(attention), **inner, "output": f"{ffn}.wo"},
        self_attention=attention,
        attention_style="interface",
        prefix_key="k",
        scaled={"key": f"{attention}.k", "value": f"{attention}.v"},
        scaled_input={"ffn": f"{ffn}.wo"},
        ffn_module=ffn,
    )


def _cross() -> Layout:
    attention = "layer.1.EncDecAttention"
    return Layout(
        blocks="decoder.block",
        after_attention=attention,
        after_ffn="",
        linears=_attention(attention),
        self_attention=attention,  # prefix tuning: a prefix before the encoder's keys and values
        attention_style="interface",
        prefix_key="k",
        scaled={"key": f"{attention}.k", "value": f"{attention}.v"},
    )


def parts(config) -> dict[str, Layout]:
    """The layouts for this config: gated FFNs name their two input projections."""
    gated = bool(getattr(config, "is_gated_act", False))
    return {"encoder": _stack("encoder.block", 1, gated), "decoder": _stack("decoder.block", 2, gated), "cross": _cross()}


LAYOUTS.register(("t5", "mt5"), parts)
