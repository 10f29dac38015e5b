"""Keep pruned adapter weights, their gradients and their optimizer state exactly zero."""

from __future__ import annotations

import lightning as L

from sparse_adapter.distributed import sharded_pairs
from sparse_adapter.hold import MaskHold
from sparse_adapter.pruning.masks import MaskedPairs


class MaskEnforcement(L.Callback):
    """Hold the module's masks with ``sparse_adapter.hold.MaskHold``, the mechanism plain loops and the Trainer use.

    The hold masks each gradient as it is accumulated and again in ``on_before_optimizer_step`` (once per
    optimizer step, after gradient accumulation and before clipping, so pruned entries neither move nor count
    in the norm), and the weights plus every per-parameter state tensor (Adam's moments) in a post-step hook of
    the torch optimizer, which covers decoupled weight decay and any optimizer. Under FSDP2 the masks take their
    parameters' placements. The hold is made once the module has masks (``PruneAtInit`` may prune after this
    callback's ``on_train_start``) and made again if they change. Masks act on real weights, so the forward pass
    costs the same as a dense adapter's.
    """

    def __init__(self):
        self._hold: MaskHold | None = None
        self._held: tuple = ()
        self._handles: list = []

    def _holding(self, pl_module, optimizer=None) -> MaskHold | None:
        masks = dict(pl_module.masks.items())
        if not masks:
            return None
        held = tuple((name, id(mask), mask._version) for name, mask in masks.items())  # replaced or written in place
        if self._hold is None or held != self._held:
            self._release()
            hold = MaskHold(optimizer, pl_module.prunable_parameters(), masks, step_hooks=False)  # steps: ours below
            self._hold, self._held = hold, held
        return self._hold

    def _masked(self, pl_module) -> MaskedPairs:
        """(parameter, mask) pairs as held (FSDP2: DTensor masks with their parameters' placements)."""
        if self._hold is not None:
            return self._hold.pairs
        parameters = pl_module.prunable_parameters()
        return sharded_pairs((parameters[name], mask) for name, mask in pl_module.masks.items())

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self.teardown(trainer, pl_module, "fit")
        for optimizer in trainer.optimizers:
            self._handles.append(optimizer.register_step_post_hook(lambda opt, *_: self._after_step(opt, pl_module)))
        self._holding(pl_module, trainer.optimizers[0] if trainer.optimizers else None)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module, optimizer) -> None:
        hold = self._holding(pl_module, optimizer)
        if hold is not None:
            hold.mask_gradients()

    def _after_step(self, optimizer, pl_module) -> None:
        hold = self._holding(pl_module, optimizer)
        if hold is not None:
            hold.mask_weights_and_state()

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self.teardown(trainer, pl_module, "fit")

    def teardown(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._release()

    def _release(self) -> None:
        if self._hold is not None:
            self._hold.remove()
        self._hold, self._held = None, ()
