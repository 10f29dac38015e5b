"""Lightning callbacks that prune adapters at initialization and hold the masks during training."""

from callbacks.mask_enforcement import MaskEnforcement
from callbacks.prune_at_init import PruneAtInit

__all__ = ["MaskEnforcement", "PruneAtInit"]
