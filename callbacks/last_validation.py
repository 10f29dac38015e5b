"""The dev metrics of the training loop's last validation, kept for the summary when nothing trained after it.

A run whose last optimizer step is followed by a full dev pass (``val_check_interval=1.0``, the epoch's end) used to
score the dev set a second time in the closing ``trainer.validate``: SQuAD's 10,570 questions took 8 minutes of a
50-minute job on 2 cores, XSum's generation longer. The closing pass is still run whenever training moved on after
the last validation: a later optimizer step, a validation before the epoch's last batch (``val_check_interval`` < 1),
a stop by ``max_steps`` mid-epoch, a resume that had nothing left to train, or a callback that changed the trained
weights afterwards (their storages and version counters are compared).
"""

from __future__ import annotations

import lightning as L
import torch


def fingerprint(module: torch.nn.Module) -> tuple[tuple[int, int], ...]:
    """Each trainable weight's storage and version counter (this rank's shard of a DTensor): every in-place write
    (an optimizer step, ``copy_``, ``load_state_dict``) bumps the version, and a swapped tensor has another storage.
    Free to take, so a billion-weight model pays nothing for it."""
    marks = []
    for parameter in module.parameters():
        if parameter.requires_grad:
            local = getattr(parameter, "_local_tensor", parameter)  # a DTensor's own shard, not a fresh view of it
            marks.append((local.data_ptr(), local._version))
    return tuple(marks)


class LastValidation(L.Callback):
    """Records the ``val/`` metrics and the global step of each validation the training loop runs."""

    def __init__(self):
        self.step: int | None = None
        self.metrics: dict[str, float] = {}
        self._weights: tuple[tuple[int, int], ...] = ()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.step = trainer.global_step
        self.metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("val/")}
        self._weights = fingerprint(pl_module)

    def final(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float] | None:
        """The last validation's metrics if it scored the weights training ended with; None: validate again. Every
        process must agree (a validation run by some ranks only would wait forever for the others)."""
        current = bool(self.metrics) and self.step == trainer.global_step and fingerprint(pl_module) == self._weights
        if not trainer.strategy.reduce_boolean_decision(current, all=True):
            return None
        return dict(self.metrics)
