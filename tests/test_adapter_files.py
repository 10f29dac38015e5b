"""Adapter files: sparse storage that shrinks with sparsity, exact round trips, clear refusals."""

import lightning as L
import pytest
import torch

from callbacks import MaskEnforcement, PruneAtInit
from sparse_adapter import ConfigError, load_adapter, read_adapter, save_adapter
from sparse_adapter.adapters import HoulsbyConfig, LoRAConfig, MAMConfig, PrefixConfig
from sparse_adapter.adapters.base import merge_adapters
from sparse_adapter.backbones import RandomBackbone
from sparse_adapter.pruning import PrunerConfig
from tasks.classification import ClassificationModule, GlueDataModule
from tasks.optim import AdamWConfig
from tests.conftest import TINY, tiny_backbone, tiny_model


def inputs(tokenizer):
    return tokenizer(["the cat sat on the mat", "a dog"], ["it was happy", "ran"], padding=True, return_tensors="pt")


def exact_k_masks(model, names, density, seed=0):
    named = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name in names:
        numel = named[name].numel()
        mask = torch.zeros(numel, dtype=torch.bool)
        mask[torch.randperm(numel, generator=generator)[: round(density * numel)]] = True
        masks[name] = mask.view(named[name].shape)
        with torch.no_grad():
            named[name].mul_(masks[name])
    return masks


def test_file_shrinks_with_sparsity(tmp_path):
    model, _ = tiny_model("bert")
    names = HoulsbyConfig(bottleneck=256).attach(model)  # a fixed-size adapter: 4 x 2 x 32 x 256 weights
    dense = tmp_path / "dense.safetensors"
    save_adapter(model, dense)
    masks = exact_k_masks(model, names, 0.25)  # s = 0.75
    sparse = tmp_path / "sparse.safetensors"
    save_adapter(model, sparse, masks=masks)
    assert sparse.stat().st_size < 0.35 * dense.stat().st_size
    very = tmp_path / "very.safetensors"  # s = 0.99: indices are smaller than a bit mask
    save_adapter(model, very, masks=exact_k_masks(model, names, 0.01))
    assert very.stat().st_size < 0.5 * sparse.stat().st_size
    for path, density in ((sparse, 0.25), (very, 0.01)):
        tensors, saved_masks, _ = read_adapter(path)
        named = dict(model.named_parameters())
        for name in names:
            assert int(saved_masks[name].sum()) == round(density * named[name].numel())
    tensors, _, _ = read_adapter(very)
    assert all(torch.equal(tensors[n], p.detach()) for n, p in model.named_parameters() if n in tensors)


@pytest.mark.parametrize("model_type, adapter", [("bert", PrefixConfig(length=4, mlp_hidden=8)), ("roberta", MAMConfig(size=6)), ("bert", LoRAConfig(r=4))])
def test_trained_sparse_adapter_round_trips_exactly_from_the_file_alone(tmp_path, rte_task, glue_dir, model_type, adapter):
    L.seed_everything(0)
    module = ClassificationModule(tiny_backbone(model_type), adapter, AdamWConfig(lr=1e-2), rte_task)
    data = GlueDataModule(rte_task, module.tokenizer, data_dir=glue_dir, max_length=32, batch_size=4, max_train_samples=8, max_eval_samples=4)
    L.Trainer(
        callbacks=[PruneAtInit(PrunerConfig("magnitude"), 0.6), MaskEnforcement()], max_steps=2, accelerator="cpu",
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=tmp_path,
    ).fit(module, datamodule=data)
    model = module.model.eval()
    merge_adapters(model)
    save_adapter(model, tmp_path / "adapter.safetensors", {"task": "rte"}, masks=module.masks)
    loaded = load_adapter(tiny_backbone(model_type), tmp_path / "adapter.safetensors").eval()  # no config given
    assert type(loaded.adapter_config) is type(adapter)
    batch = inputs(module.tokenizer)
    assert torch.equal(loaded(**batch).logits, model(**batch).logits)


@pytest.fixture
def lora_qv_file(tmp_path):
    model, _ = tiny_model("bert")
    LoRAConfig(r=4, targets=["query", "value"]).attach(model)
    path = tmp_path / "lora.safetensors"
    save_adapter(model, path)
    return path


def test_load_refuses_missing_tensors(lora_qv_file):
    model, _ = tiny_model("bert")
    LoRAConfig(r=4, targets=["query", "value", "intermediate"]).attach(model)
    with pytest.raises(ConfigError, match="missing.*intermediate"):
        load_adapter(model, lora_qv_file)


def test_load_refuses_other_shapes(lora_qv_file):
    model, _ = tiny_model("bert")
    LoRAConfig(r=8, targets=["query", "value"]).attach(model)
    with pytest.raises(ConfigError, match="shape"):
        load_adapter(model, lora_qv_file)


def test_load_refuses_another_backbone_or_hidden_size(lora_qv_file):
    with pytest.raises(ConfigError, match="model_type=bert in the file, roberta"):
        load_adapter(tiny_backbone("roberta"), lora_qv_file)
    wider = RandomBackbone(model_type="bert", config=dict(TINY, hidden_size=64))
    with pytest.raises(ConfigError, match="hidden_size=32 in the file, 64"):
        load_adapter(wider, lora_qv_file)
    with pytest.raises(ConfigError, match="does not exist"):
        load_adapter(tiny_backbone("bert"), lora_qv_file.with_name("nothing.safetensors"))


def test_files_from_before_format_2_still_load_into_an_attached_model(tmp_path):
    from safetensors.torch import save_file

    from sparse_adapter.io import trained_state_dict

    model, tokenizer = tiny_model("bert")
    HoulsbyConfig(bottleneck=4).attach(model)
    save_file(trained_state_dict(model), str(tmp_path / "old.safetensors"), metadata={"adapter": "houlsby"})
    fresh, _ = tiny_model("bert")
    with pytest.raises(ConfigError, match="attach its adapter"):
        load_adapter(fresh, tmp_path / "old.safetensors")
    HoulsbyConfig(bottleneck=4, init="lora").attach(fresh)
    load_adapter(fresh, tmp_path / "old.safetensors")
    model.eval(), fresh.eval()
    batch = inputs(tokenizer)
    assert torch.equal(fresh(**batch).logits, model(**batch).logits)
