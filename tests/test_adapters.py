"""Adapters on tiny random BERT and RoBERTa: placement, freezing, identity at init, Large-Sparse."""

import pytest
import torch

from sparse_adapter.accounting import parameter_report
from sparse_adapter.adapters import HoulsbyConfig, LoRAConfig, PfeifferConfig, attach_adapter
from sparse_adapter.adapters.lora import LoRALinear
from sparse_adapter.errors import ConfigError
from sparse_adapter.pruning import MaskSet
from tests.conftest import TINY, tiny_model

H, LAYERS = TINY["hidden_size"], TINY["num_hidden_layers"]


def inputs(tokenizer):
    return tokenizer(["the cat sat on the mat", "a dog"], ["it was happy", "ran"], padding=True, return_tensors="pt")


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize(
    "config, per_block",
    [(HoulsbyConfig(bottleneck=8), 2), (PfeifferConfig(bottleneck=8), 1), (LoRAConfig(r=4, targets=["query", "value", "output"]), 3)],
)
def test_placement_and_freezing(model_type, config, per_block):
    model, _ = tiny_model(model_type)
    prunable = config.attach(model)
    assert len(prunable) == 2 * per_block * LAYERS
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {n for n, _ in model.named_parameters() if not n.startswith(model.base_model_prefix + ".")}
    assert set(prunable) <= trainable
    assert head and head <= trainable  # the randomly initialised head trains
    body_trainable = trainable - head
    assert all(".adapter." in n or ".lora_" in n for n in body_trainable)  # only adapters in the body


def test_houlsby_sits_after_both_sublayers_before_the_residual():
    model, _ = tiny_model("bert")
    names = HoulsbyConfig(bottleneck=8).attach(model)
    assert "bert.encoder.layer.0.attention.output.dropout.adapter.down.weight" in names
    assert "bert.encoder.layer.1.output.dropout.adapter.up.weight" in names


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize("name, options", [("houlsby", {"bottleneck": 8}), ("pfeiffer", {"bottleneck": 8}), ("lora", {"r": 4})])
def test_zero_init_adapters_leave_the_model_unchanged(model_type, name, options):
    model, tokenizer = tiny_model(model_type)
    model.eval()
    batch = inputs(tokenizer)
    before = model(**batch).logits
    attach_adapter(model, name, init="lora", **options)
    torch.testing.assert_close(model(**batch).logits, before)


def test_bert_init_perturbs_the_output_and_gets_gradients():
    model, tokenizer = tiny_model("bert")
    model.eval()
    batch = inputs(tokenizer)
    before = model(**batch).logits.detach()
    prunable = attach_adapter(model, "houlsby", bottleneck=8)
    after = model(**batch).logits
    assert not torch.allclose(after, before)
    after.sum().backward()
    named = dict(model.named_parameters())
    assert all(named[n].grad is not None and named[n].grad.abs().sum() > 0 for n in prunable)
    assert all(p.grad is None for n, p in named.items() if not p.requires_grad)


def test_lora_equals_its_merged_weight():
    model, tokenizer = tiny_model("bert")
    model.eval()
    LoRAConfig(r=4, alpha=8).attach(model)
    layer = model.bert.encoder.layer[0].attention.self.query
    assert isinstance(layer, LoRALinear) and layer.scaling == 2.0
    x = torch.randn(3, H)
    merged = layer.base_layer.weight + layer.scaling * layer.lora_B @ layer.lora_A
    torch.testing.assert_close(layer(x), x @ merged.T + layer.base_layer.bias)


@pytest.mark.parametrize(
    "config, setting",
    [
        (HoulsbyConfig(bottleneck=0), "adapter.bottleneck"),
        (LoRAConfig(r=-1), "adapter.r"),
        (LoRAConfig(targets=["nope"]), "adapter.targets"),
        (HoulsbyConfig(init="xavier"), "adapter.init"),
        (PfeifferConfig(activation="swish"), "adapter.activation"),
    ],
)
def test_bad_adapter_settings_name_the_setting(config, setting):
    model, _ = tiny_model("bert")
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        config.attach(model)


def test_parameter_report_counts():
    model, _ = tiny_model("bert")
    prunable = HoulsbyConfig(bottleneck=8).attach(model)
    named = dict(model.named_parameters())
    masks = MaskSet({n: torch.rand(named[n].shape) < 0.5 for n in prunable})
    report = parameter_report(model, prunable, masks)
    per_adapter_weights = 2 * H * 8
    per_adapter_biases = 8 + H
    assert report["adapter_weights_total"] == 2 * LAYERS * per_adapter_weights
    assert report["adapter_weights_kept"] == masks.kept()
    assert report["trained_params_body"] == masks.kept() + 2 * LAYERS * per_adapter_biases
    assert report["head_params"] == H * 2 + 2
    backbone = sum(p.numel() for n, p in named.items() if n.startswith("bert.") and ".adapter." not in n)
    assert report["backbone_params"] == backbone
    assert report["trained_params_pct"] == pytest.approx(100 * report["trained_params_body"] / backbone)


def test_adapter_file_round_trip(tmp_path):
    from sparse_adapter.io import load_adapter, save_adapter

    model, tokenizer = tiny_model("bert")
    HoulsbyConfig(bottleneck=8).attach(model)
    save_adapter(model, tmp_path / "adapter.safetensors", {"adapter": "houlsby"})
    fresh, _ = tiny_model("bert")
    HoulsbyConfig(bottleneck=8, init="lora").attach(fresh)  # different init: the file must overwrite it
    load_adapter(fresh, tmp_path / "adapter.safetensors")
    model.eval(), fresh.eval()
    batch = inputs(tokenizer)
    torch.testing.assert_close(fresh(**batch).logits, model(**batch).logits)


def test_mask_set_state_dict_round_trip_and_reserved_names():
    masks = MaskSet({"layer.0.adapter.down.weight": torch.tensor([[True, False]]), "head.weight": torch.tensor([False, True])})
    restored = MaskSet()
    restored.load_state_dict(masks.state_dict())  # a fresh set creates the buffers it is given
    assert dict(restored.items()).keys() == dict(masks.items()).keys()
    assert all(torch.equal(restored[n], m) for n, m in masks.items())
    assert "layer.0.adapter.down.weight" in restored and "my__weight" not in restored
    with pytest.raises(ValueError, match="'__'"):
        MaskSet({"my__weight": torch.ones(2, dtype=torch.bool)})
