"""Stop at the first NaN/Inf loss or gradient, before it reaches a weight or a file."""

from __future__ import annotations

import lightning as L
import torch

from sparse_adapter.errors import NumericalError


class FiniteGuard(L.Callback):
    """Raise ``NumericalError`` naming the step when a loss or a gradient is not finite.

    The loss is noted in ``on_before_backward`` and judged with the gradients in
    ``on_before_optimizer_step``: under DDP gradients are already all-reduced there, so every rank
    sees the fault at the same step and stops together instead of one rank waiting forever.
    ``hint`` names the setting most likely at fault (the learning rate).
    """

    def __init__(self, hint: str = ""):
        self.hint = hint
        self._bad_loss: float | None = None

    def on_before_backward(self, trainer: L.Trainer, pl_module, loss: torch.Tensor) -> None:
        if self._bad_loss is None and not bool(torch.isfinite(loss.detach()).all()):
            self._bad_loss = float(loss.detach().float().mean())

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module, optimizer) -> None:
        where = f"training stopped at step {trainer.global_step} (epoch {trainer.current_epoch})"
        advice = f"; {self.hint}" if self.hint else ""
        if self._bad_loss is not None:
            raise NumericalError(f"{where}: the loss is {self._bad_loss}{advice}")
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16 AMP: an overflowing gradient is the GradScaler's business (it skips the step, lowers the scale)
        named = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
        if not named:
            return
        norms = torch.stack(torch._foreach_norm([g for _, g in named]))
        if not bool(torch.isfinite(norms).all()):
            name = named[int((~torch.isfinite(norms)).nonzero()[0])][0]
            raise NumericalError(f"{where}: the gradient of {name} is not finite{advice}")
