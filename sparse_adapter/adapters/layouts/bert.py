"""BERT-like encoders (BERT, RoBERTa, XLM-R, ELECTRA): post-LayerNorm blocks with explicit dropouts."""

from sparse_adapter.adapters.layouts.base import LAYOUTS, Layout

BERT_LIKE = Layout(
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

PARTS = {"encoder": BERT_LIKE}

LAYOUTS.register(("bert", "roberta", "xlm-roberta", "electra"), PARTS)
