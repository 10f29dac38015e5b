"""Checks that need the built model: its position limit, and budgets that would empty a matrix."""

from __future__ import annotations

import math

from sparse_adapter.errors import ConfigError
from sparse_adapter.pruning.allocation import er_counts, kept_count, nm_group_size, uniform_counts

# How many position ids a model type reserves before the first token (RoBERTa counts from padding_idx + 1).
POSITION_OFFSETS = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}


def max_positions(model) -> int | None:
    config = model.config
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return None
    return positions - POSITION_OFFSETS.get(config.model_type, 0)


ALLOCATIONS = {
    "global": lambda shapes, s: {"all adapter matrices together": kept_count(sum(math.prod(x) for x in shapes.values()), s)},
    "layer": uniform_counts,
    "er": er_counts,
}


def check_budget(shapes: dict, sparsity: float, scope: str, m: int = 4) -> None:
    """A sparsity that keeps no weight at all (or none in some matrix, for per-matrix scopes) is a contradiction;
    so is an N:M pattern whose groups of ``m`` do not tile some matrix's input dimension."""
    if scope == "nm":
        for name, shape in shapes.items():
            if (problem := nm_group_size(shape, m)) is not None:
                raise ConfigError(f"pruner.scope=nm: cannot group {name}: {problem}")
        return
    if not shapes or sparsity <= 0 or scope not in ALLOCATIONS:
        return
    counts = ALLOCATIONS[scope](shapes, sparsity)
    empty = [name for name, count in counts.items() if count < 1]
    if empty:
        total = sum(math.prod(x) for x in shapes.values())
        raise ConfigError(
            f"sparsity={sparsity}: keeps no weight in {empty[0]} (pruner.scope={scope}, {total} adapter weights);"
            " lower the sparsity"
        )
