"""Test-only callbacks, loaded by train.py through `+callbacks.<name>._target_=tests.helpers.<Class>` overrides."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L
import torch


class KillAtStep(L.Callback):
    """SIGKILL this process when training reaches optimizer step ``step``: a crash with no cleanup at all.

    Kills once: it leaves ``marker`` behind (one per rank under DDP), so the resumed run (started with the
    same overrides) goes on. Under DDP the ranks meet first, so that none dies while another still writes.
    """

    def __init__(self, step: int, marker: str):
        self.step, self.marker = step, Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        marker = self.marker if trainer.world_size == 1 else self.marker.with_name(f"{self.marker.name}.rank{trainer.global_rank}")
        if trainer.global_step == self.step and not marker.exists():
            marker.touch()
            trainer.strategy.barrier()
            os.kill(os.getpid(), signal.SIGKILL)


class DumpRankState(L.Callback):
    """Write each rank's masks, trained weights and dev metrics to ``<dirpath>/rank<r>.pt`` after each validation.

    The last write comes from the run's final ``trainer.validate``, so the file holds the final state.
    """

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.train_sampler: str | None = None

    def on_train_start(self, trainer, pl_module):
        self.train_sampler = type(trainer.train_dataloader.sampler).__name__  # after Lightning's DDP preparation

    def on_validation_end(self, trainer, pl_module):
        state = {
            "masks": {n: m.clone().cpu() for n, m in pl_module.masks.items()},
            "weights": {n: p.detach().clone().cpu() for n, p in pl_module.model.named_parameters() if p.requires_grad},
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
            "world_size": trainer.world_size,
            "train_sampler": self.train_sampler,
        }
        torch.save(state, self.dirpath / f"rank{trainer.global_rank}.pt")
        trainer.strategy.barrier("rank-state-written")  # rank 0 may exit (and the test read) only once every file is there


class WaitForSignalAtStep(L.Callback):
    """At optimizer step ``step`` touch ``marker`` and wait (up to a minute) until a signal has been received.

    The test sends the signal from outside when the marker appears, so the run is interrupted at that
    step, whatever the machine's speed. Waits once: a resumed run (same overrides) goes on.
    """

    def __init__(self, step: int, marker: str, signals: int = 1):
        self.step, self.marker, self.signals = step, Path(marker), signals  # signals=2: wait for a second Ctrl+C

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self.step or self.marker.exists() or trainer.global_rank != 0:
            return  # under DDP only rank 0 is signalled; the others learn of it when the ranks agree to stop
        from callbacks.interrupt import SignalStop

        stop = next(c for c in trainer.callbacks if isinstance(c, SignalStop))
        self.marker.touch()
        deadline = time.monotonic() + 60
        while (stop.received is None or self.signals > 1) and time.monotonic() < deadline:
            time.sleep(0.02)  # with signals=2 the second signal's handler raises out of this loop


class KillAt(KillAtStep):
    """SIGKILL at a named point of the run, once (``marker``): ``where`` is

    ``step`` (the start of optimizer step ``step``), ``validation`` (the first dev batch of the validation run
    by the training loop at step ``step``), ``final_validation`` (the first dev batch of the run's closing
    ``trainer.validate``) or ``scoring`` (PruneAtInit's second scoring pass, before any step or checkpoint)."""

    def __init__(self, where: str, marker: str, step: int = 0):
        super().__init__(step, marker)
        self.where = where

    def _kill(self) -> None:
        if not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    def setup(self, trainer, pl_module, stage):
        if self.where == "scoring" and not self.marker.exists():
            scoring_loss, calls = pl_module.scoring_loss, []

            def dying_scoring_loss(*args, **kwargs):
                calls.append(1)
                if len(calls) == 2:
                    self._kill()
                return scoring_loss(*args, **kwargs)

            pl_module.scoring_loss = dying_scoring_loss

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.where == "step" and trainer.global_step == self.step:
            self._kill()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        fitting = trainer.state.fn == "fit"
        if (self.where == "validation" and fitting and trainer.global_step == self.step) or (self.where == "final_validation" and not fitting):
            self._kill()


class NudgeAtTrainEnd(L.Callback):
    """Changes one trained weight after the training loop's last validation (as a weight-averaging callback would)."""

    def on_train_end(self, trainer, pl_module):
        with torch.no_grad():
            next(p for p in pl_module.parameters() if p.requires_grad).add_(1.0)
