"""train.py end to end on a tiny backbone: outputs, sweeps, Large-Sparse and clear errors."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from sparse_adapter.errors import ConfigError
from sparse_adapter.io import read_adapter
from tasks.experiment import run
from tests import zygote
from tests.conftest import ROOT

FAST = [
    "backbone=tiny-bert", "trainer=smoke", "logger=csv",
    "data.max_train_samples=32", "data.max_eval_samples=16", "data.batch_size=8", "pruner.batches=2",
]


def train(tmp_path: Path, *overrides: str, multirun: bool = False, fast=FAST) -> subprocess.CompletedProcess:
    where = f"hydra.sweep.dir={tmp_path}" if multirun else f"hydra.run.dir={tmp_path}"
    return zygote.run("train.py", [*(["-m"] if multirun else []), *fast, where, *overrides],
                      dict(os.environ, **zygote.BASE_ENV), timeout=300)


def train_in_process(tmp_path: Path, *overrides: str) -> float:
    """What train.py does, without a new interpreter (saves ~8 s of imports per run)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=[*FAST, *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    return run(cfg, tmp_path)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_default_run_writes_summary_and_adapter(tmp_path, glue_dir):
    result = train(tmp_path, f"data_dir={glue_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    for chatter in ["litlogger", "Total FLOPs", "anonymous setting", "GPU available", "Generating train split", "Loading weights"]:
        assert chatter not in console, chatter
    first = next(line for line in console.splitlines() if "run: " in line)
    assert "bottleneck=64" in first and "sparsity=0.4000" in first and "max_train_samples=32" in first
    s = summary(tmp_path)
    assert (s["task"], s["backbone"], s["adapter"], s["pruner"], s["sparsity"], s["seed"]) == ("sst2", "tiny-bert", "houlsby", "snip", 0.4, 42)
    assert s["budget"]["max_train_samples"] == 32 and s["budget"]["max_steps"] == 4
    assert s["baseline"]["predictor"].startswith("constant class") and 0.4 < s["baseline"]["metrics"]["accuracy"] < 0.6
    assert 0.0 <= s["metrics"]["accuracy"] <= 1.0
    assert s["adapter_weights_kept"] == round(0.6 * s["adapter_weights_total"])
    assert s["actual_sparsity"] == pytest.approx(0.4, abs=1e-4)
    assert s["trained_params"] > 0 and 0 < s["trained_params_pct"] < 100 and s["wall_seconds"] > 0
    assert len(s["layer_density"]) == 8

    weights, masks, metadata = read_adapter(tmp_path / "adapter.safetensors")
    assert (metadata["adapter"], metadata["task"], metadata["backbone"]["model_type"]) == ("houlsby", "sst2", "bert")
    assert set(weights) == {n for n in weights if ".adapter." in n or n.startswith("classifier.")}
    assert {"classifier.weight", "classifier.bias"} <= set(weights)
    prunable = [n for n in weights if n.endswith(("down.weight", "up.weight"))]
    assert len(prunable) == 8
    assert sum(int(torch.count_nonzero(weights[n])) for n in prunable) <= s["adapter_weights_kept"]
    for name in prunable:  # stored sparsely: the saved mask has the density the run reported
        assert int(masks[name].sum()) == round(s["layer_density"][name] * weights[name].numel())
        assert torch.count_nonzero(weights[name][~masks[name]]) == 0
    assert (tmp_path / "csv" / "metrics.csv").is_file()


def test_lora_grasp_on_roberta_regression(tmp_path, glue_dir):
    train_in_process(tmp_path, f"data_dir={glue_dir}", "backbone=tiny-roberta", "task=stsb", "adapter=lora", "pruner=grasp", "sparsity=0.75")
    s = summary(tmp_path)
    assert (s["adapter"], s["pruner"], s["main_metric"]) == ("lora", "grasp", "pearson")
    assert set(s["metrics"]) >= {"pearson", "spearman"}
    assert s["adapter_weights_kept"] == round(0.25 * s["adapter_weights_total"])


def test_large_sparse_scales_the_bottleneck_and_sets_sparsity(tmp_path, glue_dir):
    train_in_process(tmp_path, f"data_dir={glue_dir}", "large_sparse=4", "task=mrpc")
    s = summary(tmp_path)
    assert s["adapter_config"]["bottleneck"] == 256 and s["sparsity"] == 0.75 and s["large_sparse"] == 4
    dense_budget = 2 * 2 * (2 * 32 * 64)  # the r=64 dense adapter's weight count
    assert s["adapter_weights_kept"] == dense_budget


def test_the_config_shows_the_effective_width_and_sparsity_of_large_sparse():
    """What `--cfg job --resolve` prints is what runs (no hidden rescaling inside the run)."""
    from omegaconf import OmegaConf

    from tests.conftest import compose_config

    cfg = OmegaConf.to_container(compose_config("large_sparse=4", "adapter=lora"), resolve=True)
    assert (cfg["adapter"]["r"], cfg["sparsity"]) == (32, 0.75)
    cfg = OmegaConf.to_container(compose_config("adapter=pfeiffer"), resolve=True)
    assert (cfg["adapter"]["bottleneck"], cfg["sparsity"]) == (64, 0.4)
    cfg = OmegaConf.to_container(compose_config("adapter=mam", "large_sparse=2"), resolve=True)
    assert (cfg["adapter"]["size"], cfg["sparsity"]) == (60, 0.5)  # prefix length and parallel bottleneck both ×2


def test_global_grasp_collapse_is_reported_and_min_density_prevents_it(tmp_path, glue_dir):
    """The issue's case: LoRA + GraSP at s=0.75 empties both query factors of every layer on tiny-bert."""
    lora = [f"data_dir={glue_dir}", "adapter=lora", "pruner=grasp", "sparsity=0.75"]
    train_in_process(tmp_path / "plain", *lora)
    s = summary(tmp_path / "plain")
    assert s["empty_matrices"] and all(s["layer_density"][n] == 0.0 for n in s["empty_matrices"])
    assert s["silenced_modules"] == sorted({n.rsplit(".", 1)[0] for n in s["empty_matrices"]})
    train_in_process(tmp_path / "floor", *lora, "pruner.min_density=0.05")
    s = summary(tmp_path / "floor")
    assert s["empty_matrices"] == [] and min(s["layer_density"].values()) >= 0.05
    assert s["adapter_weights_kept"] == round(0.25 * s["adapter_weights_total"])


def test_group_by_length_trains_and_is_part_of_the_budget(tmp_path, glue_dir):
    train_in_process(tmp_path, f"data_dir={glue_dir}", "task=mrpc", "data.group_by_length=true")
    s = summary(tmp_path)
    assert s["status"] == "complete" and s["budget"]["group_by_length"] is True  # the report never mixes it with random batches


def test_full_fine_tuning_trains_everything(tmp_path, glue_dir):
    train_in_process(tmp_path, f"data_dir={glue_dir}", "adapter=none", "task=cola")
    s = summary(tmp_path)
    assert (s["adapter"], s["pruner"], s["sparsity"]) == ("none", "none", 0.0)
    assert s["trained_params_pct"] == pytest.approx(100.0)
    assert "matthews" in s["metrics"]


def test_multirun_writes_one_summary_per_job_and_skips_finished(tmp_path, glue_dir):
    sweep = ["pruner=random,snip", "sparsity=0.2,0.6", f"data_dir={glue_dir}", "skip_finished=true"]
    result = train(tmp_path, *sweep, multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = sorted(tmp_path.glob("*/summary.json"))
    assert len(summaries) == 4
    seen = {(json.loads(p.read_text())["pruner"], json.loads(p.read_text())["sparsity"]) for p in summaries}
    assert seen == {("random", 0.2), ("random", 0.6), ("snip", 0.2), ("snip", 0.6)}
    records = sorted(tmp_path.glob("*/.hydra/*.yaml"))
    logs = sorted(tmp_path.glob("*/train.log"))
    assert len(records) == 12 and len(logs) == 4
    stamps = {p: p.stat().st_mtime_ns for p in summaries + records + logs}
    again = train(tmp_path, *sweep, multirun=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(list(tmp_path.glob("*/summary.json"))) == 4
    assert all(p.stat().st_mtime_ns == stamps[p] for p in stamps)  # not rerun; each job's config record and log kept as it ran


@pytest.mark.parametrize(
    "overrides, setting",
    [
        (["sparsity=-0.1"], "sparsity"),
        (["adapter.bottleneck=0"], "adapter.bottleneck"),
        (["adapter=lora", "adapter.r=0"], "adapter.r"),
        (["pruner=snip", "pruner.batches=0"], "pruner.batches"),
        (["large_sparse=0"], "large_sparse"),
        (["pruner=none", "large_sparse=2"], "large_sparse"),
        (["large_sparse=2", "sparsity=0.8"], "sparsity=0.8 contradicts large_sparse=2"),
        (["adapter=none", "pruner=snip", "large_sparse=2"], "large_sparse"),
        (["backbone=bert-base", "backbone.name_or_path=/nonexistent/model-name"], "backbone.name_or_path"),
    ],
)
def test_bad_settings_raise_a_config_error_naming_them(tmp_path, glue_dir, monkeypatch, overrides, setting):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        train_in_process(tmp_path, f"data_dir={glue_dir}", *overrides)
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "adapter.safetensors").exists()


def test_wandb_offline_receives_config_summary_densities_and_curves(tmp_path, glue_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    train_in_process(tmp_path, f"data_dir={glue_dir}", "logger=many")
    records = b"".join(p.read_bytes() for p in tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    for key in [b"adapter_weights_kept", b"trained_params_pct", b"density/bert.encoder.layer.0", b"train/loss", b"val/accuracy", b"large_sparse"]:
        assert key in records, key
    assert (tmp_path / "summary.json").is_file()
