"""Masks come back from every file for every pruned tensor; a sparse PEFT folder given to PEFT says how to load it."""

import json

import pytest
import torch

from sparse_adapter import read_adapter, save_adapter
from sparse_adapter.adapters import IA3Config, LoRAConfig
from tests.conftest import tiny_model

# densities across the range: near 1 a dense tensor alone is smaller than values + mask (stored densely before)
DENSITIES = [1.0, 0.99, 0.97, 0.9, 0.5, 0.1, 0.0]


def masks_at(model, names, densities, seed=0):
    named = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name, density in zip(names, densities * len(names)):
        numel = named[name].numel()
        mask = torch.zeros(numel, dtype=torch.bool)
        mask[torch.randperm(numel, generator=generator)[: round(density * numel)]] = True
        masks[name] = mask.view(named[name].shape)
        with torch.no_grad():
            named[name].normal_(generator=generator).mul_(masks[name])
            named[name].view(-1)[torch.nonzero(masks[name].view(-1))[:1]] = 0.0  # a kept weight may be exactly zero
    return masks


@pytest.mark.parametrize("adapter", [LoRAConfig(r=4, targets=["query", "value", "intermediate", "output"]),
                                     IA3Config(targets=["key", "value", "ffn"])])
def test_read_adapter_returns_every_pruned_tensors_mask_at_every_density(tmp_path, adapter):
    model, _ = tiny_model("bert")
    prunable = adapter.attach(model)
    masks = masks_at(model, prunable, DENSITIES)
    save_adapter(model, tmp_path / "adapter.safetensors", masks=masks)
    tensors, read, _ = read_adapter(tmp_path / "adapter.safetensors")
    assert set(read) == set(prunable)
    named = dict(model.named_parameters())
    for name in prunable:
        assert torch.equal(read[name], masks[name]) and torch.equal(tensors[name], named[name].detach())
    # a file written before (a pruned tensor stored densely where that was smaller) reads as before: no mask for it
    older = {n: m for n, m in masks.items() if n != prunable[0]}
    save_adapter(model, tmp_path / "older.safetensors", masks=older)
    tensors, read, _ = read_adapter(tmp_path / "older.safetensors")
    assert set(read) == set(older) and torch.equal(tensors[prunable[0]], named[prunable[0]].detach())


def test_a_sparse_peft_folder_given_to_peft_names_load_sparse_peft(tmp_path):
    peft = pytest.importorskip("peft")
    from sparse_adapter.peft import PEFT_TYPE_KEY, load_sparse_peft, save_sparse_peft

    base, tokenizer = tiny_model("bert")
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                      modules_to_save=["classifier"], init_lora_weights="gaussian"))
    names = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    masks = masks_at(model, names, DENSITIES)
    model.eval()
    save_sparse_peft(model, tmp_path / "sparse", masks)
    with pytest.raises(KeyError, match=r"load it with sparse_adapter\.peft\.load_sparse_peft\(base_model, folder\)"):
        peft.PeftModel.from_pretrained(tiny_model("bert")[0], str(tmp_path / "sparse"))
    with pytest.raises(KeyError, match="load_sparse_peft"):
        peft.PeftConfig.from_pretrained(str(tmp_path / "sparse"))
    loaded, read = load_sparse_peft(tiny_model("bert")[0], tmp_path / "sparse")
    assert set(read) == set(names) and all(torch.equal(read[n], masks[n]) for n in names)
    batch = tokenizer(["the cat sat on the mat", "a dog"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(loaded.eval()(**batch).logits, model(**batch).logits)
    config_path = tmp_path / "sparse" / "adapter_config.json"  # a folder from before: PEFT's own peft_type, no checksums
    config = json.loads(config_path.read_text())
    config["peft_type"] = config.pop(PEFT_TYPE_KEY)
    config_path.write_text(json.dumps(config))
    from safetensors import safe_open
    from safetensors.torch import save_file

    from sparse_adapter.peft import SPARSE_FILE

    with safe_open(str(tmp_path / "sparse" / SPARSE_FILE), framework="pt") as handle:
        tensors, metadata = {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()
    save_file(tensors, str(tmp_path / "sparse" / SPARSE_FILE), metadata={k: metadata[k] for k in ("format", "adapter", "shapes")})
    older, _ = load_sparse_peft(tiny_model("bert")[0], tmp_path / "sparse")
    with torch.no_grad():
        assert torch.equal(older.eval()(**batch).logits, model(**batch).logits)
