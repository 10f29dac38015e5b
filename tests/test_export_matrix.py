"""Every architecture × {LoRA, IA³, prefix} through ``python -m sparse_adapter.export``: PEFT loads the folder
and gives our logits, or the export is one ConfigError naming the architecture and why. One tiny model build
per architecture and head (copied for each use)."""

import copy
import dataclasses
import functools
import re

import pytest
import torch

from sparse_adapter import ConfigError, save_adapter
from sparse_adapter.adapters import IA3Config, LoRAConfig, PrefixConfig
from sparse_adapter.export import export_peft, main
from tests.test_architectures_train import backbone_from

peft = pytest.importorskip("peft")

# every model type with a layout: the tiny backbones, and "<tiny backbone>:<model type>" for the types sharing a layout
ARCHITECTURES = ["tiny-bert", "tiny-roberta", "tiny-bart", "tiny-llama", "tiny-qwen3", "tiny-gpt2", "tiny-t5",
                 "tiny-bert:electra", "tiny-roberta:xlm-roberta", "tiny-llama:mistral", "tiny-llama:qwen2",
                 "tiny-t5:mt5"]
ENCODERS = {"bert", "roberta", "electra", "xlm-roberta"}
GATED = {"llama", "qwen3", "mistral", "qwen2", "t5", "mt5"}  # a gate projection (Llama's gate_proj, T5's wi_0)
# LoRA: every layout name that is a whole module (GPT-2's query/key/value are thirds of c_attn: its module name instead)
LORA_TARGETS = {"gpt2": ["c_attn", "attention_output", "intermediate", "output"]}
LORA_DEFAULT = ["query", "key", "value", "attention_output", "intermediate", "output"]
IA3_TARGETS = {"gpt2": ["ffn"]}  # GPT-2's key/value are thirds of c_attn: refused below
DECODER_ONLY = {"llama", "qwen3", "gpt2", "mistral", "qwen2"}
# why a prefix is refused (the refusal also names the architecture)
PREFIX_REFUSED = {**dict.fromkeys(ENCODERS, "it is an encoder"), "bart": "it is an encoder-decoder",
                  "t5": "it is an encoder-decoder", "mt5": "it is an encoder-decoder"}


def model_type(name: str) -> str:
    return name.partition(":")[2] or name.removeprefix("tiny-")


@functools.cache
def built(name: str, head: str = "sequence-classification"):
    base, _, other_type = name.partition(":")
    backbone = backbone_from(base)
    backbone = dataclasses.replace(backbone, model_type=other_type) if other_type else backbone
    model, tokenizer = backbone.build(head, **({"num_labels": 2} if head == "sequence-classification" else {}))
    return model.eval(), tokenizer


def fresh(name: str, head: str = "sequence-classification"):
    model, tokenizer = built(name, head)
    return copy.deepcopy(model), tokenizer


def batch_for(name: str, tokenizer, pairs: bool = True) -> dict:
    first = ["the cat sat on the mat", "a dog"]
    texts = (first, ["it was happy", "ran"]) if pairs else (first,)
    batch = dict(tokenizer(*texts, padding=True, return_tensors="pt"))
    if model_type(name) not in ENCODERS:
        batch.pop("token_type_ids", None)
    return batch


def trained(model, prunable: list[str], draw, seed: int = 0) -> dict[str, torch.Tensor]:
    """"Train" the adapter (``draw(shape, generator)``) and the head, prune 40% of every adapter tensor; the masks."""
    named = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    masks = {n: torch.rand(named[n].shape, generator=generator) < 0.6 for n in prunable}
    with torch.no_grad():
        for name, parameter in named.items():
            if name in masks:
                parameter.copy_(draw(parameter.shape, generator) * masks[name])
            elif parameter.requires_grad:
                parameter.normal_(0, 0.5, generator=generator)
    return masks


def exported_difference(tmp_path, name: str, model, masks, batch: dict, head: str = "sequence-classification",
                        peft_kwargs: dict | None = None) -> float:
    """Export through the CLI, load with PeftModel.from_pretrained on a fresh base: max |our logits - PEFT's|."""
    save_adapter(model, tmp_path / "adapter.safetensors", masks=masks)
    assert main([str(tmp_path), "--peft", str(tmp_path / "peft")]) == 0
    base, _ = fresh(name, head)
    theirs = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    with torch.no_grad():
        ours, peft_logits = model(**batch).logits, theirs(**batch, **(peft_kwargs or {})).logits
        untouched = built(name, head)[0](**batch).logits
    assert (ours - untouched).abs().max() > 1e-3  # the adapter changes the model: equal logits mean something
    return float((peft_logits - ours).abs().max())


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_lora_exports_on_every_architecture_with_equal_logits(tmp_path, name):
    model, tokenizer = fresh(name)
    targets = LORA_TARGETS.get(model_type(name), LORA_DEFAULT + (["gate"] if model_type(name) in GATED else []))
    prunable = LoRAConfig(r=4, alpha=8, targets=targets).attach(model)
    masks = trained(model, prunable, lambda shape, g: 0.3 * torch.randn(shape, generator=g))
    assert exported_difference(tmp_path, name, model, masks, batch_for(name, tokenizer)) <= 1e-5


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_ia3_exports_on_every_architecture_with_equal_logits(tmp_path, name):
    model, tokenizer = fresh(name)
    prunable = IA3Config(targets=IA3_TARGETS.get(model_type(name), ["key", "value", "ffn"])).attach(model)
    masks = trained(model, prunable, lambda shape, g: 1 + 0.5 * torch.randn(shape, generator=g))
    assert exported_difference(tmp_path, name, model, masks, batch_for(name, tokenizer)) <= 1e-5


@pytest.mark.parametrize("adapter", [LoRAConfig(r=2, targets=["query", "value"]), IA3Config(targets=["key", "value"])])
def test_a_slice_of_gpt2s_fused_projection_is_refused_with_the_reason(tmp_path, adapter):
    model, _ = fresh("tiny-gpt2")
    adapter.attach(model)
    save_adapter(model, tmp_path / "adapter.safetensors")
    with pytest.raises(ConfigError, match="of 'gpt2' updates a slice of a fused projection, which PEFT"):
        export_peft(tmp_path, tmp_path / "peft")


@pytest.mark.parametrize("name", [a for a in ARCHITECTURES if model_type(a) in DECODER_ONLY])
def test_a_causal_lm_prefix_exports_with_equal_logits_at_our_positions(tmp_path, name):
    """PEFT's prefix tuning starts the sequence at position n, ours at 0 (documented); given position_ids that PEFT
    shifts back to ours, the logits are equal, and without them they differ by that shift alone."""
    model, tokenizer = fresh(name, "causal-lm")
    prunable = PrefixConfig(length=3).attach(model)
    for parameter_name, parameter in model.named_parameters():  # the LM head stays frozen, as in causal-LM runs
        parameter.requires_grad_(parameter_name in prunable)
    masks = trained(model, prunable, lambda shape, g: torch.randn(shape, generator=g))
    batch = batch_for(name, tokenizer, pairs=False)
    length = batch["input_ids"].shape[1]
    ours_positions = {"position_ids": torch.arange(length).expand(2, length) - 3}
    assert exported_difference(tmp_path, name, model, masks, batch, "causal-lm", ours_positions) <= 1e-5
    base, _ = fresh(name, "causal-lm")
    theirs = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    with torch.no_grad():
        assert (theirs(**batch).logits - model(**batch).logits).abs().max() > 1e-3  # the shift is real


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_a_prefix_is_refused_where_peft_has_no_equal_form_naming_the_architecture(tmp_path, name):
    model, _ = fresh(name)
    PrefixConfig(length=3).attach(model)
    save_adapter(model, tmp_path / "adapter.safetensors")
    head = ".* past_key_values, which transformers 5 renamed cache"  # decoder-only: the classification head is why
    why = PREFIX_REFUSED.get(model_type(name), head)
    with pytest.raises(ConfigError, match=f"prefix on '{model_type(name)}' has no PEFT form: {why}"):
        export_peft(tmp_path, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()
    if model_type(name) in ENCODERS | DECODER_ONLY:  # the reason given is PEFT's own behaviour, version by version
        assert_peft_prefix_behaves_as_the_refusal_says(name, model)


def assert_peft_prefix_behaves_as_the_refusal_says(name: str, ours):
    """PEFT 0.21 raises; from 0.22 PEFT's prefix is ours with the positions moved past it (the same prefix weights)."""
    from packaging.version import Version

    base, tokenizer = fresh(name)
    batch = batch_for(name, tokenizer)
    theirs = peft.get_peft_model(base, peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3)).eval()
    if Version(peft.__version__) < Version("0.22"):
        with pytest.raises(ValueError, match="does not support past key values"):
            theirs(**batch)
        return
    by_layer: dict[int, dict[str, torch.Tensor]] = {}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter_name, parameter in ours.named_parameters():
            if ".prefix_" in parameter_name:  # trained-looking prefixes, not their initialisation
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
                layer = int(re.search(r"\.(\d+)\.", parameter_name).group(1))
                by_layer.setdefault(layer, {})[parameter_name.rsplit("_", 1)[1]] = parameter.detach().clone()
    rows = torch.cat([by_layer[i][kind] for i in sorted(by_layer) for kind in ("key", "value")], dim=1)
    mask = batch["attention_mask"]
    if model_type(name) in {"roberta", "xlm-roberta"}:  # positions count from padding_idx + 1, pads stay padding_idx
        past = (torch.cumsum(mask, 1) + 3) * mask + ours.config.pad_token_id
    else:
        past = torch.arange(3, 3 + mask.shape[1]).expand_as(mask)
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(rows)
        torch.testing.assert_close(theirs(**batch).logits, ours.eval()(**batch, position_ids=past).logits)
        assert (theirs(**batch).logits - ours(**batch).logits).abs().max() > 1e-4  # at our positions: another function


def test_a_reparametrised_prefix_is_refused_until_merged(tmp_path):
    from sparse_adapter.adapters.base import merge_adapters

    model, _ = fresh("tiny-llama", "causal-lm")
    PrefixConfig(length=3, mlp_hidden=4).attach(model)
    save_adapter(model, tmp_path / "adapter.safetensors")
    with pytest.raises(ConfigError, match="reparametrised through an MLP.*merge_adapters"):
        export_peft(tmp_path, tmp_path / "peft")
    merge_adapters(model)
    save_adapter(model, tmp_path / "adapter.safetensors")
    assert export_peft(tmp_path, tmp_path / "peft").is_dir()
