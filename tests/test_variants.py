"""The adapters beyond Houlsby/Pfeiffer/LoRA: parallel, prefix, MAM, IA³ on tiny BERT and RoBERTa."""

import lightning as L
import pytest
import torch

from callbacks import MaskEnforcement, PruneAtInit
from sparse_adapter.accounting import parameter_report
from sparse_adapter.adapters import ADAPTERS, IA3Config, MAMConfig, ParallelConfig, PrefixConfig
from sparse_adapter.adapters.base import adapter_parameter_names, merge_adapters
from sparse_adapter.errors import ConfigError
from sparse_adapter.pruning import PrunerConfig
from tasks.classification import ClassificationModule, GlueDataModule
from tasks.optim import AdamWConfig
from tests.conftest import ROOT, TINY, tiny_backbone, tiny_model

H, LAYERS, FFN = TINY["hidden_size"], TINY["num_hidden_layers"], TINY["intermediate_size"]


def inputs(tokenizer):
    return tokenizer(["the cat sat on the mat", "a dog"], ["it was happy", "ran"], padding=True, return_tensors="pt")


# (config, hand count of trained body parameters, of prunable weights)
HAND_COUNTS = [
    (ParallelConfig(bottleneck=8), LAYERS * (2 * H * 8 + 8 + H), LAYERS * 2 * H * 8),
    (PrefixConfig(length=5), LAYERS * 2 * 5 * H, LAYERS * 2 * 5 * H),
    (PrefixConfig(length=5, mlp_hidden=16), LAYERS * (5 * H + H * 16 + 16 + 16 * 2 * H + 2 * H), LAYERS * (5 * H + H * 16 + 16 * 2 * H)),
    (MAMConfig(size=6), LAYERS * (2 * 6 * H + 2 * H * 6 + 6 + H), LAYERS * (2 * 6 * H + 2 * H * 6)),
    (IA3Config(), LAYERS * (2 * H + FFN), LAYERS * (2 * H + FFN)),
    (IA3Config(targets=["value"]), LAYERS * H, LAYERS * H),
]


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize("config, trained, prunable_count", HAND_COUNTS, ids=lambda v: type(v).__name__ if not isinstance(v, int) else "")
def test_placement_freezing_and_hand_counted_parameters(model_type, config, trained, prunable_count):
    model, _ = tiny_model(model_type)
    backbone = sum(p.numel() for p in model.base_model.parameters())
    prunable = config.attach(model)
    named = dict(model.named_parameters())
    assert sum(named[n].numel() for n in prunable) == prunable_count
    body_trainable = {n for n, p in named.items() if p.requires_grad and n.startswith(model.base_model_prefix + ".")}
    assert body_trainable == adapter_parameter_names(model)  # only adapters train in the body
    report = parameter_report(model, prunable, None)
    assert report["trained_params_body"] == trained
    assert report["backbone_params"] == backbone  # adapters are not counted as backbone
    assert report["trained_params_pct"] == pytest.approx(100 * trained / backbone)


def test_mam_splits_its_weight_budget_equally():
    model, _ = tiny_model("bert")
    prunable = MAMConfig(size=12).attach(model)
    named = dict(model.named_parameters())
    prefix = sum(named[n].numel() for n in prunable if ".prefix_" in n)
    parallel = sum(named[n].numel() for n in prunable if ".adapter." in n)
    assert prefix == parallel == LAYERS * 2 * 12 * H


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_parallel_with_zero_up_projection_is_the_backbone_exactly(model_type):
    model, tokenizer = tiny_model(model_type)
    model.eval()
    batch = inputs(tokenizer)
    before = model(**batch).logits
    ParallelConfig(bottleneck=8, init="lora").attach(model)
    assert torch.equal(model(**batch).logits, before)
    with torch.no_grad():
        model.base_model.encoder.layer[0].output.adapter.up.weight.normal_()
    assert not torch.allclose(model(**batch).logits, before)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_prefix_enters_attention_and_padding_stays_masked(model_type, attn):
    model, tokenizer = tiny_model(model_type, attn=attn)
    model.eval()
    batch = inputs(tokenizer)
    before = model(**batch).logits
    PrefixConfig(length=4).attach(model)
    assert not torch.allclose(model(**batch).logits, before)  # the prefix changes the output
    with torch.no_grad():  # prefix keys so large they would swamp any unmasked position
        for block in model.base_model.encoder.layer:
            block.attention.self.prefix_key.mul_(1e3)
    logits = model(**batch).logits
    padded = batch["attention_mask"] == 0
    assert padded[1].any()
    other = dict(batch, input_ids=batch["input_ids"].masked_fill(padded, 1000))  # other tokens under the padding
    torch.testing.assert_close(model(**other).logits, logits, rtol=0, atol=0)
    if attn == "eager":  # the eager kernel returns the weights: padded keys get exactly none
        seen = []
        model.base_model.encoder.layer[0].attention.self.register_forward_hook(lambda m, a, out: seen.append(out[1]))
        model(**batch)
        weights = seen[0]  # (batch, heads, queries, 4 prefix + keys)
        assert weights.shape[-1] == 4 + padded.shape[1]
        assert torch.count_nonzero(weights[1][..., 4:][..., padded[1]]) == 0
        assert (weights[..., :4] > 0).all() and torch.allclose(weights.sum(-1), torch.ones(()))  # prefix keys are attended


def test_prefix_eager_and_sdpa_agree():
    outputs = []
    for attn in ("eager", "sdpa"):
        model, tokenizer = tiny_model("bert", attn=attn)
        model.eval()
        torch.manual_seed(1)
        PrefixConfig(length=3).attach(model)
        outputs.append(model(**inputs(tokenizer)).logits)
    torch.testing.assert_close(outputs[0], outputs[1])


def test_prefix_mlp_merges_into_the_same_prefix():
    model, tokenizer = tiny_model("roberta")
    model.eval()
    PrefixConfig(length=4, mlp_hidden=8).attach(model)
    batch = inputs(tokenizer)
    before = model(**batch).logits
    merge_adapters(model)
    assert not any("mlp" in n for n, _ in model.named_parameters())
    assert model.adapter_config == PrefixConfig(length=4, mlp_hidden=0)
    torch.testing.assert_close(model(**batch).logits, before)


@pytest.mark.parametrize(
    "config, setting",
    [
        (PrefixConfig(length=0), "adapter.length"),
        (PrefixConfig(length=-3), "adapter.length"),
        (MAMConfig(size=0), "adapter.size"),
        (IA3Config(targets=["nothing"]), "adapter.targets"),
        (IA3Config(targets=[]), "adapter.targets"),
        (ParallelConfig(activation="swish"), "adapter.activation"),
    ],
)
def test_bad_settings_name_the_setting(config, setting):
    model, _ = tiny_model("bert")
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        config.attach(model)


VARIANTS = [ParallelConfig(bottleneck=8), PrefixConfig(length=4, mlp_hidden=8), MAMConfig(size=6), IA3Config()]


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize("adapter", VARIANTS, ids=lambda c: type(c).__name__)
def test_masks_hold_exactly_while_training(tmp_path, rte_task, glue_dir, model_type, adapter):
    L.seed_everything(0)
    module = ClassificationModule(tiny_backbone(model_type), adapter, AdamWConfig(lr=1e-2), rte_task)
    data = GlueDataModule(rte_task, module.tokenizer, data_dir=glue_dir, max_length=32, batch_size=4, max_train_samples=12, max_eval_samples=4)
    initial = {n: p.detach().clone() for n, p in module.prunable_parameters().items()}
    fit = L.Trainer(
        callbacks=[PruneAtInit(PrunerConfig("snip", batches=1), 0.5), MaskEnforcement()], max_steps=3, accelerator="cpu",
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )
    fit.fit(module, datamodule=data)
    assert module.masks.kept() == round(0.5 * module.masks.total())
    params = module.prunable_parameters()
    for name, mask in module.masks.items():
        assert torch.count_nonzero(params[name][~mask]) == 0
    assert any(not torch.equal(params[n][m], initial[n][m]) for n, m in module.masks.items())  # kept weights train


@pytest.mark.parametrize(
    "backbone, adapter, extra, total, body",  # hand counts: prunable weights; trained body parameters (kept + biases)
    [
        ("tiny-bert", "parallel", ["adapter.bottleneck=8", "pruner=snip", "sparsity=0.5"], 2 * 2 * 32 * 8, 512 + 2 * (8 + 32)),
        ("tiny-roberta", "prefix", ["adapter.length=4", "adapter.mlp_hidden=8", "pruner=magnitude", "sparsity=0.4"],
         2 * (4 * 32 + 32 * 8 + 8 * 64), round(0.6 * 1792) + 2 * (8 + 64)),
        ("tiny-roberta", "mam", ["adapter.size=8", "large_sparse=2"], 2 * (2 * 8 * 32 + 2 * 32 * 8), 1024 + 2 * (8 + 32)),
        ("tiny-bert", "ia3", ["pruner=random", "sparsity=0.2"], 2 * (32 + 32 + 64), round(0.8 * 256)),
    ],
)
def test_every_variant_trains_through_train_py(tmp_path, glue_dir, backbone, adapter, extra, total, body):
    from tests.test_cli import summary, train_in_process

    train_in_process(tmp_path, f"data_dir={glue_dir}", f"backbone={backbone}", f"adapter={adapter}", *extra)
    s = summary(tmp_path)
    assert (s["adapter"], s["backbone"]) == (adapter, backbone)
    assert s["adapter_weights_kept"] == round((1 - s["sparsity"]) * s["adapter_weights_total"])
    assert (s["adapter_weights_total"], s["trained_params_body"]) == (total, body)
    assert s["trained_params_pct"] == pytest.approx(100 * body / s["backbone_params"])
    model = load_adapter_for(backbone, tmp_path / "adapter.safetensors")
    assert type(model.adapter_config) is ADAPTERS[adapter]


def load_adapter_for(backbone, path):
    from sparse_adapter import load_adapter

    return load_adapter(tiny_backbone(backbone.removeprefix("tiny-")), path)


@pytest.mark.parametrize(
    "overrides, setting",
    [
        (["adapter=prefix", "adapter.length=0"], "adapter.length"),
        (["adapter=prefix", "adapter.length=-2"], "adapter.length"),
        (["adapter=ia3", "adapter.targets=[key,nothing]"], "adapter.targets"),
        (["adapter=fusion"], "adapter.sources"),
        (["adapter=ia3", "large_sparse=2"], "large_sparse"),
    ],
)
def test_bad_variant_settings_raise_one_config_error_and_write_nothing(tmp_path, glue_dir, overrides, setting):
    from tests.test_cli import train_in_process

    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        train_in_process(tmp_path, f"data_dir={glue_dir}", *overrides)
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "adapter.safetensors").exists()


def test_fusion_source_from_another_backbone_is_refused_through_train_py(tmp_path, glue_dir):
    from sparse_adapter import save_adapter
    from tests.test_cli import train_in_process

    model, _ = tiny_model("roberta")
    ParallelConfig(bottleneck=4).attach(model)
    save_adapter(model, tmp_path / "roberta.safetensors")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(ConfigError, match="adapter.sources.*another backbone: model_type=roberta"):
        train_in_process(run_dir, f"data_dir={glue_dir}", "adapter=fusion", f"adapter.sources=[{tmp_path / 'roberta.safetensors'}]")
    assert not any(run_dir.iterdir())


def test_the_library_imports_without_lightning_or_hydra():
    import subprocess
    import sys

    code = ("import sys, sparse_adapter, sparse_adapter.export, sparse_adapter.adapters.fusion; "
            "print(sorted(m for m in ('lightning', 'hydra', 'omegaconf', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=str(ROOT))
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", sorted(set(ADAPTERS) - {"none"}))
def test_adapter_yaml_maps_one_to_one_to_its_config_dataclass(name):
    import dataclasses

    from hydra.utils import instantiate

    from tests.conftest import compose_config

    node = compose_config(f"adapter={name}").adapter
    config = instantiate(node, _convert_="object")
    assert type(config) is ADAPTERS[name]
    assert set(node) - {"_target_"} == {f.name for f in dataclasses.fields(config)}
