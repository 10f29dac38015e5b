"""Every variant on every new architecture (Llama, Qwen3, GPT-2, T5) trains through train.py:
exact kept count, pruned entries exactly zero in the saved adapter, the adapter file loads back."""

import pytest
import torch

from sparse_adapter import load_adapter, save_adapter
from sparse_adapter.adapters import HoulsbyConfig
from sparse_adapter.io import read_adapter
from tests.test_cli import summary, train_in_process

ARCHITECTURES = ["tiny-llama", "tiny-qwen3", "tiny-gpt2", "tiny-t5"]
TINY_RUN = ["data.max_train_samples=8", "data.max_eval_samples=4", "data.batch_size=4", "trainer.max_steps=2",
            "pruner.batches=1", "data.max_length=32"]
VARIANTS = {  # small widths and cheap pruners: the point is placement, masks and files, not accuracy;
    # SNIP and GraSP score through each architecture once (GraSP: eager attention, a double backward)
    "houlsby": ["adapter.bottleneck=4", "pruner=magnitude"],
    "pfeiffer": ["adapter.bottleneck=4", "pruner=random"],
    "lora": ["adapter.r=2", "pruner=snip"],
    "parallel": ["adapter.bottleneck=4", "pruner=er"],
    "prefix": ["adapter.length=3", "pruner=random", "pruner.scope=layer"],
    "mam": ["adapter.size=3", "pruner=magnitude"],
    "ia3": ["pruner=grasp", "sparsity=0.5"],
}


def backbone_from(name: str):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tests.conftest import ROOT

    return instantiate(OmegaConf.load(ROOT / "conf" / "backbone" / f"{name}.yaml"))


def check_run(run_dir, backbone: str, adapter: str) -> dict:
    s = summary(run_dir)
    assert (s["backbone"], s["adapter"]) == (backbone, adapter)
    assert s["adapter_weights_kept"] == round((1 - s["sparsity"]) * s["adapter_weights_total"])
    weights, masks, _ = read_adapter(run_dir / "adapter.safetensors")
    assert sum(round(d * weights[n].numel()) for n, d in s["layer_density"].items()) == s["adapter_weights_kept"]
    for name, mask in masks.items():  # masks held: every pruned entry is exactly zero after training
        assert torch.count_nonzero(weights[name][~mask]) == 0
        assert int(mask.sum()) == round(s["layer_density"][name] * weights[name].numel())
    return s


@pytest.mark.parametrize("adapter", list(VARIANTS))
@pytest.mark.parametrize("backbone", ARCHITECTURES)
def test_every_variant_trains_on_every_new_architecture(tmp_path, glue_dir, backbone, adapter):
    train_in_process(tmp_path, f"data_dir={glue_dir}", f"backbone={backbone}", f"adapter={adapter}", *TINY_RUN, *VARIANTS[adapter])
    s = check_run(tmp_path, backbone, adapter)
    assert 0 < s["trained_params_body"] < s["backbone_params"]
    model = load_adapter(backbone_from(backbone), tmp_path / "adapter.safetensors")  # the file alone attaches it again
    assert type(model.adapter_config).__name__.lower().startswith(adapter[:3])


@pytest.mark.parametrize("backbone", ARCHITECTURES)
def test_fusion_and_full_fine_tuning_train_on_every_new_architecture(tmp_path, glue_dir, backbone):
    sources = []
    for seed in (0, 1):  # two stage-1 adapters of this backbone (untrained: fusion only needs their files)
        model, _ = backbone_from(backbone).build("sequence-classification", num_labels=2)
        torch.manual_seed(seed)
        HoulsbyConfig(bottleneck=4).attach(model)
        save_adapter(model, tmp_path / f"source{seed}.safetensors")
        sources.append(str(tmp_path / f"source{seed}.safetensors"))
    fused = tmp_path / "fusion"
    fused.mkdir()
    train_in_process(fused, f"data_dir={glue_dir}", f"backbone={backbone}", "adapter=fusion", f"adapter.sources=[{','.join(sources)}]", *TINY_RUN)
    check_run(fused, backbone, "fusion")
    full = tmp_path / "none"
    full.mkdir()
    train_in_process(full, f"data_dir={glue_dir}", f"backbone={backbone}", "adapter=none", "pruner=none", *TINY_RUN)
    s = summary(full)
    assert s["trained_params_body"] == s["backbone_params"]  # full fine-tuning trains every backbone weight
