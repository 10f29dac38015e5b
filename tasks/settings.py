"""Typed settings of train.yaml's own keys, the ``data`` node and the Trainer keys we bound.

Types are checked by OmegaConf (structured configs) and ranges by ``sparse_adapter.schema``, both
from these declarations; ``tasks.validation`` keeps only the rules that span several settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sparse_adapter.schema import ranged


@dataclass
class RunSettings:
    """train.yaml's own keys (keys a later train.yaml adds are accepted, untyped)."""

    sparsity: float = ranged(0.4, ge=0.0, lt=1.0)
    large_sparse: int | None = None
    seed: int = ranged(42, ge=0, lt=2**32)
    data_dir: str | None = None
    ckpt_path: str | None = None
    skip_finished: bool = False
    resume_changes: list[str] = dataclasses.field(default_factory=list)
    plugins: list[str] = dataclasses.field(default_factory=list)  # modules imported first (sparse_adapter.registry)


@dataclass
class DataRanges:
    """Bounds of the ``data`` node's keys (their types come from the task's DataModule signature)."""

    max_length: int = ranged(128, ge=1)
    batch_size: int = ranged(32, ge=1)
    eval_batch_size: int = ranged(64, ge=1)
    max_train_samples: int | None = ranged(None, ge=1)
    max_eval_samples: int | None = ranged(None, ge=1)
    num_workers: int = ranged(0, ge=0)
    max_question_length: int = ranged(64, ge=1)  # QA and summarisation windows (issue 26): a zero
    max_target_length: int = ranged(128, ge=1)  # value was accepted and every prediction came out empty


NO_LIMIT = dict(ge=1, extra=(-1,), hint="for no limit")


@dataclass
class TrainerRanges:
    """Bounds of the ``lightning.Trainer`` keys a run depends on (Lightning checks its own types)."""

    max_epochs: int | None = ranged(None, **NO_LIMIT)
    max_steps: int = ranged(-1, **NO_LIMIT)
    accumulate_grad_batches: int = ranged(1, ge=1)
    gradient_clip_val: float | None = ranged(None, ge=0.0)
    log_every_n_steps: int = ranged(50, ge=1)
    limit_val_batches: float | None = ranged(None, gt=0.0, hint=": the run's summary reports its dev evaluation")


@dataclass
class CheckpointRanges:
    every_n_train_steps: int | None = ranged(None, ge=1)
