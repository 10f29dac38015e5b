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


# the default run covers every variant and every architecture (prefix, the riskiest, on all four); the
# rest of the matrix is marked slow (-m "not slow" leaves it out)
COVER = {("tiny-llama", "houlsby"), ("tiny-llama", "mam"), ("tiny-llama", "prefix"), ("tiny-qwen3", "lora"),
         ("tiny-qwen3", "prefix"), ("tiny-gpt2", "lora"), ("tiny-gpt2", "ia3"), ("tiny-gpt2", "prefix"),
         ("tiny-gpt2", "parallel"), ("tiny-t5", "pfeiffer"), ("tiny-t5", "prefix"), ("tiny-t5", "lora")}
MATRIX = [pytest.param(b, a, marks=() if (b, a) in COVER else pytest.mark.slow) for b in ARCHITECTURES for a in VARIANTS]


@pytest.mark.parametrize("backbone, adapter", MATRIX)
def test_every_variant_trains_on_every_new_architecture(tmp_path, glue_dir, backbone, adapter):
    train_in_process(tmp_path, f"data_dir={glue_dir}", f"backbone={backbone}", f"adapter={adapter}", *TINY_RUN, *VARIANTS[adapter])
    s = check_run(tmp_path, backbone, adapter)
    assert 0 < s["trained_params_body"] < s["backbone_params"]
    model = load_adapter(backbone_from(backbone), tmp_path / "adapter.safetensors")  # the file alone attaches it again
    assert type(model.adapter_config).__name__.lower().startswith(adapter[:3])


def slow_except(*covered):
    return [pytest.param(b, marks=() if b in covered else pytest.mark.slow) for b in ARCHITECTURES]


@pytest.mark.parametrize("backbone", slow_except("tiny-gpt2", "tiny-t5"))
def test_fusion_trains_on_every_new_architecture(tmp_path, glue_dir, backbone):
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


@pytest.mark.parametrize("backbone", slow_except("tiny-llama"))
def test_full_fine_tuning_trains_every_backbone_weight(tmp_path, glue_dir, backbone):
    train_in_process(tmp_path, f"data_dir={glue_dir}", f"backbone={backbone}", "adapter=none", "pruner=none", *TINY_RUN)
    s = summary(tmp_path)
    assert s["trained_params_body"] == s["backbone_params"]  # full fine-tuning trains every backbone weight


@pytest.mark.parametrize(
    "backbone, task, extra, metric",
    [
        ("tiny-gpt2", "squad", ["data.max_length=96", "data.doc_stride=32", "data.max_question_length=24", "data.eval_batch_size=4"], "f1"),
        ("tiny-t5", "xsum", ["data.max_length=64", "data.max_target_length=8", "task.max_new_tokens=4", "data.eval_batch_size=4"], "rouge2"),
        ("tiny-qwen3", "xsum_lm", ["data.max_length=64", "data.max_target_length=8", "task.max_new_tokens=4", "data.eval_batch_size=4"], "rouge2"),
    ],
)
def test_qa_and_summaries_on_the_new_architectures(tmp_path, glue_dir, backbone, task, extra, metric):
    train_in_process(tmp_path, f"data_dir={glue_dir}", f"backbone={backbone}", f"task={task}", "adapter=lora", *TINY_RUN, *extra)
    s = check_run(tmp_path, backbone, "lora")
    assert s["task"] == task.removesuffix("_lm") and s["main_metric"] == metric and 0.0 <= s["metrics"][metric] <= 1.0
