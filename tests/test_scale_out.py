"""Scale-out on existing engines: Optuna over lr and sparsity through the joblib launcher; SLURM by composition."""

import json

import pytest
import yaml

from tasks.cli import compose_checked
from tasks.validation import validate_config
from tests.cli_support import FAST, train_subprocess

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


def test_optuna_over_lr_and_sparsity_through_joblib(tmp_path, glue_dir):
    result = train_subprocess(
        "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *FAST, f"data_dir={glue_dir}", f"hydra.sweep.dir={tmp_path}",
        timeout=400, fresh=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/summary.json"))]
    assert len(summaries) == 2
    configs = [yaml.safe_load(p.read_text()) for p in sorted(tmp_path.glob("*/.hydra/config.yaml"))]
    for summary, config in zip(summaries, configs):
        assert 1e-5 <= config["optimizer"]["lr"] <= 1e-3
        assert 0.2 <= summary["sparsity"] <= 0.8 and summary["sparsity"] == config["sparsity"]
        assert summary["adapter_weights_kept"] == round((1 - summary["sparsity"]) * summary["adapter_weights_total"])
    hydra = yaml.safe_load(next(tmp_path.glob("*/.hydra/hydra.yaml")).read_text())["hydra"]
    assert hydra["launcher"]["_target_"].endswith("JoblibLauncher") and hydra["sweeper"]["_target_"].endswith("OptunaSweeper")
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(s["metrics"][s["main_metric"]] for s in summaries))


def test_slurm_launcher_composes_with_ddp():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_checked([
        "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.tasks_per_node=4", "hydra.launcher.timeout_min=240", "trainer=ddp", "trainer.accelerator=gpu",
        "trainer.devices=4", "backbone=tiny-bert",
    ])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node, launcher.timeout_min) == ("gpu", 4, 4, 240)
    assert (cfg.trainer.strategy, cfg.trainer.devices) == ("ddp", 4)
    validate_config(cfg)  # the job's own settings pass validation as composed


def test_fsdp_is_refused_with_a_reason():
    cfg = compose_checked(["backbone=tiny-bert", "trainer=ddp", "trainer.strategy=fsdp"])
    with pytest.raises(Exception, match="trainer.strategy=fsdp: sharded parameters are not supported.*trainer=ddp"):
        validate_config(cfg)
