"""LoRA export to PEFT: PeftModel.from_pretrained reproduces our logits."""

import pytest
import torch

from sparse_adapter import ConfigError, save_adapter
from sparse_adapter.adapters import LoRAConfig, PfeifferConfig
from sparse_adapter.export import export_peft, main
from tests.conftest import tiny_model

peft = pytest.importorskip("peft")


@pytest.mark.parametrize("model_type, targets", [("bert", ["query", "value"]), ("roberta", ["query", "value", "output"])])
def test_peft_loads_our_sparse_lora_with_equal_logits(tmp_path, model_type, targets):
    model, tokenizer = tiny_model(model_type)
    prunable = LoRAConfig(r=4, alpha=8, targets=targets).attach(model)
    named = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(named[n].shape, generator=generator) < 0.4 for n in prunable}
    with torch.no_grad():
        for name, mask in masks.items():
            named[name].mul_(mask)
        for name, parameter in named.items():  # a "trained" head
            if name.startswith("classifier"):
                parameter.normal_(0, 0.5)
    model.eval()
    save_adapter(model, tmp_path / "adapter.safetensors", masks=masks)
    assert main([str(tmp_path), "--peft", str(tmp_path / "peft")]) == 0

    base, _ = tiny_model(model_type)
    loaded = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    batch = tokenizer(["the cat sat on the mat", "a dog"], ["it was happy", "ran"], padding=True, return_tensors="pt")
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=1e-5)
    state = dict(loaded.named_parameters())
    for name, mask in masks.items():  # pruned entries are exact zeros in the exported factors
        factor = state[f"base_model.model.{name}.default.weight"]
        assert torch.count_nonzero(factor[~mask]) == 0


def test_export_refuses_other_adapters(tmp_path):
    model, _ = tiny_model("bert")
    PfeifferConfig(bottleneck=4).attach(model)
    save_adapter(model, tmp_path / "adapter.safetensors")
    with pytest.raises(ConfigError, match=r"only lora, ia3, prefix map to PEFT \(PEFT 0.21 has no bottleneck"):
        export_peft(tmp_path, tmp_path / "peft")


def test_export_from_a_train_py_run_dir(tmp_path, glue_dir):
    """A sparse LoRA trained by train.py (RoBERTa, STS-B regression head) opens in PEFT with our logits."""
    from sparse_adapter import load_adapter, read_adapter
    from tests.conftest import tiny_backbone
    from tests.test_cli import summary, train_in_process

    run_dir = tmp_path / "run"
    train_in_process(run_dir, f"data_dir={glue_dir}", "backbone=tiny-roberta", "task=stsb", "adapter=lora",
                     "adapter.targets=[query,value,intermediate]", "sparsity=0.75")
    assert main([str(run_dir), "--peft", str(tmp_path / "peft")]) == 0
    _, masks, _ = read_adapter(run_dir / "adapter.safetensors")
    assert set(masks) == set(summary(run_dir)["layer_density"])  # every pruned tensor's mask comes back
    ours = load_adapter(tiny_backbone("roberta"), run_dir / "adapter.safetensors").eval()
    base, tokenizer = tiny_backbone("roberta").build("sequence-classification", num_labels=1, problem_type="regression")
    theirs = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    batch = tokenizer(["the cat sat on the mat", "a dog"], ["it was happy", "ran"], padding=True, return_tensors="pt")
    torch.testing.assert_close(theirs(**batch).logits, ours(**batch).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, targets", [
    ("tiny-bert", ["key", "value", "ffn"]), ("tiny-roberta", ["value", "ffn"]), ("tiny-bart", ["key", "value", "ffn"]),
    ("tiny-llama", ["key", "value", "ffn"]), ("tiny-gpt2", ["c_attn", "c_proj"]),  # layout names; module names
])
def test_peft_loads_our_sparse_ia3_with_equal_logits(tmp_path, name, targets):
    from sparse_adapter.adapters import IA3Config
    from tests.test_architectures_train import backbone_from

    backbone = backbone_from(name)
    model_type = name.removeprefix("tiny-")
    model, tokenizer = backbone.build("sequence-classification", num_labels=2)
    prunable = IA3Config(targets=targets).attach(model)
    named = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(named[n].shape, generator=generator) < 0.6 for n in prunable}
    with torch.no_grad():
        for name, mask in masks.items():  # "trained" vectors, some channels pruned to zero
            named[name].copy_((1 + 0.5 * torch.randn(named[name].shape, generator=generator)) * mask)
        for name, parameter in named.items():
            if parameter.requires_grad and name not in masks:
                parameter.normal_(0, 0.5, generator=generator)
    model.eval()
    save_adapter(model, tmp_path / "adapter.safetensors", masks=masks)
    assert main([str(tmp_path), "--peft", str(tmp_path / "peft")]) == 0
    torch.manual_seed(0)
    base, _ = backbone.build("sequence-classification", num_labels=2)
    loaded = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    batch = dict(tokenizer(["the cat sat on the mat", "a dog"], ["it was happy", "ran"], padding=True, return_tensors="pt"))
    if model_type != "bert" and model_type != "roberta":
        batch.pop("token_type_ids", None)
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=1e-5)


def test_prefix_export_is_refused_with_the_reason(tmp_path):
    from sparse_adapter.adapters import PrefixConfig

    model, _ = tiny_model("bert")
    PrefixConfig(length=4).attach(model)
    save_adapter(model, tmp_path / "adapter.safetensors")
    with pytest.raises(ConfigError, match="prefix on 'bert' has no PEFT form: it is an encoder.*past key values"):
        export_peft(tmp_path, tmp_path / "peft")


@pytest.mark.parametrize("backbone, targets", [("tiny-llama", ["q_proj", "v_proj"]), ("tiny-gpt2", ["c_attn"])])
def test_export_on_decoder_only_backbones(tmp_path, backbone, targets):
    from tests.test_architectures_train import backbone_from

    model, tokenizer = backbone_from(backbone).build("sequence-classification", num_labels=2)
    LoRAConfig(r=2, targets=targets).attach(model)
    save_adapter(model.eval(), tmp_path / "adapter.safetensors")
    assert main([str(tmp_path), "--peft", str(tmp_path / "peft")]) == 0
    base, _ = backbone_from(backbone).build("sequence-classification", num_labels=2)
    theirs = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    batch = dict(tokenizer(["the cat sat on the mat", "a dog"], padding=True, return_tensors="pt"))
    batch.pop("token_type_ids", None)  # GPT-2 takes them; a Llama's tokenizer no longer returns them
    torch.testing.assert_close(theirs(**batch).logits, model(**batch).logits, rtol=0, atol=1e-5)


def test_export_refuses_a_slice_of_gpt2s_fused_projection(tmp_path):
    from tests.test_architectures_train import backbone_from

    model, _ = backbone_from("tiny-gpt2").build("sequence-classification", num_labels=2)
    LoRAConfig(r=2, targets=["query", "value"]).attach(model)
    save_adapter(model, tmp_path / "adapter.safetensors")
    with pytest.raises(ConfigError, match="query, value of 'gpt2' updates a slice of a fused projection"):
        export_peft(tmp_path, tmp_path / "peft")
