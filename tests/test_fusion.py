"""AdapterFusion: sources loaded frozen with their sparsity, a fusion layer trained and pruned."""

import pytest
import torch

from sparse_adapter import ConfigError, load_adapter, read_adapter, save_adapter
from sparse_adapter.accounting import parameter_report
from sparse_adapter.adapters import FusionConfig, HoulsbyConfig, LoRAConfig, PfeifferConfig
from tests.conftest import TINY, tiny_model

H, LAYERS = TINY["hidden_size"], TINY["num_hidden_layers"]


def inputs(tokenizer):
    return tokenizer(["the cat sat on the mat", "a dog"], ["it was happy", "ran"], padding=True, return_tensors="pt")


def saved_source(tmp_path, name, config, model_type="bert"):
    model, tokenizer = tiny_model(model_type)
    model.eval()
    config.attach(model)
    path = tmp_path / f"{name}.safetensors"
    save_adapter(model, path)
    return path, model, tokenizer


def test_one_source_passed_through_equals_that_adapter(tmp_path):
    path, source_model, tokenizer = saved_source(tmp_path, "a", PfeifferConfig(bottleneck=8))
    model, _ = tiny_model("bert")  # same seed: same backbone and head as the source's model
    model.eval()
    FusionConfig(sources=[str(path)]).attach(model)
    batch = inputs(tokenizer)
    torch.testing.assert_close(model(**batch).logits, source_model(**batch).logits, rtol=0, atol=1e-6)


def test_sources_are_frozen_and_only_fusion_and_head_train(tmp_path):
    a, *_ = saved_source(tmp_path, "a", HoulsbyConfig(bottleneck=8))
    b, *_ = saved_source(tmp_path, "b", PfeifferConfig(bottleneck=4))
    model, _ = tiny_model("bert")
    with pytest.raises(ConfigError, match="the sources adapt different slots"):  # never silently: issue 26
        FusionConfig(sources=[str(a), str(b)]).attach(tiny_model("bert")[0])
    prunable = FusionConfig(sources=[str(a), str(b)], shared_slots_only=True).attach(model)
    assert len(prunable) == 3 * LAYERS  # after the FFN only: the slot both sources share
    report = parameter_report(model, prunable, None)
    assert report["trained_params_body"] == LAYERS * 3 * (H * H + H)
    assert report["adapter_weights_total"] == LAYERS * 3 * H * H
    sources = {n for n, p in model.named_parameters() if ".sources." in n}
    assert sources and not any(dict(model.named_parameters())[n].requires_grad for n in sources)
    assert report["backbone_params"] == sum(p.numel() for n, p in model.named_parameters()
                                            if n.startswith("bert.") and ".sources." not in n and ".fusion." not in n)


def test_fusion_file_keeps_the_sources_sparsity_and_round_trips(tmp_path):
    path, source_model, tokenizer = saved_source(tmp_path, "a", PfeifferConfig(bottleneck=8))
    named = dict(source_model.named_parameters())
    with torch.no_grad():
        named["bert.encoder.layer.0.output.dropout.adapter.down.weight"][:, ::2] = 0  # a pruned source
    save_adapter(source_model, path)
    model, _ = tiny_model("bert")
    FusionConfig(sources=[str(path)]).attach(model)
    model.eval()
    save_adapter(model, tmp_path / "fusion.safetensors")
    tensors, masks, metadata = read_adapter(tmp_path / "fusion.safetensors")
    assert metadata["adapter"] == "fusion"
    down = "bert.encoder.layer.0.output.dropout.sources.0.down.weight"
    assert down in masks and torch.count_nonzero(tensors[down][:, ::2]) == 0  # stored sparsely, zeros kept
    fresh, _ = tiny_model("bert")
    load_adapter(fresh, tmp_path / "fusion.safetensors").eval()
    batch = inputs(tokenizer)
    assert torch.equal(fresh(**batch).logits, model(**batch).logits)


@pytest.mark.parametrize(
    "make_source, match",
    [
        (None, "adapter.sources is empty"),
        (lambda tmp: saved_source(tmp, "r", PfeifferConfig(bottleneck=4), "roberta")[0], "adapter.sources.*another backbone"),
        (lambda tmp: saved_source(tmp, "l", LoRAConfig(r=2))[0], "adapter.sources.*bottleneck adapters"),
        (lambda tmp: tmp / "missing.safetensors", "adapter.sources.*not an adapter file"),
    ],
)
def test_bad_sources_are_refused(tmp_path, make_source, match):
    sources = [] if make_source is None else [str(make_source(tmp_path))]
    model, _ = tiny_model("bert")
    with pytest.raises(ConfigError, match=match):
        FusionConfig(sources=sources).attach(model)


def test_two_stages_through_train_py(tmp_path, glue_dir):
    from tests.test_cli import summary, train, train_in_process

    stage1 = []
    for task in ("mrpc", "rte"):
        run_dir = tmp_path / task
        train_in_process(run_dir, f"data_dir={glue_dir}", f"task={task}", "adapter=pfeiffer", "adapter.bottleneck=8", "sparsity=0.5")
        stage1.append(run_dir)
    fused = tmp_path / "fusion"
    train_in_process(fused, f"data_dir={glue_dir}", "task=rte", "adapter=fusion", f"adapter.sources=[{stage1[0]},{stage1[1]}]", "sparsity=0.4")
    s = summary(fused)
    assert (s["adapter"], s["pruner"]) == ("fusion", "snip")
    assert s["adapter_weights_total"] == LAYERS * 3 * H * H and s["adapter_weights_kept"] == round(0.6 * s["adapter_weights_total"])
    tensors, masks, _ = read_adapter(fused / "adapter.safetensors")
    for i, source in enumerate(stage1):  # each source came through with exactly its stage-1 topology
        source_tensors, source_masks, _ = read_adapter(source / "adapter.safetensors")
        name = "bert.encoder.layer.1.output.dropout.adapter.up.weight"
        fused_name = name.replace(".adapter.", f".sources.{i}.")
        assert torch.equal(tensors[fused_name], source_tensors[name])
        assert torch.equal(tensors[fused_name] != 0, source_masks[name] & (source_tensors[name] != 0))

    result = train(tmp_path / "bad", f"data_dir={glue_dir}", "adapter=fusion")  # no sources: one clear line
    assert result.returncode != 0 and "error: adapter.sources" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "bad" / "summary.json").exists()


def test_table4_sweep_runs_fusion_over_the_sparse_pfeiffer_row_and_reports(tmp_path, glue_dir):
    """experiment=table4's sparse Pfeiffer and AdapterFusion rows: stage 2 finds stage 1 in the sweep."""
    from paper.report import load_summaries, report
    from tests.test_cli import train

    rows = "hydra.sweeper.params.row='t4_pfeiffer_snip,t4_fusion_snip'"
    result = train(tmp_path, f"data_dir={glue_dir}", "experiment=table4", rows, "hydra.sweeper.params.seed=42",
                   "data.max_train_samples=16", "pruner.batches=1", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = load_summaries([tmp_path])
    assert sorted((r["row"], r["task"]) for r in runs) == sorted(
        (row, task) for row in ("t4_pfeiffer_snip", "t4_fusion_snip") for task in ("cola", "mrpc", "rte", "stsb"))
    fusion = next(r for r in runs if r["row"] == "t4_fusion_snip" and r["task"] == "rte")
    assert fusion["adapter"] == "fusion" and len(fusion["adapter_config"]["sources"]) == 4
    text = report(runs)
    assert "Table 4" in text and "AdapterFusion + SNIP s=0.4" in text and "Pfeiffer + SNIP s=0.4" in text
