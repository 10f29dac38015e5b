"""Test-only callbacks for sharded runs, loaded by train.py through `+callbacks.<name>._target_=tests.sharding_helpers.<Class>`."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


class RecordShards(L.Callback):
    """At the end of training write ``<dirpath>/rank<r>.pt``: for each masked parameter, its type and placements,
    its mask's as MaskEnforcement applies it, the local shard's shape, and whether every pruned entry of the local
    weight, gradient and Adam moments is exactly zero."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer, pl_module):
        from callbacks import MaskEnforcement

        enforcement = next(c for c in trainer.callbacks if isinstance(c, MaskEnforcement))
        optimizer = trainer.optimizers[0]
        rows = []
        for parameter, mask in enforcement._masked(pl_module):
            local = parameter.to_local() if hasattr(parameter, "to_local") else parameter
            local_mask = mask.to_local() if hasattr(mask, "to_local") else mask
            state = [v.to_local() if hasattr(v, "to_local") else v for k, v in optimizer.state[parameter].items() if k != "step"]
            tensors = [local.detach(), *state] + ([parameter.grad.to_local()] if parameter.grad is not None else [])
            rows.append({
                "parameter": type(parameter).__name__, "mask": type(mask).__name__,
                "placements": str(getattr(parameter, "placements", None)), "mask_placements": str(getattr(mask, "placements", None)),
                "local_shape": tuple(local.shape), "shape": tuple(parameter.shape),
                "zero": all(bool((t[~local_mask] == 0).all()) for t in tensors), "moments": len(state),
            })
        torch.save({"rows": rows, "world_size": trainer.world_size, "global_step": trainer.global_step},
                   self.dirpath / f"rank{trainer.global_rank}.pt")
