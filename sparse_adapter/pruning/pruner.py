"""Prune at initialization: score with a scorer, then select exactly k weights by an allocation."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from sparse_adapter.backbones import second_order_attention
from sparse_adapter.errors import ConfigError, NumericalError
from sparse_adapter.pruning.allocation import SCOPES, select
from sparse_adapter.pruning.scorers import SCORERS, LossFn


def check_sparsity(sparsity: float) -> None:
    if not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ConfigError(f"sparsity={sparsity} must be in [0, 1) (the pruned fraction of adapter weights)")


@dataclass
class PrunerConfig:
    """Which scorer ranks the weights and how the keep budget is spread over matrices.

    ``scorer=None`` trains the dense adapter. ``scope``: ``global`` ranks all adapter weights at
    once (the paper and the official code), ``layer`` gives every matrix the same density, ``er``
    uses Erdős–Rényi densities; the paper's ER pruner is ``scorer=random, scope=er``.
    ``batches``: training batches scored (the official code uses 320 examples, 10 batches of 32).
    """

    scorer: str | None = "snip"
    scope: str = "global"
    batches: int = 10
    temperature: float = 200.0  # GraSP's logit temperature
    min_density: float = 0.0  # global scope: every matrix keeps at least this fraction (0 = the paper's plain ranking)

    @property
    def enabled(self) -> bool:
        return self.scorer not in (None, "none")

    @property
    def needs_batches(self) -> bool:
        return self.enabled and SCORERS[self.scorer].needs_batches

    def validate(self, sparsity: float) -> None:
        check_sparsity(sparsity)
        if not self.enabled:
            return
        if self.scorer not in SCORERS:
            raise ConfigError(f"pruner.scorer='{self.scorer}' is unknown (choose from none, {', '.join(SCORERS)})")
        if self.scope not in SCOPES:
            raise ConfigError(f"pruner.scope='{self.scope}' is unknown (choose from {', '.join(SCOPES)})")
        if self.needs_batches and self.batches < 1:
            raise ConfigError(f"pruner.batches={self.batches}: pruner '{self.scorer}' needs at least one scoring batch")
        if self.temperature <= 0:
            raise ConfigError(f"pruner.temperature={self.temperature} must be positive")
        if not 0.0 <= self.min_density <= 1.0 - sparsity:
            raise ConfigError(f"pruner.min_density={self.min_density} must be in [0, 1 - sparsity] = [0, {1.0 - sparsity:g}]")
        if self.min_density and self.scope != "global":
            raise ConfigError(f"pruner.min_density applies to pruner.scope=global; scope={self.scope} gives every matrix its own budget already")


def prune(
    params: dict[str, nn.Parameter],
    sparsity: float,
    config: PrunerConfig,
    loss_fn: LossFn | None = None,
    batches: Sequence = (),
    seed: int = 0,
    model: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean masks (True = kept) over ``params`` with exactly round((1 - s) · N) kept.

    Pass ``model`` for second-order scorers (GraSP) on Hugging Face models: attention is switched
    to the eager kernel for their double-backward pass, since SDPA has none.
    """
    config.validate(sparsity)
    if not config.enabled:
        raise ConfigError("pruner: no scorer chosen; nothing to prune")
    if not params:
        raise ConfigError("pruner: the adapter has no prunable weights (adapter=none is full fine-tuning)")
    if config.needs_batches and (loss_fn is None or len(batches) == 0):
        raise ConfigError(f"pruner.batches: pruner '{config.scorer}' needs scoring batches and a loss")
    generator = torch.Generator().manual_seed(seed)
    double_backward = partial(second_order_attention, model) if model is not None else nullcontext
    scores = SCORERS[config.scorer](
        params=params, loss_fn=loss_fn, batches=batches, generator=generator,
        temperature=config.temperature, double_backward=double_backward,
    )
    for name, score in scores.items():  # a NaN ranks arbitrarily: refuse it before it picks the topology
        if not bool(torch.isfinite(score).all()):
            raise NumericalError(
                f"pruner.scorer={config.scorer}: the scores of {name} hold NaN/Inf; check adapter.init_std, the data"
                " and the scoring loss (pruner=random needs no scores)"
            )
    return select(scores, sparsity, config.scope, generator, config.min_density)
