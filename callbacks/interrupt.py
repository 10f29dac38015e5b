"""SIGTERM / SIGINT (and a SLURM launcher's preemption signal) stop a run cleanly at a step boundary.

SLURM sends SIGTERM before it preempts a job or at its time limit; Ctrl+C sends SIGINT. Lightning's own
SIGTERM handling ends the process with exit code 0 and no checkpoint, and Python's SIGINT raises in the
middle of a step. Here a signal only sets a flag; after the current optimizer step (the state
``LastCheckpoint`` saves anyway) the run writes ``last.ckpt`` atomically and, once that step is logged, raises
``Interrupted``, which ``tasks.cli`` turns into one line and exit code 128 + signal (143, 130).

Under ``hydra/launcher=submitit_slurm`` submitit installs a handler for its preemption/timeout signal
(``SUBMITIT_PREEMPT_SIGNAL``, USR2, sent ``signal_delay_s`` before the end). That signal is taken the same
way, and once the checkpoint is written submitit's own handler runs: it requeues the job (``scontrol
requeue``) with the same Hydra overrides, and the requeued job resumes from ``last.ckpt``
(``tasks.rundir.requeued``). SIGTERM is never requeued: it is also what ``scancel`` sends.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import lightning as L

from callbacks.resume import LastCheckpoint

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def launcher_signal() -> signal.Signals | None:
    """The signal submitit uses for preemption and timeout (its ``SUBMITIT_PREEMPT_SIGNAL``, USR2 by default)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG"), None)


class Interrupted(Exception):
    """The run stopped at a signal; ``checkpoint`` is the last.ckpt it saved (None: nothing to resume)."""

    def __init__(self, signum: int, step: int | None, checkpoint: Path | None, requeue: Callable | None = None,
                 at_once: bool = False, saved_step: int | None = None):
        self.signum, self.step, self.checkpoint, self.requeue = signum, step, checkpoint, requeue
        # a second Ctrl+C: stopped mid-step; the checkpoint is older
        self.at_once, self.saved_step = at_once, saved_step
        super().__init__(self.message())

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)

    def message(self, run_dir: Path | None = None) -> str:
        name = signal.Signals(self.signum).name
        if self.step is None:
            return (f"interrupted by {name} before training started; nothing was saved: "
                    "rerunning the command starts afresh")
        where = f"interrupted at step {self.step} by {name}"
        if self.at_once:
            where = f"interrupted at step {self.step} by a second {name}, at once (no checkpoint of this step)"
            if self.checkpoint is not None:
                saved = f"step {self.saved_step}" if self.saved_step is not None else "an earlier step"
                where += f"; the last checkpoint ({saved}) is {self.checkpoint}"
        if self.checkpoint is None:
            return (f"{where}; no checkpoint was saved (start runs with callbacks=resumable to resume them): "
                    "rerunning the command starts afresh")
        directory = run_dir if run_dir is not None else self.checkpoint.parent.parent
        return f"{where}; resume with: python train.py resume={directory}"


class SignalStop(L.Callback):
    """Record SIGTERM/SIGINT (and the launcher's requeue signal); stop after the current step with a checkpoint.

    ``install()`` before the model loads: a signal before training raises at once (nothing to save).
    Lightning installs its own SIGTERM handler when ``fit`` starts, so ours is installed again at
    ``on_train_start``. A second SIGINT stops at once, as Ctrl+C twice does elsewhere, and says which checkpoint is
    left.
    """

    def __init__(self):
        self.received: int | None = None
        self.training = False
        self.step: int | None = None  # after training: where it ended, and its checkpoint (if any)
        self.checkpoint: Path | None = None
        self.pending: Interrupted | None = None  # saved at a signal, raised at the next hook
        self._previous: dict[int, object] = {}
        self._requeue: Callable | None = None
        self._trainer: L.Trainer | None = None

    # ---- handlers ----
    def _signals(self) -> list[int]:
        extra = launcher_signal()
        chained = extra is not None and callable(self._previous.get(extra, signal.getsignal(extra)))
        return [*STOP_SIGNALS, *([extra] if chained else [])]

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only (joblib workers run jobs in their main thread)
        for signum in self._signals():
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)
            if signum not in STOP_SIGNALS and callable(previous) and previous != self._handle:
                self._requeue = lambda previous=previous, signum=signum: previous(signum, None)

    def restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT and self.training:
            raise self._stopped_at_once(signum)  # pressed twice: stop now, and say where the last checkpoint is
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum
            log.warning("%s received: stopping after the current step", signal.Signals(signum).name)
        if not self.training:
            raise self.interrupted(self.step, self.checkpoint)

    def _stopped_at_once(self, signum: int) -> Interrupted:
        """What a second Ctrl+C stops: the step in progress is lost; the newest whole last.ckpt (atomic) is named."""
        trainer = self._trainer
        saver = self._saver(trainer) if trainer is not None else None
        checkpoint = saver.path if saver is not None and saver.path.is_file() else None
        step = trainer.global_step if trainer is not None else 0
        saved_step = saver.saved_at if saver is not None else None
        return Interrupted(signum, step, checkpoint, at_once=True, saved_step=saved_step)

    def interrupted(self, step: int | None, checkpoint: Path | None) -> Interrupted:
        requeue = self._requeue if self.received not in STOP_SIGNALS else None
        return Interrupted(self.received, step, checkpoint, requeue)

    # ---- Lightning hooks ----
    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self.install()  # after Lightning's _SignalConnector replaced our SIGTERM handler
        self.training = True
        self._trainer = trainer

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._save_if_signalled(trainer)  # a signal during the last step
        self._raise_pending()
        self.training = False
        saver = self._saver(trainer)
        self.step = trainer.global_step
        self.checkpoint = saver.path if saver is not None and saver.path.is_file() else None

    @staticmethod
    def _saver(trainer: L.Trainer) -> LastCheckpoint | None:
        return next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        self.training = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        self._raise_pending()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the epoch's end comes next: its checkpoint (after validation) is the one to resume from
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: stop only right after an optimizer step
        self._save_if_signalled(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self._save_if_signalled(trainer)

    def _raise_pending(self) -> None:
        """Raised one hook later than saved: Lightning logs the step's loss after ``on_train_batch_end``."""
        if self.pending is not None:
            self.training = False
            raise self.pending

    def _save_if_signalled(self, trainer: L.Trainer) -> None:
        if self.pending is not None:
            return
        signalled = self.received is not None
        if trainer.world_size > 1:  # every rank stops at the same step: saving a checkpoint is collective
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if not signalled:
            return
        if self.received is None:
            self.received = signal.SIGTERM  # another rank got the signal
        checkpoint = None
        saver = self._saver(trainer)
        if saver is not None:
            if saver.saved_at != trainer.global_step:
                saver.save(trainer)
            checkpoint = saver.path
        self.pending = self.interrupted(trainer.global_step, checkpoint)
