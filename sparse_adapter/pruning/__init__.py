"""Scorers (which weights matter) composed with allocations (how many each matrix keeps)."""

from sparse_adapter.pruning.allocation import SCOPES, erdos_renyi_densities, kept_count, select, top_k_mask
from sparse_adapter.pruning.controls import CONTROLS
from sparse_adapter.pruning.masks import MaskSet, mask_gradients_, mask_parameters_and_state_
from sparse_adapter.pruning.pruner import PrunerConfig, PruneResult, check_sparsity, prune, prune_with_report, schedule
from sparse_adapter.pruning.scorers import SCORERS

__all__ = [
    "CONTROLS",
    "SCOPES",
    "SCORERS",
    "MaskSet",
    "PruneResult",
    "PrunerConfig",
    "check_sparsity",
    "erdos_renyi_densities",
    "kept_count",
    "mask_gradients_",
    "mask_parameters_and_state_",
    "prune",
    "prune_with_report",
    "schedule",
    "select",
    "top_k_mask",
]
