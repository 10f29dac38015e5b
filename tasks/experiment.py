"""One training run from a composed config: build, prune, train, validate, write the summary.

Kept apart from ``train.py`` so tests and scripts can call it with a config they composed.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from callbacks import MaskEnforcement, PruneAtInit
from sparse_adapter.adapters.base import merge_adapters
from sparse_adapter.errors import ConfigError
from sparse_adapter.io import save_adapter, write_json_atomic
from sparse_adapter.pruning import PrunerConfig, check_sparsity

log = logging.getLogger(__name__)
SUMMARY = "summary.json"


def resolve_budget(adapter, pruner: PrunerConfig, sparsity: float, large_sparse: int | None):
    """Large-Sparse: bottleneck (or rank) ×k and sparsity 1 - 1/k, the paper's Table 3 budget."""
    check_sparsity(sparsity)
    if large_sparse is None:
        return adapter, sparsity
    if not isinstance(large_sparse, int) or large_sparse < 1:
        raise ConfigError(f"large_sparse={large_sparse} must be an integer ≥ 1 (the bottleneck multiplier k)")
    if not pruner.enabled and large_sparse > 1:
        raise ConfigError(f"large_sparse={large_sparse} needs a pruner (it sets sparsity 1-1/k); got pruner=none")
    return adapter.scaled(large_sparse), 1.0 - 1.0 / large_sparse


def publish_summary(loggers: list, summary: dict) -> None:
    """Put the summary into each experiment tracker's run summary (W&B), then close the run.

    Closing matters in sweeps: a W&B run left open would be reused by the next job's logger.
    """
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(getattr(experiment, "summary", None), "update"):
            experiment.summary.update({k: v for k, v in summary.items() if k != "layer_density"})
        if hasattr(experiment, "finish"):
            experiment.finish()


def finished_summary(output_dir: Path) -> dict | None:
    path = output_dir / SUMMARY
    if path.is_file():
        summary = json.loads(path.read_text())
        if summary.get("status") == "complete":
            return summary
    return None


def run(cfg: DictConfig, output_dir: Path) -> float:
    """Train and validate once; write ``summary.json`` and ``adapter.safetensors`` in ``output_dir``."""
    if cfg.get("skip_finished") and (done := finished_summary(output_dir)):
        log.info("skip_finished: %s already holds a complete summary", output_dir)
        return done["metrics"][done["main_metric"]]
    started = time.perf_counter()
    task = instantiate(cfg.task, _convert_="object")
    adapter = instantiate(cfg.adapter, _convert_="object")
    pruner = instantiate(cfg.pruner, _convert_="object")
    optimizer = instantiate(cfg.optimizer, _convert_="object")
    for part in (adapter, optimizer):
        part.validate()
    pruner.validate(cfg.sparsity)
    adapter, sparsity = resolve_budget(adapter, pruner, cfg.sparsity, cfg.get("large_sparse"))
    L.seed_everything(cfg.seed, workers=True)

    module = task.module_class()(
        backbone=instantiate(cfg.backbone, _convert_="object"),
        adapter=adapter,
        optimizer=optimizer,
        task=task,
    )
    if pruner.enabled and not module.prunable:
        log.warning("adapter=%s has no prunable weights: training every weight, pruner skipped", cfg.adapter_name)
        pruner = PrunerConfig(scorer=None)
    if not pruner.enabled:
        sparsity = 0.0  # a dense adapter or full fine-tuning: nothing is pruned, whatever `sparsity` says
    data_dir = to_absolute_path(cfg.data_dir) if cfg.get("data_dir") else None
    datamodule = task.datamodule_class()(task=task, tokenizer=module.tokenizer, data_dir=data_dir, **cfg.data)
    datamodule.setup("fit")  # fail on bad data before any training

    pruning = PruneAtInit(pruner, sparsity, seed=cfg.seed)
    callbacks = [pruning, MaskEnforcement()] + [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    config_dict = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(config_dict)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k.removeprefix("val/"): float(v) for k, v in trainer.validate(module, datamodule=datamodule, verbose=False)[0].items()}

    summary = {
        "status": "complete",
        "task": task.name,
        "backbone": cfg.backbone_name,
        "adapter": cfg.adapter_name,
        "row": cfg.get("row_name"),
        "adapter_config": dict(vars(adapter)),
        "pruner": pruner.scorer or "none",
        "scope": pruner.scope if pruner.enabled else None,
        "sparsity": sparsity,
        "large_sparse": cfg.get("large_sparse"),
        "seed": cfg.seed,
        "main_metric": task.main_metric,
        "metrics": metrics,
        **module.parameter_report(),
        "layer_density": module.masks.densities(),
        "prune_seconds": pruning.seconds,
        "global_steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "wall_seconds": time.perf_counter() - started,
    }
    if trainer.is_global_zero:
        merge_adapters(module.model)  # after the summary's counts: e.g. a prefix MLP folds into its prefix
        save_adapter(module.model, output_dir / "adapter.safetensors", {"task": task.name}, masks=module.masks)
        write_json_atomic(summary, output_dir / SUMMARY)
        publish_summary(loggers, summary)
    log.info("%s %s=%.4f (%s, %s, sparsity %.2f) in %.0fs", task.name, task.main_metric, metrics[task.main_metric],
             cfg.adapter_name, summary["pruner"], sparsity, summary["wall_seconds"])
    return metrics[task.main_metric]
