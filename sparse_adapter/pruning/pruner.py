"""Prune at initialization: score with a scorer, then select exactly k weights by an allocation."""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from functools import partial

import torch
from torch import nn

from sparse_adapter import arguments as check
from sparse_adapter.backbones import second_order_attention
from sparse_adapter.errors import ConfigError, NumericalError
from sparse_adapter.schema import check_ranges, ranged
from sparse_adapter.pruning.allocation import SCOPES, kept_count, select
from sparse_adapter.pruning.controls import CONTROLS, apply_control
from sparse_adapter.pruning.scorers import SCORERS, LossFn
from sparse_adapter.pruning.zero_init import (
    DEGENERATE_MODES, ZERO_INIT_MODES, lookahead, report_degenerate, tied_tensors, zero_tensors,
)


def check_sparsity(sparsity: float) -> None:
    if not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ConfigError(f"sparsity={sparsity} must be in [0, 1) (the pruned fraction of adapter weights)")


@dataclass
class PrunerConfig:
    """Which scorer ranks the weights and how the keep budget is spread over matrices.

    ``scorer=None`` trains the dense adapter. ``scope``: ``global`` ranks all adapter weights at
    once (the paper and the official code), ``layer`` gives every matrix the same density, ``er``
    uses Erdős–Rényi densities, ``nm`` keeps ``n`` of every ``m`` consecutive weights along the
    input dimension; the paper's ER pruner is ``scorer=random, scope=er``.
    ``batches``: training batches scored (the official code uses 320 examples, 10 batches of 32).
    ``iterations``: pruning rounds at densities d^((i+1)/n) (the official ``prune_iterations``,
    exponential schedule), each re-scoring the surviving weights; None = the scorer's own default
    (1, SynFlow 100). ``control``: a sanity check of Frankle et al. (2021) applied to the final
    masks: ``shuffle`` each matrix's mask, ``reinit`` the kept weights, or ``invert`` the ranking
    (keep each matrix's lowest-scored weights at the same per-matrix counts).
    ``zero_init``: how data-dependent scorers (SNIP, GraSP) treat a tensor that is zero everywhere
    (LoRA's B under PEFT's default init): ``lookahead`` scores it, and the partner it silences, one
    Adam step of ``lookahead_lr`` ahead (``sparse_adapter.pruning.zero_init``); ``none`` scores it as
    it is (every score ties). ``on_degenerate``: what a tensor whose scores all tie does: ``warn``
    (the default: a ``DegenerateScoresWarning`` naming it, recorded as ``tied_score_tensors``) or ``error``.
    ``options``: the scorer's own hyperparameters, declared beside its code (``register(..., settings=...)``),
    e.g. GraSP's ``{"temperature": 200.0}``.
    """

    scorer: str | None = "snip"
    scope: str = "global"
    batches: int = ranged(10, ge=0)
    min_density: float = 0.0  # global scope: every matrix keeps at least this fraction (0 = the paper's plain ranking)
    iterations: int | None = ranged(None, ge=1)
    control: str = "none"
    n: int = ranged(2, ge=1)  # scope=nm: keep n ...
    m: int = ranged(4, ge=2)  # ... of every m consecutive weights
    zero_init: str = "lookahead"
    lookahead_lr: float = ranged(1e-3, gt=0.0)
    on_degenerate: str = "warn"
    options: dict = field(default_factory=dict)  # the scorer's own settings (``register(..., settings=...)``)

    @property
    def enabled(self) -> bool:
        return self.scorer not in (None, "none")

    @property
    def needs_batches(self) -> bool:
        return self.enabled and SCORERS[self.scorer].needs_batches

    @property
    def rounds(self) -> int:
        return self.iterations if self.iterations is not None else SCORERS[self.scorer].rounds

    def scorer_options(self) -> dict:
        """The scorer's own settings, its declared defaults filled in (``pruner.options``); checked by ``validate``."""
        return scorer_settings(self.scorer if self.enabled else None, self.options)

    def settings(self) -> dict:
        """Every setting the masks depend on (summaries, adapter files, the report's row identity)."""
        if not self.enabled:
            return {"scorer": "none"}
        settings = {"scorer": self.scorer, "scope": self.scope, "iterations": self.rounds, "control": self.control,
                    "min_density": self.min_density}
        if self.scope == "nm":
            settings.update(n=self.n, m=self.m)
        if self.needs_batches:
            settings["batches"] = self.batches
        if options := self.scorer_options():  # all of them, defaults too: equal masks, equal records
            settings["options"] = options
        if self.needs_batches and (self.zero_init, self.lookahead_lr) != ("lookahead", 1e-3):  # non-defaults only:
            settings["zero_init"] = self.zero_init  # older records (no key) ran the defaults' masks on non-zero inits
            if self.zero_init == "lookahead":
                settings["lookahead_lr"] = self.lookahead_lr
        return settings

    def check_model(self, model: nn.Module, params: dict[str, nn.Parameter]) -> None:
        """ConfigError, before any data loads, when the scorer cannot score these adapter weights."""
        if self.enabled:
            SCORERS[self.scorer].check(model, params)

    def validate(self, sparsity: float) -> None:
        check_sparsity(sparsity)
        check_ranges(self, prefix="pruner")
        if self.control not in CONTROLS:
            raise ConfigError(f"pruner.control='{self.control}' is unknown (choose from {', '.join(CONTROLS)})")
        if self.zero_init not in ZERO_INIT_MODES:
            raise ConfigError(f"pruner.zero_init='{self.zero_init}' is unknown (choose from {', '.join(ZERO_INIT_MODES)})")
        if self.on_degenerate not in DEGENERATE_MODES:
            raise ConfigError(f"pruner.on_degenerate='{self.on_degenerate}' is unknown (choose from {', '.join(DEGENERATE_MODES)})")
        if not self.enabled:
            if self.control != "none":
                raise ConfigError(f"pruner.control={self.control} needs a pruner: pruner=none trains the dense adapter, it has no mask to {self.control}")
            return
        if self.scorer not in SCORERS:
            raise ConfigError(f"pruner.scorer='{self.scorer}' is unknown (choose from none, {', '.join(SCORERS)})")
        if self.scope not in SCOPES:
            raise ConfigError(f"pruner.scope='{self.scope}' is unknown (choose from {', '.join(SCOPES)})")
        self.scorer_options()
        if self.needs_batches and self.batches < 1:
            raise ConfigError(f"pruner.batches={self.batches}: pruner '{self.scorer}' needs at least one scoring batch")
        if self.control == "invert" and self.rounds > 1:
            raise ConfigError(f"pruner.control=invert ranks by one scoring; it cannot follow pruner.iterations={self.rounds} (set pruner.iterations=1)")
        if not 0.0 <= self.min_density <= 1.0 - sparsity:
            raise ConfigError(f"pruner.min_density={self.min_density} must be in [0, 1 - sparsity] = [0, {1.0 - sparsity:g}]")
        if self.min_density and self.scope != "global":
            raise ConfigError(f"pruner.min_density applies to pruner.scope=global; scope={self.scope} gives every matrix its own budget already")
        if self.scope == "nm":
            if not (isinstance(self.n, int) and isinstance(self.m, int) and 1 <= self.n < self.m):
                raise ConfigError(f"pruner.n={self.n}, pruner.m={self.m}: N:M needs integers 1 ≤ n < m (e.g. n=2 m=4)")
            if self.rounds > 1:
                raise ConfigError(f"pruner.scope=nm is one-shot: its pattern fixes the density, so pruner.iterations={self.rounds} has no schedule to follow")
            if abs(sparsity - (1 - self.n / self.m)) > 1e-9:
                raise ConfigError(
                    f"sparsity={sparsity} contradicts pruner.scope=nm with n={self.n}, m={self.m}: N:M keeps n/m, so set"
                    f" sparsity={1 - self.n / self.m:g}"
                )


def declared_settings(scorer: str | None) -> type | None:
    """The dataclass of a scorer's own hyperparameters (``register(..., settings=...)``); None if it has none."""
    return getattr(SCORERS.get(scorer), "settings", None) if scorer not in (None, "none") else None


def scorer_settings(scorer: str | None, options: Mapping, prefix: str = "pruner.options") -> dict:
    """A scorer's own settings from ``options``, its declared defaults filled in (whole numbers given for a
    ``float`` setting become floats, so records do not depend on how a number was typed); one ConfigError
    naming an unknown or out-of-range setting."""
    declared, options = declared_settings(scorer), {} if options is None else options
    if not isinstance(options, Mapping):
        raise ConfigError(f"{prefix}={options!r}: expected a mapping of scorer '{scorer}''s own settings")
    if declared is None:
        if options:
            first = sorted(map(str, options))[0]
            raise ConfigError(f"{prefix}.{first}: scorer '{scorer}' has no settings; drop {dict(options)}")
        return {}
    known = [f.name for f in fields(declared)]
    if unknown := sorted(set(options) - set(known)):
        raise ConfigError(f"{prefix}.{unknown[0]}: not a setting of scorer '{scorer}' ({', '.join(known)})")
    values = declared(**options)
    check_ranges(values, prefix=prefix)
    try:
        hints = typing.get_type_hints(declared)
    except Exception:  # noqa: BLE001 - an unresolvable annotation only costs the float coercion
        hints = {}
    return {name: float(value) if hints.get(name) is float and type(value) is int else value
            for name, value in asdict(values).items()}


def recorded_settings(settings: Mapping) -> dict:
    """A ``settings()`` record written by any version, as today's ``settings()`` writes it, so that a run record
    and the command resuming it compare equal when their masks are: a scorer's own setting recorded beside the
    pruner's (GraSP's ``temperature``, before it moved into ``pruner.options``) moves into ``options``, and the
    options get their declared defaults. The record itself (a file) is never rewritten."""
    settings = dict(settings)
    declared = declared_settings(settings.get("scorer"))
    if declared is None:
        return settings
    moved = {f.name for f in fields(declared)} - {f.name for f in fields(PrunerConfig)}
    options = {key: settings.pop(key) for key in sorted(moved & set(settings))}
    options.update(settings.get("options") or {})
    try:
        settings["options"] = scorer_settings(settings["scorer"], options)
    except (ConfigError, TypeError):  # a record another version could not check: compared as it was written
        if options:
            settings["options"] = options
    return settings


def schedule(sparsity: float, rounds: int) -> list[float]:
    """The sparsity after each round: density d^((i+1)/n) with d = 1 - s, the official exponential schedule."""
    density = 1.0 - sparsity
    return [1.0 - density ** ((i + 1) / rounds) for i in range(rounds)] if rounds > 1 else [sparsity]


@contextmanager
def pruned_temporarily(params: dict[str, nn.Parameter], masks: dict[str, torch.Tensor] | None):
    """Zero the weights pruned so far while a round scores the survivors; the values come back after,
    so a control that moves the mask (shuffle) never keeps a weight an earlier round zeroed."""
    if not masks:
        yield
        return
    saved = {name: params[name].detach().clone() for name in masks}
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].device))
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


@dataclass
class PruneResult:
    """The masks (parameter name → bool, True = kept) and what scoring found on the way: tensors the
    scorer could not rank (every score equal) and all-zero tensors scored one Adam step ahead. The
    masks stay a plain dict, so ``torch.save``/``torch.load(weights_only=True)`` take them as they are."""

    masks: dict[str, torch.Tensor]
    tied_score_tensors: list[str]
    lookahead_tensors: list[str]

    @property
    def empty_matrices(self) -> list[str]:
        """Tensors left with no weight (a global ranking can empty whole matrices)."""
        return [name for name, mask in self.masks.items() if not bool(mask.any())]


def prune(
    params: dict[str, nn.Parameter],
    sparsity: float,
    config: PrunerConfig,
    loss_fn: LossFn | None = None,
    batches: Sequence = (),
    seed: int = 0,
    model: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean masks (True = kept) over ``params`` with exactly round((1 - s) · N) kept: the masks of
    ``prune_with_report``, whose docstring says how."""
    return prune_with_report(params, sparsity, config, loss_fn, batches, seed, model).masks


def prune_with_report(
    params: dict[str, nn.Parameter],
    sparsity: float,
    config: PrunerConfig,
    loss_fn: LossFn | None = None,
    batches: Sequence = (),
    seed: int = 0,
    model: nn.Module | None = None,
) -> PruneResult:
    """Boolean masks (True = kept) over ``params`` with exactly round((1 - s) · N) kept.

    Pass ``model`` for second-order scorers (GraSP) on Hugging Face models: attention takes SDPA's math
    kernel (or eager modules) for their double-backward pass, since SDPA's fused kernels have none; SynFlow needs it for
    the adapter modules it feeds. With ``config.iterations`` > 1 each round re-scores only the
    surviving weights (pruned ones are zeroed while it scores and rank below every survivor, so under
    the global scope they never come back) and keeps exactly its round's count. ``config.control`` then acts on the final masks (``reinit`` also
    rewrites the kept values of ``params`` in place). All-zero tensors are scored one Adam step ahead
    (``config.zero_init``); tensors whose scores all tie are reported (``config.on_degenerate``).
    """
    check.parameters(params), check.sparsity(sparsity), check.instance(config, "config", PrunerConfig), check.integer(seed, "seed")
    check.callable_or_none(loss_fn, "loss_fn"), check.instance(model, "model", nn.Module, allow_none=True), check.batches(batches, items=False)
    config.validate(sparsity)
    if not config.enabled:
        raise ConfigError("pruner: no scorer chosen; nothing to prune")
    if not params:
        raise ConfigError("pruner: the adapter has no prunable weights (adapter=none is full fine-tuning)")
    if config.needs_batches and (loss_fn is None or len(batches) == 0):
        raise ConfigError(f"pruner.batches: pruner '{config.scorer}' needs scoring batches and a loss")
    total = sum(p.numel() for p in params.values())
    if kept_count(total, sparsity) == 0:
        raise ConfigError(f"sparsity={sparsity} keeps no weight of the {total} adapter weights (round((1 - s) · N) = 0); lower it")
    generator = torch.Generator().manual_seed(seed)
    double_backward = partial(second_order_attention, model) if model is not None else nullcontext
    ahead = zero_tensors(params) if config.needs_batches and config.zero_init == "lookahead" else []
    masks: dict[str, torch.Tensor] | None = None
    tied: list[str] = []
    for round_sparsity in schedule(sparsity, config.rounds):
        with pruned_temporarily(params, masks), lookahead(params, ahead, loss_fn, batches, config.lookahead_lr, masks):
            scores = SCORERS[config.scorer](
                params=params, loss_fn=loss_fn, batches=batches, generator=generator,
                double_backward=double_backward, model=model, **config.scorer_options(),
            )
        for name, score in scores.items():  # a NaN ranks arbitrarily: refuse it before it picks the topology
            if not bool(torch.isfinite(score).all()):
                raise NumericalError(
                    f"pruner.scorer={config.scorer}: the scores of {name} hold NaN/Inf; check adapter.init_std, the data"
                    " and the scoring loss (pruner=random needs no scores)"
                )
        tied += [name for name in tied_tensors(scores, masks) if name not in tied]
        if masks is not None:  # survivors only: what an earlier round pruned ranks below everything
            scores = {name: score.float().masked_fill(~masks[name].to(score.device), float("-inf")) for name, score in scores.items()}
        masks = select(scores, round_sparsity, config.scope, generator, config.min_density, n=config.n, m=config.m)
    report_degenerate(tied, config.scorer, config.on_degenerate)
    return PruneResult(apply_control(config.control, masks, scores, params, generator), tied, ahead)
