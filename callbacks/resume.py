"""Resume = the same run: an atomic last.ckpt (Lightning's ModelCheckpoint), and the state Lightning's checkpoint lacks.

Lightning restores weights, optimizer, scheduler and loop counters. A run that continues as if
never stopped also needs every RNG (dropout), the position in the epoch's data order, and a record
of what the run is, so that a resume with other settings is refused instead of mislabelled.
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from sparse_adapter.errors import StorageError
from sparse_adapter.io import atomic_path

log = logging.getLogger(__name__)
KEY = "sparse_adapter"  # where RunState puts its part of the checkpoint


def rng_states() -> dict:
    """Every global RNG as tensors, ints and tuples only, so checkpoints load with ``weights_only=True``."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def start_next_epoch(checkpoint: dict, epoch: int) -> None:
    """Make an epoch-end checkpoint of a step-limited run restore as the start of epoch ``epoch``.

    Lightning's fit loop treats every run with ``trainer.max_steps`` as restarting mid-epoch, so an epoch-end
    checkpoint counted its finished epoch twice: the next epoch was dealt another epoch's order, or skipped
    altogether when it was the last (issue 35: a 5-epoch, 400-step run resumed after step 320 stopped at 320).
    The loop counters are rewritten before Lightning restores them (it reads this dict after ``on_load_checkpoint``).
    """
    loop = checkpoint.get("loops", {}).get("fit_loop")
    if not loop:
        return
    for part in ("total", "current"):
        loop["epoch_progress"][part].update(ready=epoch, started=epoch, processed=epoch, completed=epoch)
    batches = loop["epoch_loop.batch_progress"]
    batches["current"] = {key: 0 for key in batches["current"]}
    batches["is_last_batch"] = False
    schedulers = loop["epoch_loop.scheduler_progress"]
    schedulers["current"] = {key: 0 for key in schedulers["current"]}
    for tracker in loop["epoch_loop.automatic_optimization.optim_progress"]["optimizer"].values():
        tracker["current"] = {key: 0 for key in tracker["current"]}


class RunState(L.Callback):
    """Save the run record, RNG states and data position into every checkpoint; restore them on resume.

    RNGs (each rank's own under DDP) are restored at ``on_train_start``, the last hook before the first
    resumed step draws from them; the data position goes to the datamodule as soon as the checkpoint loads.
    """

    def __init__(self, record: dict, started: float | None = None):
        self.record = record
        self.loaded: dict | None = None
        self.started = time.perf_counter() if started is None else started  # this process's start (perf_counter)
        self.earlier_seconds = 0.0  # earlier pieces of a resumed job, each up to its last checkpoint
        self._align_log_step = False
        self.resumed = False

    def job_seconds(self) -> float:
        """Wall seconds the job has cost so far across resumes; the steps a kill lost are counted once."""
        return self.earlier_seconds + time.perf_counter() - self.started

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        """Every rank calls this (rank 0 writes the file), so each rank's RNG states can be gathered into it."""
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        states = rng_states()
        checkpoint[KEY] = {
            "run": self.record,
            "rng": states,
            "epoch": trainer.current_epoch,
            "batches": batches,
            "epoch_done": batches >= trainer.num_training_batches,
            "seconds": self.job_seconds(),
            "world_size": trainer.world_size,
        }
        if trainer.world_size > 1:  # ranks draw dropout for batches of different shapes: their RNGs differ
            by_rank = [None] * trainer.world_size
            torch.distributed.all_gather_object(by_rank, states)
            checkpoint[KEY]["rng_by_rank"] = by_rank

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        """Runs before Lightning builds the training loader, so the training order can start mid-epoch."""
        self.loaded = checkpoint.get(KEY)
        self.resumed = True
        self.earlier_seconds = float((self.loaded or {}).get("seconds", 0.0))  # checkpoints before this field: 0
        if self.loaded and self.loaded["epoch_done"] and trainer.max_steps != -1:
            start_next_epoch(checkpoint, self.loaded["epoch"] + 1)
        if not self.loaded or self.loaded["epoch_done"] or not self.loaded["batches"]:
            return  # saved at an epoch's end: the next epoch starts from its first batch anyway
        saved_world = self.loaded.get("world_size", 1)  # checkpoints before this field: one process
        if saved_world != trainer.world_size or not hasattr(trainer.datamodule, "continue_epoch"):
            log.warning("resume: epoch %d restarts from its first batch (it was dealt out over %d processes, now %d)",
                        self.loaded["epoch"], saved_world, trainer.world_size)
            return
        trainer.datamodule.continue_epoch(self.loaded["epoch"], self.loaded["batches"])
        # Lightning warns that a mid-epoch resume without a stateful DataLoader is unreliable; the training
        # order continues the epoch exactly (tasks.sampling), so the warning would only mislead
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
        log.info("resume: epoch %d continues after batch %d", self.loaded["epoch"], self.loaded["batches"])

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        if self.loaded:
            by_rank = self.loaded.get("rng_by_rank")
            same_world = by_rank is not None and len(by_rank) == trainer.world_size
            set_rng_states(by_rank[trainer.global_rank] if same_world else self.loaded["rng"])
            self.loaded = None
            self._align_log_step = True

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        """A resumed run counts the epochs it began as the uninterrupted run does (summary, closing dev log).

        Lightning's epoch counters are off by one after a step-limited resume: one ahead when restarted from an
        epoch-end checkpoint, one behind when the checkpoint was the last step (its fit returns at once)."""
        batches = trainer.num_training_batches
        if not self.resumed or not batches or batches == float("inf"):
            return
        steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
        progress = trainer.fit_loop.epoch_progress.current
        progress.processed = progress.completed = math.ceil(trainer.global_step / steps_per_epoch)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        """The logged step is one optimizer step per batch that stepped, as in the uninterrupted run.

        Lightning adds one to it when it restarts a step-limited run (``trainer.max_steps``) from an epoch-end
        checkpoint (its fit loop counts such runs as restarting mid-epoch), so every later value was logged one
        step late. Set here, after Lightning's epoch-loop reset, before the first resumed step logs anything."""
        if self._align_log_step:
            self._align_log_step = False
            trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step  # one per optimizer step


class LastCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint(save_last=True)``: ``dirpath/last.ckpt`` every ``every_n_train_steps``
    optimizer steps, plus what a resumable run needs of it.

    - also at each epoch's end (after its validation), so that a resume starts the next epoch from its first
      batch (``RunState``); ModelCheckpoint takes steps or epochs, not both;
    - no other checkpoint (``save_top_k=0``) and never ``last-v1.ckpt``: the run directory's ``last.ckpt``
      is what ``resume=<dir>`` and a requeued job read (``tasks.rundir.LAST_CHECKPOINT``);
    - written to a uniquely named temporary file and renamed, so a kill at any moment leaves either the
      previous checkpoint or the new one, never a truncated file; a full or read-only disk is one
      ``StorageError`` (``sparse_adapter.io.atomic_path``).
    """

    def __init__(self, dirpath: str, every_n_train_steps: int | None = 100):
        super().__init__(dirpath=dirpath, every_n_train_steps=every_n_train_steps or None, save_last=True, save_top_k=0,
                         enable_version_counter=False)

    @property
    def path(self) -> Path:
        return Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"

    @property
    def saved_at(self) -> int | None:
        """The global step of the last checkpoint this process wrote (None: none yet)."""
        return self._last_global_step_saved if self._last_checkpoint_saved else None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        """Even at a step just saved mid-epoch: this checkpoint resumes as the epoch done, after its validation."""
        self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        """Write last.ckpt now (every rank calls it: saving gathers state)."""
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        """ModelCheckpoint's save, written atomically: every rank calls ``save_checkpoint`` (it gathers state),
        rank 0 writes through ``atomic_path``."""
        path = Path(filepath)
        if not trainer.is_global_zero:
            trainer.save_checkpoint(path.with_name(f".{path.name}.rank.tmp"), weights_only=False)  # not written
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StorageError(f"cannot write {path.parent}: {error.strerror or error}") from error
            with atomic_path(path) as temporary:
                trainer.save_checkpoint(temporary, weights_only=False)  # the full training state
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
