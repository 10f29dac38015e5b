"""Merging a pruned LoRA into the frozen weights: same logits, and ΔW's density reported (it is dense in general)."""

import logging

import pytest
import torch

from sparse_adapter import merge_lora
from sparse_adapter.adapters import LoRAConfig
from sparse_adapter.adapters.lora import LoRALinear
from tests.conftest import tiny_model
from tests.test_architectures_train import backbone_from


def pruned(named: dict, names, density: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """Trained-looking factors, each keeping ``density`` of its entries."""
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    with torch.no_grad():
        for name in names:
            masks[name] = torch.rand(named[name].shape, generator=generator) < density
            named[name].normal_(0, 0.3, generator=generator).mul_(masks[name])
    return masks


def structural_density(b_mask: torch.Tensor, a_mask: torch.Tensor, numel: int) -> float:
    """ΔW_ij can be non-zero iff some k keeps both B_ik and A_kj: the density merging gives, counted by hand."""
    return float(((b_mask.float() @ a_mask.float()) > 0).sum()) / numel


@pytest.mark.parametrize("backbone, targets", [("tiny-bert", ["query", "value"]),
                                               ("tiny-gpt2", ["query", "value", "c_proj"])])  # slices of c_attn, Conv1D
def test_merge_lora_keeps_the_logits_and_reports_the_dense_update(caplog, backbone, targets):
    model, tokenizer = backbone_from(backbone).build("sequence-classification", num_labels=2)
    prunable = LoRAConfig(r=8, targets=targets).attach(model)
    named = dict(model.named_parameters())
    masks = pruned(named, prunable, 0.5)
    model.eval()
    batch = dict(tokenizer(["the cat sat on the mat", "a dog"], padding=True, return_tensors="pt"))
    if backbone != "tiny-bert":
        batch.pop("token_type_ids")
    with torch.no_grad():
        before = model(**batch).logits
    wrapped = {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    with caplog.at_level(logging.WARNING, logger="sparse_adapter.merging"):
        deltas = merge_lora(model)
    assert set(deltas) == set(wrapped) and not any(isinstance(m, LoRALinear) for m in model.modules())
    assert not any("lora_" in n for n, _ in model.named_parameters()) and not hasattr(model, "adapter_config")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, before, rtol=0, atol=1e-5)
    for name, delta in deltas.items():
        b, a = masks[f"{name}.lora_B"], masks[f"{name}.lora_A"]
        assert delta.density == pytest.approx(structural_density(b, a, b.shape[0] * a.shape[1]), abs=1e-12)
        assert delta.shape == (b.shape[0], a.shape[1]) and delta.factor_density < 0.6 < delta.density
    assert "had pruned factors" in caplog.text and "the merged weights W + ΔW are dense" in caplog.text


def test_peft_delta_densities_before_merge_and_unload():
    peft = pytest.importorskip("peft")
    from sparse_adapter.merging import merge_peft_lora, peft_delta_densities

    base, tokenizer = tiny_model("bert")
    original = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = peft.get_peft_model(base, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                                                      init_lora_weights="gaussian"))
    named = dict(model.named_parameters())
    masks = pruned(named, [n for n in named if "lora_" in n], 0.5)
    model.eval()
    batch = tokenizer(["the cat sat on the mat", "a dog"], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**batch).logits
    densities = peft_delta_densities(model)
    assert len(densities) == 4  # query and value of 2 layers
    merged, reported = merge_peft_lora(model)
    assert reported == densities
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, before, rtol=0, atol=1e-5)
    for module, delta in densities.items():
        path = module.removeprefix("base_model.model.")
        change = merged.get_submodule(path).weight.detach() - original[f"{path}.weight"]
        a, b = masks[f"{module}.lora_A.default.weight"], masks[f"{module}.lora_B.default.weight"]
        assert delta.density == pytest.approx(structural_density(b, a, change.numel()), abs=1e-12)
        assert float((change != 0).float().mean()) == pytest.approx(delta.density, abs=1e-3)  # what the merge added
        assert delta.factor_density < 0.6 < delta.density
