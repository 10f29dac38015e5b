"""One training run from a composed config: build, prune, train, validate, write the summary.

Kept apart from ``train.py`` so tests and scripts can call it with a config they composed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks import FiniteGuard, MaskEnforcement, PruneAtInit, RunState
from callbacks.interrupt import SignalStop
from callbacks.last_validation import LastValidation
from sparse_adapter.adapters.base import merge_adapters
from sparse_adapter.distributed import unshard_
from sparse_adapter.errors import ConfigError
from sparse_adapter.io import save_adapter, write_json_atomic
from sparse_adapter.pruning import PrunerConfig, check_sparsity
from tasks.budget import training_budget
from tasks import rundir
from tasks.precision import resolve_precision
from tasks.summary import RunSummary
from tasks.resume import check_allowed_changes, check_matches, optimisation_record, read_checkpoint
from tasks.validation import check_budget, max_positions

log = logging.getLogger(__name__)
SUMMARY = "summary.json"


def check_large_sparse(adapter, pruner: PrunerConfig, sparsity: float, large_sparse: int | None) -> None:
    """Large-Sparse (paper Table 3) is resolved in the config (``tasks/resolvers.py``: width ×k,
    sparsity 1 - 1/k); refuse the settings that contradict it instead of silently picking one."""
    check_sparsity(sparsity)
    if large_sparse is None:
        return
    if not isinstance(large_sparse, int) or isinstance(large_sparse, bool) or large_sparse < 1:
        raise ConfigError(f"large_sparse={large_sparse} must be an integer ≥ 1 (the bottleneck multiplier k)")
    if large_sparse > 1 and not pruner.enabled:
        raise ConfigError(f"large_sparse={large_sparse} needs a pruner (it sets sparsity 1-1/k); got pruner=none")
    if large_sparse > 1 and adapter.size_field is None:
        raise ConfigError(f"large_sparse: adapter '{type(adapter).__name__}' has no bottleneck or rank to scale")
    if abs(sparsity - (1.0 - 1.0 / large_sparse)) > 1e-9:
        raise ConfigError(
            f"sparsity={sparsity} contradicts large_sparse={large_sparse}, which sets sparsity 1-1/k = "
            f"{1.0 - 1.0 / large_sparse:.4f}; drop one"
        )


def _compact(settings: dict) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")"


def publish_summary(loggers: list, summary: dict) -> None:
    """Hand the summary to each experiment tracker that keeps one (W&B: see ``tasks.loggers``)."""
    for logger in loggers:
        if hasattr(logger, "publish_summary"):
            logger.publish_summary(summary)


def publish_samples(loggers: list, samples: list[dict]) -> None:
    """A small table of sample predictions for the trackers that take tables (W&B); others skip it."""
    if not samples:
        return
    columns = list(samples[0])
    for logger in loggers:
        if hasattr(logger, "log_table"):
            logger.log_table(key="val/samples", columns=columns, data=[[row[c] for c in columns] for row in samples])


finished_summary = rundir.finished_summary


def run(cfg: DictConfig, output_dir: Path) -> float:
    """Train and validate once; write ``summary.json`` and ``adapter.safetensors`` in ``output_dir``.

    The directory is locked for the run (``tasks.rundir``): a second run there is refused, not mixed in.
    ``cfg`` was validated where it was composed (``tasks.cli``, ``tasks.sweep``).
    """
    in_place = "skip_finished" if cfg.get("skip_finished") else "requeued" if rundir.requeued() else None
    if in_place and rundir.is_launching_process():
        rundir.set_aside_unreadable(output_dir)
    if in_place and (done := finished_summary(output_dir)):
        log.info("%s: %s already holds a complete summary", in_place, output_dir)
        return done["metrics"][done["main_metric"]]
    if in_place and not cfg.get("ckpt_path") and (output_dir / rundir.LAST_CHECKPOINT).is_file():
        with open_dict(cfg):  # a sweep revisiting an interrupted job, or a requeued SLURM job, resumes it
            cfg.ckpt_path = str(output_dir / rundir.LAST_CHECKPOINT)
        log.info("%s: resuming the interrupted job from %s", in_place, cfg.ckpt_path)
    owner = rundir.is_launching_process()
    if owner:
        rundir.claim(output_dir, resuming=bool(cfg.get("ckpt_path")))
    stop = SignalStop()  # SIGTERM/SIGINT from here on: a clean stop (callbacks/interrupt.py)
    stop.install()
    try:
        return _run(cfg, output_dir, stop)
    finally:
        stop.restore()
        if owner:
            rundir.release(output_dir)


@dataclass
class Built:
    """Everything a run trains, built and checked before the first step."""

    task: object
    module: L.LightningModule
    datamodule: L.LightningDataModule
    optimizer: object
    pruner: PrunerConfig
    sparsity: float  # what is pruned: 0 for a dense adapter or full fine-tuning
    precision: str
    config: dict  # the resolved config, as logged
    budget: dict
    record: dict  # what the run is, saved in its checkpoints (callbacks.RunState) and checked on resume
    resume_changes: dict


@dataclass
class Fitted:
    """A trained run: its trainer, closing dev metrics and the callbacks the summary reads."""

    trainer: L.Trainer
    metrics: dict[str, float]
    pruning: PruneAtInit
    run_state: RunState
    loggers: list


def _run(cfg: DictConfig, output_dir: Path, stop: SignalStop) -> float:
    started = time.perf_counter()
    built = build(cfg)
    fitted = fit(cfg, built, stop, started)
    unshard_(built.module.model)  # FSDP2: full tensors on every rank from here on, for the summary and adapter file
    summary = summarise(cfg, built, fitted, started)
    if fitted.trainer.is_global_zero:
        write_results(built, fitted, summary, output_dir)
    task, metrics = built.task, fitted.metrics
    floor = (summary.baseline or {}).get("metrics", {}).get(task.main_metric, float("nan"))
    log.info("%s %s=%.4f (trivial baseline %.4f; %s, %s, sparsity %.2f) in %.0fs", task.name, task.main_metric,
             metrics[task.main_metric], floor, cfg.adapter_name, summary.pruner, summary.sparsity, summary.wall_seconds)
    return metrics[task.main_metric]


def build(cfg: DictConfig) -> Built:
    """Instantiate and check the parts, build the module and the data; refuse a resume that is another run."""
    recorded = read_checkpoint(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    check_allowed_changes(cfg.get("resume_changes"))
    task = instantiate(cfg.task, _convert_="object")
    adapter = instantiate(cfg.adapter, _convert_="object")
    pruner = instantiate(cfg.pruner, _convert_="object")
    optimizer = instantiate(cfg.optimizer, _convert_="object")
    for part in (adapter, optimizer):
        part.validate()
    pruner.validate(cfg.sparsity)
    sparsity = cfg.sparsity
    check_large_sparse(adapter, pruner, sparsity, cfg.get("large_sparse"))
    precision = resolve_precision(cfg.trainer.get("precision", "32-true"), cfg.trainer.get("accelerator", "auto"))
    config_dict = OmegaConf.to_container(cfg, resolve=True)
    config_dict["trainer"]["precision"] = precision  # what ran, in the logged config and the budget
    budget = training_budget(config_dict)
    log.info(
        "run: %s on %s | adapter=%s %s | pruner=%s sparsity=%.4f | seed=%s | precision=%s | %s",
        task.name, cfg.backbone_name + _stored(cfg.backbone), cfg.adapter_name, _compact(vars(adapter)), _compact(pruner.settings()),
        sparsity if pruner.enabled else 0.0, cfg.seed, precision,
        _compact({k: v for k, v in budget.items() if k != "precision"}),
    )
    L.seed_everything(cfg.seed, workers=True, verbose=False)

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
    record = {
        "task": task.name, "backbone": cfg.backbone_name, "adapter": cfg.adapter_name,
        "adapter_config": dict(vars(adapter)), "pruner": pruner.scorer or "none",
        "scope": pruner.scope if pruner.enabled else None, "sparsity": sparsity,
        "large_sparse": cfg.get("large_sparse"), "seed": cfg.seed, "pruner_settings": pruner.settings(),
        "precision": precision,
        **optimisation_record(config_dict, optimizer),
    }
    if recorded is None and pruner.enabled:
        shapes = {name: tuple(p.shape) for name, p in module.prunable_parameters().items()}
        check_budget(shapes, sparsity, pruner.scope, pruner.m)
        pruner.check_model(module.model, module.prunable_parameters())
    data_dir = to_absolute_path(cfg.data_dir) if cfg.get("data_dir") else None
    datamodule = task.datamodule_class()(
        task=task, tokenizer=module.tokenizer, data_dir=data_dir, seed=cfg.seed,
        max_positions=max_positions(module.model), **cfg.data,
    )
    datamodule.setup("fit")  # fail on bad data before any training
    record["train_rows"] = len(datamodule.datasets["train"])
    changes = {} if recorded is None else check_matches(cfg.ckpt_path, recorded, record, cfg.get("resume_changes"))
    return Built(task, module, datamodule, optimizer, pruner, sparsity, precision, config_dict, budget, record, changes)


def fit(cfg: DictConfig, built: Built, stop: SignalStop, started: float) -> Fitted:
    """Prune at initialization (or restore the masks), train with them held, then take the dev metrics of the weights
    training ended with (the last epoch-end validation's, else one closing ``trainer.validate``)."""
    pruner, sparsity, optimizer, config_dict = built.pruner, built.sparsity, built.optimizer, built.config
    module, datamodule = built.module, built.datamodule
    pruning = PruneAtInit(pruner, sparsity, seed=cfg.seed, resuming=bool(cfg.get("ckpt_path")))
    guard = FiniteGuard(hint=f"lower optimizer.lr (now {optimizer.lr:g}) or check the data")
    run_state = RunState(built.record, started)
    last_validation = LastValidation()
    callbacks = [pruning, MaskEnforcement(), run_state, guard, last_validation]
    callbacks += [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    callbacks.append(stop)  # last: a checkpoint callback's own save at the same step comes first
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    for logger in loggers:
        if cfg.get("ckpt_path") and hasattr(logger, "continue_log"):
            logger.continue_log()  # continue what the interrupted process logged, not start afresh (tasks.loggers)
        logger.log_hyperparams(config_dict)
    checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)  # Lightning refuses one with it off
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, enable_checkpointing=checkpointing,
                          precision=built.precision)
    # weights_only: a checkpoint is data
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    closing = last_validation.final(trainer, module)  # the epoch-end dev pass after the last step: not scored twice
    if closing is None:
        closing = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    metrics = {k.removeprefix("val/"): float(v) for k, v in closing.items()}
    return Fitted(trainer, metrics, pruning, run_state, loggers)


def _stored(backbone) -> str:
    """How the frozen body is stored, for the run line, when not in fp32: ' (bfloat16 body, nf4)'."""
    parts = [f"{backbone.get('dtype')} body"] if backbone.get("dtype", "float32") != "float32" else []
    parts += [backbone.get("quantization")] if backbone.get("quantization", "none") != "none" else []
    return f" ({', '.join(parts)})" if parts else ""


def summarise(cfg: DictConfig, built: Built, fitted: Fitted, started: float) -> RunSummary:
    """The run's summary.json record (``tasks.summary``): what was trained, what it scored, what it cost."""
    module, datamodule, pruning, trainer = built.module, built.datamodule, fitted.pruning, fitted.trainer
    return RunSummary(
        task=built.task.name,
        backbone=cfg.backbone_name,
        adapter=cfg.adapter_name,
        row=cfg.get("row_name"),
        adapter_config=built.record["adapter_config"],
        pruner=built.record["pruner"],
        scope=built.record["scope"],
        pruner_settings=built.record["pruner_settings"],
        sparsity=built.sparsity,
        large_sparse=cfg.get("large_sparse"),
        seed=cfg.seed,
        budget=built.budget,
        precision=built.precision,
        quantization=module.quantization.describe(),
        backbone_dtype=module.backbone_dtype,
        resumed_from=str(cfg.ckpt_path) if cfg.get("ckpt_path") else None,
        resume_changes=built.resume_changes,
        main_metric=built.task.main_metric,
        metrics=fitted.metrics,
        baseline=datamodule.trivial_baseline(),
        parameters=module.parameter_report(),
        skipped_rows=datamodule.skipped.as_dict() if hasattr(datamodule, "skipped") else {},
        data_fields=datamodule.summary_fields() if hasattr(datamodule, "summary_fields") else {},
        samples=module.sample_predictions,
        empty_matrices=module.masks.empty(),
        silenced_modules=module.masks.silenced_modules(),
        tied_score_tensors=pruning.tied_score_tensors,
        lookahead_tensors=pruning.lookahead_tensors,
        layer_density=module.masks.densities(),
        prune_seconds=pruning.seconds,
        global_steps=trainer.global_step,
        epochs=trainer.current_epoch,
        wall_seconds=fitted.run_state.job_seconds(),
        wall_seconds_this_process=time.perf_counter() - started,
        cpu_threads=torch.get_num_threads(),
    )


def write_results(built: Built, fitted: Fitted, summary: RunSummary, output_dir: Path) -> None:
    """Rank 0: the adapter file (merged, sparse), then summary.json (its presence marks the run finished)."""
    model, record = built.module.model, built.record
    merge_adapters(model)  # after the summary's counts: e.g. a prefix MLP folds into its prefix
    metadata = {"task": built.task.name, "pruner": json.dumps(record["pruner_settings"])}
    save_adapter(model, output_dir / "adapter.safetensors", metadata, masks=built.module.masks)
    as_json = summary.as_dict()
    write_json_atomic(as_json, output_dir / SUMMARY)
    publish_samples(fitted.loggers, built.module.sample_predictions)
    publish_summary(fitted.loggers, as_json)
