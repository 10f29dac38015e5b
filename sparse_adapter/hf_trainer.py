"""SparseAdapter inside the Hugging Face ``Trainer``: prune at the start of training, hold the masks after.

    trainer = Trainer(model=peft_model, args=args, train_dataset=..., callbacks=[SparseAdapterCallback(sparsity=0.4)])

What ``PruneAtInit`` + ``MaskEnforcement`` do in our Lightning app: the adapter tensors are scored on
the first ``batches`` batches of the Trainer's own training dataloader (eval mode, the global RNG
restored so the data order is the one a dense run sees), then ``hold_masks`` keeps pruned weights,
gradients (before clipping; accumulation included) and optimizer state exactly zero. The masks are
written into every Trainer checkpoint and read back when training resumes from one, so a resumed
run never re-prunes trained weights. Under DDP rank 0 scores and broadcasts its masks.

Under DeepSpeed ZeRO-1/2/3 and FSDP2 (accelerate) the Trainer shards the model before ``on_train_begin``, so
scoring happens in ``on_init_end`` on the model as given (ZeRO-3 models built under ``zero.Init`` are gathered
for it), on the first batches of the Trainer's training dataloader: pass the callback to ``Trainer(callbacks=...)``.
``MaskHold`` then holds the masks where those setups keep the trained values (DTensor shards, ZeRO's partitions).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import TrainerCallback

from sparse_adapter.distributed import trainer_problem, trainer_sharded
from sparse_adapter.errors import ConfigError
from sparse_adapter.hf_resume import resumed_masks
from sparse_adapter.hold import MaskHold, check_bool_masks, hold_masks
from sparse_adapter.mask_files import MASKS_FILE, read_masks, save_masks  # noqa: F401  (re-exported: the old home)
from sparse_adapter.peft import adapter_tensors, compiled, prune_parameters, pruner_config

log = logging.getLogger(__name__)


def broadcast(masks):
    """Rank 0's masks on every rank (a no-op on one process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return masks
    box = [masks]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


class SparseAdapterCallback(TrainerCallback):
    """Prune the model's adapter tensors at ``on_train_begin`` and hold the masks for the whole run.

    ``pruner``: any scorer (snip, grasp, synflow, magnitude, random), scored on the first ``num_batches``
    batches of the Trainer's training dataloader; ``options``: ``PrunerConfig`` settings (scope,
    iterations, control, n, m, min_density, zero_init, lookahead_lr, on_degenerate, and ``options``: the scorer's
    own settings, e.g. ``options={"temperature": 100.0}`` for grasp).
    ``include``/``exclude``: regular expressions on parameter names. ``seed``: the tie-break and
    random-score seed (default: ``args.seed``). ``masks``: precomputed masks (e.g. from
    ``prune_peft_model``) to hold instead of pruning; they must be bool tensors named as the model's
    parameters. Every keyword is checked here, so a mistake fails before the Trainer starts. After
    training, ``masks`` holds the masks and ``kept_fraction`` their density.
    """

    def __init__(self, sparsity: float = 0.4, pruner: str = "snip", num_batches: int = 10, seed: int | None = None,
                 include: str | None = None, exclude: str | None = None, masks: Mapping[str, torch.Tensor] | None = None,
                 **options):
        if "batches" in options:  # the old name of the count; prune_peft_model's `batches` are the batches themselves
            batches = options.pop("batches")
            if isinstance(batches, bool) or not isinstance(batches, int):
                raise ConfigError("batches=: the callback scores the Trainer's own first batches; their number is"
                                  " num_batches= (prune_peft_model(batches=...) takes a list of batches)")
            warnings.warn("SparseAdapterCallback(batches=N) is now num_batches=N", FutureWarning, stacklevel=2)
            num_batches = batches
        if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
            raise ConfigError(f"num_batches={num_batches!r} must be an integer ≥ 1 (how many training batches are scored)")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"seed={seed!r} must be an integer or None (None: the Trainer's args.seed)")
        compiled("include", include), compiled("exclude", exclude)
        if masks is not None:
            check_bool_masks(masks)
            self.config = None  # held as given: nothing is scored
        else:
            self.config = pruner_config(pruner, sparsity, num_batches, options)
        self.sparsity, self.pruner, self.num_batches, self.seed = sparsity, pruner, num_batches, seed
        self.include, self.exclude, self.options = include, exclude, options
        self.given_masks = dict(masks) if masks is not None else None
        self.masks: dict[str, torch.Tensor] = {}
        self.tied_score_tensors: list[str] = []
        self.hold: MaskHold | None = None
        self.scored_before_sharding: tuple | None = None

    @property
    def kept_fraction(self) -> float:
        total = sum(mask.numel() for mask in self.masks.values())
        return sum(int(mask.sum()) for mask in self.masks.values()) / total if total else float("nan")

    def on_init_end(self, args, state, control, model=None, **kwargs):
        """Sharded setups: score now, while every rank still holds the whole model (see the module's docstring)."""
        if (problem := trainer_problem(args)) is not None:
            raise ConfigError(problem)
        if not trainer_sharded(args) or self.given_masks is not None or getattr(args, "resume_from_checkpoint", None):
            return
        trainer = _trainer_being_built()
        with torch.random.fork_rng(devices=[]):  # every rank draws (any collective in the loader stays symmetric)
            batches = list(itertools.islice(iter(trainer.get_train_dataloader()), self.num_batches))
        with _gathered(model):
            self.scored_before_sharding = broadcast(self._score(args, model, batches) if _rank() == 0 else None)

    def _score(self, args, model, batches) -> tuple:
        params = adapter_tensors(model, self.include, self.exclude)
        result = prune_parameters(model, params, self.sparsity, self.pruner, batches,
                                  seed=args.seed if self.seed is None else self.seed, **self.options)
        return result.masks, result.tied_score_tensors

    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
        if (problem := trainer_problem(args)) is not None:
            raise ConfigError(problem)
        named = dict(model.named_parameters())  # masks may name any tensor (given masks, an explicit include)
        if state.global_step > 0:  # resumed from a checkpoint: its masks, never a new pruning of trained weights
            expected = ({name: p for name, p in named.items() if name in self.given_masks} if self.given_masks is not None
                        else adapter_tensors(model, self.include, self.exclude))
            self.masks, checkpoint = resumed_masks(args, state, expected)  # the checkpoint resumed, wherever it is
            log.info("SparseAdapterCallback: masks restored from %s", checkpoint)
        elif self.given_masks is not None:
            self.masks = self.given_masks
        elif trainer_sharded(args):
            if self.scored_before_sharding is None:
                raise ConfigError("SparseAdapterCallback: under DeepSpeed or FSDP it scores before the model is"
                                  " sharded: pass it to Trainer(callbacks=[...]) (not add_callback later),"
                                  " or give masks=")
            self.masks, self.tied_score_tensors = self.scored_before_sharding
            self.scored_before_sharding = None
        else:
            found = None
            if state.is_world_process_zero:
                with torch.random.fork_rng(devices=[]):  # drawing batches must not move the training order
                    batches = list(itertools.islice(iter(train_dataloader), self.num_batches))
                found = self._score(args, model, batches)
            self.masks, self.tied_score_tensors = broadcast(found)
        if self.hold is not None:
            self.hold.remove()
        self.hold = hold_masks(optimizer, named, self.masks)
        state.log_history.append({"sparse_adapter/kept_fraction": self.kept_fraction, "step": state.global_step,
                                  "sparse_adapter/tied_score_tensors": self.tied_score_tensors})
        log.info("SparseAdapterCallback: %s kept %d of %d adapter weights (%.4f)", self.pruner, self.hold.kept(),
                 self.hold.total(), self.kept_fraction)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.masks:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                save_masks(self.masks, folder / MASKS_FILE)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.masks:
            logs["sparse_adapter/kept_fraction"] = self.kept_fraction

    def on_train_end(self, args, state, control, **kwargs):
        if self.hold is not None:
            self.hold.remove()
            self.hold = None


def _rank() -> int:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_rank() if distributed else 0


def _trainer_being_built():
    """The ``Trainer`` whose ``__init__`` calls ``on_init_end`` (callbacks are not handed the Trainer itself)."""
    from transformers import Trainer

    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code.co_name == "__init__" and isinstance(frame.f_locals.get("self"), Trainer):
            return frame.f_locals["self"]
        frame = frame.f_back
    raise ConfigError("SparseAdapterCallback: on_init_end was not called by a transformers Trainer being built")


def _gathered(model):
    """DeepSpeed ZeRO-3 parameters built under ``zero.Init`` gathered whole on every rank (for rank 0 to score),
    partitioned again after (unchanged: scoring writes no weights); a no-op for any other model."""
    partitioned = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)
