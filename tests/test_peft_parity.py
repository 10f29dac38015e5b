"""Our LoRA and IA³ against PEFT's: the same weights copied into both give the same logits (to 1e-5,
with padding) on tiny Llama, Qwen3, GPT-2 and T5; PEFT-style module-name targets on a model without
a layout."""

import copy

import pytest
import torch

from sparse_adapter.adapters import IA3Config, LoRAConfig
from sparse_adapter.errors import ConfigError
from tests.test_architectures_train import backbone_from

peft = pytest.importorskip("peft")

# backbone -> (PEFT target_modules for LoRA, ours), (PEFT IA³ target/feedforward modules, ours)
CASES = {
    "tiny-llama": ((["q_proj", "v_proj"], ["query", "value"]), (["k_proj", "v_proj", "down_proj"], ["down_proj"], ["key", "value", "ffn"])),
    "tiny-qwen3": ((["q_proj", "k_proj", "v_proj", "o_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"]),
                   (["k_proj", "v_proj", "down_proj"], ["down_proj"], ["key", "value", "ffn"])),
    "tiny-gpt2": ((["c_attn", "mlp.c_proj"], ["c_attn", "mlp.c_proj"]), (["c_attn", "mlp.c_proj"], ["mlp.c_proj"], ["c_attn", "ffn"])),
    "tiny-t5": ((["q", "v"], ["query", "value"]), (["k", "v", "wo"], ["wo"], ["key", "value", "ffn"])),
}


def models(backbone: str):
    model, tokenizer = backbone_from(backbone).build("sequence-classification", num_labels=3)
    model.eval()
    texts = ["the cat sat on the mat today", "a dog"]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    batch.pop("token_type_ids", None)
    assert (batch["attention_mask"] == 0).any()  # padding is part of the comparison
    return model, copy.deepcopy(model), batch


def peft_modules(model):
    return {name: module for name, module in model.named_modules() if hasattr(module, "lora_A") or hasattr(module, "ia3_l")}


def max_difference(backbone: str, kind: str) -> float:
    ours, theirs, batch = models(backbone)
    with torch.no_grad():
        plain = ours(**batch).logits
    torch.manual_seed(0)
    if kind == "lora":
        peft_targets, targets = CASES[backbone][0]
        LoRAConfig(r=4, alpha=8, targets=targets, init="bert").attach(ours)
        theirs = peft.get_peft_model(theirs, peft.LoraConfig(r=4, lora_alpha=8, target_modules=peft_targets, lora_dropout=0.0))
    else:
        peft_targets, feedforward, targets = CASES[backbone][1]
        IA3Config(targets=targets).attach(ours)
        theirs = peft.get_peft_model(theirs, peft.IA3Config(target_modules=peft_targets, feedforward_modules=feedforward))
    wrapped = peft_modules(theirs)
    named = dict(ours.named_parameters())
    copied = 0
    with torch.no_grad():
        for name, module in wrapped.items():
            path = name.removeprefix("base_model.model.")
            if kind == "lora":
                module.lora_A["default"].weight.copy_(named[f"{path}.lora_A"])
                module.lora_B["default"].weight.copy_(named[f"{path}.lora_B"])
            else:
                named[f"{path}.scale"].uniform_(0.5, 1.5)  # not the identity init: the test must see the scaling
                module.ia3_l["default"].copy_(named[f"{path}.scale"].view_as(module.ia3_l["default"]))
            copied += 1
    assert copied == len([n for n in named if n.endswith((".lora_A", ".scale"))])  # every one of ours has a PEFT twin
    with torch.no_grad():
        adapted = ours(**batch).logits
        assert (adapted - plain).abs().max() > 1e-4  # the adapters do change the model
        return (adapted - theirs(**batch).logits).abs().max().item()


@pytest.mark.parametrize("kind", ["lora", "ia3"])
@pytest.mark.parametrize("backbone", list(CASES))
def test_same_weights_give_peft_logits(backbone, kind):
    assert max_difference(backbone, kind) < 1e-5


def test_module_name_targets_work_on_a_model_without_a_layout():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64)
    model = DistilBertForSequenceClassification(config)
    prunable = LoRAConfig(r=2, targets=["q_lin", "v_lin"]).attach(model)
    assert prunable[:2] == ["distilbert.transformer.layer.0.attention.q_lin.lora_A", "distilbert.transformer.layer.0.attention.q_lin.lora_B"]
    assert len(prunable) == 2 * 2 * 2
    model = DistilBertForSequenceClassification(config)
    assert len(IA3Config(targets=["k_lin", "lin1"]).attach(model)) == 4
    with pytest.raises(ConfigError, match=r"adapter\.targets=\['query'\]: 'query' names no Linear .*q_lin, k_lin, v_lin"):
        LoRAConfig(targets=["query"]).attach(DistilBertForSequenceClassification(config))
    with pytest.raises(ConfigError, match="adapter=houlsby on .distilbert.: backbone: adapters do not know the .distilbert. architecture"):
        from sparse_adapter.adapters import HoulsbyConfig

        HoulsbyConfig().attach(DistilBertForSequenceClassification(config))
