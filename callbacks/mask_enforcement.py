"""Keep pruned adapter weights, their gradients and their optimizer state exactly zero."""

from __future__ import annotations

import lightning as L
import torch

from sparse_adapter.distributed import sharded_pairs
from sparse_adapter.pruning.masks import MaskedPairs, mask_gradients_, mask_parameters_and_state_


class MaskEnforcement(L.Callback):
    """Mask gradients before every optimizer step and weights plus optimizer state after it.

    Gradients are masked in ``on_before_optimizer_step`` (once per optimizer step, after gradient
    accumulation and before clipping, so pruned entries neither move nor count in the norm). The
    weights and every per-parameter state tensor (Adam's moments) are masked again in a
    post-step hook of the torch optimizer, which covers decoupled weight decay and any optimizer.
    Masks act on real weights, so the forward pass costs the same as a dense adapter's.
    """

    def __init__(self):
        self._handles: list = []
        self._pairs: MaskedPairs | None = None

    def _masked(self, pl_module) -> MaskedPairs:
        if self._pairs is None or len(self._pairs) != len(pl_module.masks):
            parameters = pl_module.prunable_parameters()
            self._pairs = sharded_pairs((parameters[name], mask) for name, mask in pl_module.masks.items())  # FSDP2: DTensor masks
        return self._pairs

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._pairs = None
        for optimizer in trainer.optimizers:
            self._handles.append(optimizer.register_step_post_hook(lambda opt, *_: self._after_step(opt, pl_module)))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module, optimizer) -> None:
        mask_gradients_(self._masked(pl_module))

    def _after_step(self, optimizer: torch.optim.Optimizer, pl_module) -> None:
        mask_parameters_and_state_(self._masked(pl_module), optimizer)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self.teardown(trainer, pl_module, "fit")

    def teardown(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
