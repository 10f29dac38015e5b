"""Score the adapter weights on the first training batches and fix the masks, before any step."""

from __future__ import annotations

import itertools
import logging
import time
import warnings
from collections.abc import Sequence

import lightning as L
import torch
from tqdm.auto import tqdm

from sparse_adapter.distributed import gather_batches, sharded
from sparse_adapter.errors import ConfigError, DegenerateScoresWarning, NumericalError
from sparse_adapter.pruning import PrunerConfig, prune_with_report

log = logging.getLogger(__name__)


class PruneAtInit(L.Callback):
    """Prune once at the start of training and store the masks on ``pl_module.masks``.

    Scoring runs in eval mode (dropout off, so scores are repeatable for a seed) on the first
    ``pruner.batches`` batches of a fresh training iterator; the global RNG is restored afterwards
    so the training data order is the same as in a dense run. A module that already holds masks
    (resumed from a checkpoint) is not pruned again. Under several processes rank 0 scores and
    broadcasts its masks (or its NaN-score error), so every rank trains the same topology.
    """

    def __init__(self, pruner: PrunerConfig, sparsity: float, seed: int = 0, resuming: bool = False):
        pruner.validate(sparsity)
        self.pruner, self.sparsity, self.seed = pruner, sparsity, seed
        self.resuming = resuming  # fit(ckpt_path=...): under sharding the masks come from the checkpoint (see setup)
        self.seconds = 0.0
        self._pruned_before_sharding = False
        self.tied_score_tensors: list[str] = []  # what scoring found (kept in checkpoints: a resumed run reports it too)
        self.lookahead_tensors: list[str] = []

    def state_dict(self) -> dict:
        return {"tied_score_tensors": self.tied_score_tensors, "lookahead_tensors": self.lookahead_tensors}

    def load_state_dict(self, state_dict: dict) -> None:
        self.tied_score_tensors = [str(n) for n in state_dict.get("tied_score_tensors", [])]
        self.lookahead_tensors = [str(n) for n in state_dict.get("lookahead_tensors", [])]

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        """Sharded training (trainer=fsdp): prune here, before ``configure_model`` shards the model, on the full
        weights every rank still holds; the scoring batches are every rank's first ones, so rank 0 scores the rows
        a one-process run of the same seed scores. A resumed run gets placeholders its checkpoint overwrites."""
        if stage != "fit" or not self.pruner.enabled or not sharded(trainer) or len(pl_module.masks):
            return
        if self.resuming:  # a sharded checkpoint loads into existing tensors only: give the masks a place
            for name, parameter in pl_module.prunable_parameters().items():
                pl_module.masks[name] = torch.ones_like(parameter, dtype=torch.bool)
            return
        self._pruned_before_sharding = True
        self._prune(trainer, pl_module, lambda: gather_batches(self._first_batches(trainer.datamodule.train_dataloader())))

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        if not self.pruner.enabled:
            return
        if self._pruned_before_sharding:
            self._pruned_before_sharding = False
            return
        if len(pl_module.masks):
            log.info("PruneAtInit: %d masks restored from the checkpoint; not pruning again", len(pl_module.masks))
            return
        self._prune(trainer, pl_module, lambda: self._scoring_batches(trainer))

    def _prune(self, trainer: L.Trainer, pl_module, scoring_batches) -> None:
        start = time.perf_counter()
        params = pl_module.prunable_parameters()
        masks: dict | tuple | None = None
        gathered = scoring_batches() if sharded(trainer) and self.pruner.needs_batches else None  # every rank takes part
        if trainer.is_global_zero:  # only rank 0's masks are used: other ranks wait for the broadcast
            batches = (gathered if gathered is not None else scoring_batches()) if self.pruner.needs_batches else []
            if batches:
                log.info("PruneAtInit: scoring %d batches with %s (eval mode)", len(batches), self.pruner.scorer)
            was_training = pl_module.training
            pl_module.eval()
            try:
                with ScoringProgress(batches, self.pruner.scorer, enabled=trainer.progress_bar_callback is not None) as scored, \
                        warnings.catch_warnings():
                    warnings.simplefilter("ignore", DegenerateScoresWarning)  # logged below, once, with the run's log
                    result = prune_with_report(
                        params, self.sparsity, self.pruner,
                        loss_fn=pl_module.scoring_loss, batches=scored, seed=self.seed, model=pl_module.model,
                    )
                masks = {"masks": result.masks, "tied": result.tied_score_tensors, "lookahead": result.lookahead_tensors}
            except (NumericalError, ConfigError) as error:
                masks = (type(error).__name__, str(error))  # broadcast the failure: every rank stops, none waits forever
            finally:
                pl_module.train(was_training)
        masks = trainer.strategy.broadcast(masks, src=0)
        if isinstance(masks, tuple):
            kind, message = masks
            raise (NumericalError if kind == "NumericalError" else ConfigError)(message)
        self.tied_score_tensors, self.lookahead_tensors = masks["tied"], masks["lookahead"]
        masks = masks["masks"]
        for name, mask in masks.items():
            pl_module.masks[name] = mask.to(pl_module.device)
        pl_module.masks.apply_(params)
        for parameter in pl_module.parameters():
            parameter.grad = None  # nothing of the scoring passes may reach the first step
        self.seconds = time.perf_counter() - start
        self._log(trainer, pl_module)

    def _scoring_batches(self, trainer: L.Trainer) -> list:
        return [trainer.strategy.batch_to_device(batch) for batch in self._first_batches(trainer.train_dataloader)]

    def _first_batches(self, loader) -> list:
        with torch.random.fork_rng(devices=[]):
            return list(itertools.islice(iter(loader), self.pruner.batches))

    def _log(self, trainer: L.Trainer, pl_module) -> None:
        masks = pl_module.masks
        metrics = {"prune/seconds": self.seconds, "prune/actual_sparsity": 1 - masks.kept() / masks.total()}
        metrics.update({f"density/{name}": value for name, value in masks.densities().items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        log.info(
            "PruneAtInit: %s/%s kept %d of %d adapter weights (sparsity %.4f) in %.2fs",
            self.pruner.scorer, self.pruner.scope, masks.kept(), masks.total(), metrics["prune/actual_sparsity"], self.seconds,
        )
        if self.lookahead_tensors:
            log.info("PruneAtInit: %d all-zero tensors scored one Adam step ahead (pruner.zero_init=lookahead), e.g. %s",
                     len(self.lookahead_tensors), self.lookahead_tensors[0])
        if self.tied_score_tensors:
            log.warning(
                "PruneAtInit: %s could not rank %d tensor(s): every score equal (%s); their masks come from the seeded"
                " tie-break (recorded as tied_score_tensors; pruner.on_degenerate=error refuses this)",
                self.pruner.scorer, len(self.tied_score_tensors), ", ".join(self.tied_score_tensors[:4]),
            )
        if empty := masks.empty():
            log.warning(
                "PruneAtInit: %d adapter matrices kept no weight: %s; modules silenced by an empty factor: %s "
                "(pruner.min_density=0.05, say, keeps a floor in every matrix)",
                len(empty), ", ".join(empty), ", ".join(masks.silenced_modules()),
            )


class ScoringProgress(Sequence):
    """The scoring batches, showing "scoring batch n/N" while a scorer walks them (GraSP walks them twice)."""

    def __init__(self, batches: list, scorer: str, enabled: bool):
        self.batches = batches
        self.bar = tqdm(desc=f"PruneAtInit {scorer}: scoring batch", unit="batch", disable=not (enabled and batches), leave=False)

    def __enter__(self) -> ScoringProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]

    def __iter__(self):
        self.bar.reset(total=len(self.batches))
        for batch in self.batches:
            yield batch
            self.bar.update()
