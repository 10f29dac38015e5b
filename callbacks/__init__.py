"""Lightning callbacks that prune adapters at initialization, hold the masks, and keep runs resumable and finite."""

from callbacks.mask_enforcement import MaskEnforcement
from callbacks.numerics import FiniteGuard
from callbacks.prune_at_init import PruneAtInit
from callbacks.resume import LastCheckpoint, RunState

__all__ = ["FiniteGuard", "LastCheckpoint", "MaskEnforcement", "PruneAtInit", "RunState"]
