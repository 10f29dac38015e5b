"""Resume = the same run: an atomic last.ckpt, and the state Lightning's checkpoint lacks.

Lightning restores weights, optimizer, scheduler and loop counters. A run that continues as if
never stopped also needs every RNG (dropout), the position in the epoch's data order, and a record
of what the run is, so that a resume with other settings is refused instead of mislabelled.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states

log = logging.getLogger(__name__)
KEY = "sparse_adapter"  # where RunState puts its part of the checkpoint


class RunState(L.Callback):
    """Save the run record, RNG states and data position into every checkpoint; restore them on resume.

    RNGs are restored at ``on_train_start``, the last hook before the first resumed step draws from
    them; the data position goes to the datamodule's ``ResumableSampler`` at the epoch's start.
    """

    def __init__(self, record: dict):
        self.record = record
        self.loaded: dict | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[KEY] = {
            "run": self.record,
            "rng": _collect_rng_states(),
            "epoch": trainer.current_epoch,
            "batches": trainer.fit_loop.epoch_loop.batch_progress.current.processed,
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        self.loaded = checkpoint.get(KEY)

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        if self.loaded:
            _set_rng_states(self.loaded["rng"])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        if not self.loaded:
            return
        state, self.loaded = self.loaded, None
        batches = state["batches"]
        if trainer.current_epoch != state["epoch"] or not 0 < batches < trainer.num_training_batches:
            return  # saved at an epoch's end: the next epoch starts from its first batch anyway
        sampler = getattr(trainer.datamodule, "sampler", None)
        if trainer.world_size > 1 or not hasattr(sampler, "skip_next"):
            log.warning("resume: restarting epoch %d from its first batch (exact mid-epoch resume needs one process)", state["epoch"])
            return
        sampler.skip_next(batches * trainer.datamodule.batch_size)


class LastCheckpoint(L.Callback):
    """Write ``dirpath/last.ckpt`` every ``every_n_train_steps`` optimizer steps and at each epoch end.

    Written to a uniquely named temporary file and renamed, so a kill at any moment leaves either the
    previous checkpoint or the new one, never a truncated file.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int | None = 100, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename
        self.every_n_train_steps = every_n_train_steps
        self._saved_at: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_train_steps and step and step % self.every_n_train_steps == 0 and step != self._saved_at:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        self._saved_at = trainer.global_step
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(temporary)  # every rank calls it; rank 0 writes
        if trainer.is_global_zero:
            descriptor = os.open(temporary, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            os.replace(temporary, self.path)
