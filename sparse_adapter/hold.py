"""Hold pruning masks in any PyTorch training loop: pruned weights, gradients and optimizer state stay zero.

    handle = hold_masks(optimizer, params, masks)   # params: name -> Parameter, masks: name -> bool (True = kept)
    ...  # loss.backward(); clip_grad_norm_(...); optimizer.step()  -- as usual
    handle.remove()

The one mask-holding mechanism: ``callbacks.MaskEnforcement`` (Lightning) and ``SparseAdapterCallback``
(Hugging Face Trainer) are thin users of ``MaskHold``; any loop keeps its hooks without knowing: a gradient hook
masks each gradient as soon as it is
accumulated (so gradient clipping never counts a pruned entry), an optimizer pre-step hook masks
the gradients again (whatever wrote them since), and a post-step hook masks the weights and every
same-shaped state tensor (Adam's moments), which also undoes decoupled weight decay's move.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import torch
from torch import nn

from sparse_adapter import arguments as check
from sparse_adapter import zero
from sparse_adapter.distributed import sharded_pairs
from sparse_adapter.errors import ConfigError
from sparse_adapter.pruning.masks import mask_gradients_, mask_parameters_and_state_


# each held parameter carries a weak reference to its MaskHold: a second hold would stack two masks (the union of
# their zeros), so it is refused while the first is on
HOLD_ATTRIBUTE = "_sparse_adapter_hold"


def holder(parameter: nn.Parameter) -> "MaskHold | None":
    reference = getattr(parameter, HOLD_ATTRIBUTE, None)
    hold = reference() if reference is not None else None
    return hold if hold is not None and hold.handles else None


def check_bool_masks(masks: Mapping[str, torch.Tensor]) -> None:
    """ConfigError unless ``masks`` maps names to bool tensors with values (not scores, not on the meta device)."""
    if not isinstance(masks, Mapping):
        raise ConfigError(f"masks: expected a dict of parameter name → bool tensor, got {type(masks).__name__}")
    for name, mask in masks.items():
        if not torch.is_tensor(mask) or mask.dtype != torch.bool:
            kind = f"a {mask.dtype} tensor" if torch.is_tensor(mask) else type(mask).__name__
            raise ConfigError(
                f"masks: '{name}' is {kind}, not a bool tensor (True = kept); scores are not masks: select them first"
                " (prune_peft_model returns bool masks)"
            )
        if mask.device.type == "meta":
            raise ConfigError(f"masks: '{name}' is on the meta device (it holds no values)")


def check_masks(params: Mapping[str, nn.Parameter], masks: Mapping[str, torch.Tensor]) -> None:
    """ConfigError when a mask is not boolean, names no parameter or has another shape (masks from another model)."""
    check_bool_masks(masks)
    for name, mask in masks.items():
        if name not in params:
            some = ", ".join(list(params)[:3])
            raise ConfigError(f"masks: '{name}' is not a parameter of this model (e.g. {some}); masks from another model?")
        if tuple(mask.shape) != zero.full_shape(params[name]):  # ZeRO-3's partitioned parameters: their full shape
            shape = zero.full_shape(params[name])
            raise ConfigError(f"masks: '{name}' has shape {tuple(mask.shape)} but the parameter {shape}")


def torch_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer under wrappers (accelerate's AcceleratedOptimizer, itself an Optimizer without
    hooks of its own, keeps it as ``.optimizer``)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class MaskHold:
    """Pruned weights, their gradients and optimizer state held at zero; ``remove()`` takes the hooks off.

    The one mechanism behind ``hold_masks``, ``SparseAdapterCallback`` and Lightning's ``MaskEnforcement``, for
    every place the trained values live:
    - plain and DDP parameters: the tensors themselves;
    - FSDP2 (``DTensor``) parameters: each mask gets its parameter's placements, so the local shard is masked;
    - DeepSpeed ZeRO-2/3: the flat fp32 partitions the inner optimizer steps and the model-dtype partitions ZeRO
      copies them into (``sparse_adapter.zero``); the parameters' own gradients are masked as autograd makes them.
    Gradients are masked as they are accumulated (so clipping never counts a pruned entry) and again before each
    step; weights and every same-shaped state tensor (Adam's moments) after it (undoing decoupled weight decay).
    """

    def __init__(self, optimizer, params: Mapping[str, nn.Parameter], masks: Mapping[str, torch.Tensor], *,
                 step_hooks: bool = True):
        """``step_hooks=False``: the caller calls ``mask_gradients()`` / ``mask_weights_and_state()`` around its steps
        itself (Lightning's callback hooks); gradient hooks are always on."""
        check_masks(params, masks)
        for name in masks:
            if holder(params[name]) is not None:
                raise ConfigError(f"masks: '{name}' is held already; remove() the first hold (or hold one combined mask)"
                                  " before holding another: two holds would keep the union of their zeros")
        self.masks = {name: mask.to(dtype=torch.bool) for name, mask in masks.items()}
        self.zero = zero.zero_optimizer(optimizer)
        if (problem := zero.problem(optimizer, self.zero)) is not None:
            raise ConfigError(problem)
        self.optimizer = (self.zero.optimizer if self.zero is not None
                          else torch_optimizer(optimizer) if optimizer is not None else None)
        full = [(params[name], mask) for name, mask in self.masks.items()]
        self.handles = []
        if self.zero is not None:  # ZeRO's flat partitions are what its inner optimizer steps
            self.pairs, self.partitions = [], zero.partitions(self.zero, dict(full))
            self.mask_weights_and_state()  # from the first step on, pruned means zero
            with torch.no_grad():  # ZeRO-1/2: each rank masked its slice of the flat buffer; the full views too
                for parameter, mask in full if zero.stage(self.zero) == 2 else ():
                    parameter.mul_(mask.to(parameter.device))
            for parameter, mask in full:  # ZeRO takes .grad into its buckets in its own hooks: mask on the way in
                self.handles.append(parameter.register_hook(_masking_gradient(mask)))
        else:
            self.pairs = sharded_pairs((p, m.to(device=p.device)) for p, m in full)  # FSDP2: DTensor masks
            self.partitions = []
            self.mask_weights_and_state()
            for parameter, mask in self.pairs:
                self.handles.append(parameter.register_post_accumulate_grad_hook(_masking(mask)))
        for parameter, _ in full:
            setattr(parameter, HOLD_ATTRIBUTE, weakref.ref(self))
        if self.optimizer is not None and step_hooks:
            self.handles.append(self.optimizer.register_step_pre_hook(lambda *_: self.mask_gradients()))
            self.handles.append(self.optimizer.register_step_post_hook(lambda *_: self.mask_weights_and_state()))

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of pruned entries (ZeRO: of the flat fp32 partitions about to be stepped)."""
        mask_gradients_(self.pairs)
        for fp32, _, mask in self.partitions:
            if fp32.grad is not None:
                fp32.grad.mul_(mask)

    @torch.no_grad()
    def mask_weights_and_state(self) -> None:
        """Zero pruned weights and every same-shaped optimizer state tensor."""
        mask_parameters_and_state_(self.pairs, self.optimizer)
        if self.partitions:
            mask_parameters_and_state_([(fp32, mask) for fp32, _, mask in self.partitions], self.optimizer)
            for fp32, model, mask in self.partitions:
                if model.data_ptr() != fp32.data_ptr():
                    model.mul_(mask.to(model.device))

    def kept(self) -> int:
        return int(sum(int(mask.sum()) for mask in self.masks.values()))

    def total(self) -> int:
        return int(sum(mask.numel() for mask in self.masks.values()))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _masking(mask: torch.Tensor):
    def hook(parameter: torch.Tensor) -> None:
        if parameter.grad is not None:
            parameter.grad.mul_(mask)
    return hook


def _masking_gradient(mask: torch.Tensor):
    def hook(gradient: torch.Tensor) -> torch.Tensor:
        return gradient * mask.to(gradient.device) if gradient.shape == mask.shape else gradient
    return hook


def hold_masks(optimizer, params: Mapping[str, nn.Parameter], masks: Mapping[str, torch.Tensor]) -> MaskHold:
    """Zero the pruned entries of ``params`` now and keep them (and their gradients and ``optimizer``
    state) zero through every later backward and step; returns the handle whose ``remove()`` stops it.
    ``optimizer`` may be None (gradients only), a torch optimizer or a wrapper around one. Masks must be
    bool tensors; a parameter can be held once at a time (``remove()`` the first hold before another)."""
    check.optimizer(optimizer), check.masks(masks, check.parameters(params))
    return MaskHold(optimizer, params, masks)
