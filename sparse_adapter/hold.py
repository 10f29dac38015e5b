"""Hold pruning masks in any PyTorch training loop: pruned weights, gradients and optimizer state stay zero.

    handle = hold_masks(optimizer, params, masks)   # params: name -> Parameter, masks: name -> bool (True = kept)
    ...  # loss.backward(); clip_grad_norm_(...); optimizer.step()  -- as usual
    handle.remove()

What ``callbacks.MaskEnforcement`` does inside Lightning, as hooks any loop (the Hugging Face
Trainer's included) keeps without knowing: a gradient hook masks each gradient as soon as it is
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
        if tuple(mask.shape) != tuple(params[name].shape):
            raise ConfigError(f"masks: '{name}' has shape {tuple(mask.shape)} but the parameter {tuple(params[name].shape)}")


def torch_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer under wrappers (accelerate's AcceleratedOptimizer, itself an Optimizer without
    hooks of its own, keeps it as ``.optimizer``)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class MaskHold:
    """The hooks of one ``hold_masks`` call; ``remove()`` takes them all off."""

    def __init__(self, optimizer, params: Mapping[str, nn.Parameter], masks: Mapping[str, torch.Tensor]):
        check_masks(params, masks)
        for name in masks:
            if holder(params[name]) is not None:
                raise ConfigError(f"masks: '{name}' is held already; remove() the first hold (or hold one combined mask)"
                                  " before holding another: two holds would keep the union of their zeros")
        self.pairs = [(params[name], mask.to(device=params[name].device, dtype=torch.bool)) for name, mask in masks.items()]
        self.optimizer = torch_optimizer(optimizer) if optimizer is not None else None
        self.handles = []
        with torch.no_grad():
            mask_parameters_and_state_(self.pairs, self.optimizer)  # from the first step on, pruned means zero
        for parameter, mask in self.pairs:
            self.handles.append(parameter.register_post_accumulate_grad_hook(_masking(mask)))
        for parameter, _ in self.pairs:
            setattr(parameter, HOLD_ATTRIBUTE, weakref.ref(self))
        if self.optimizer is not None:
            self.handles.append(self.optimizer.register_step_pre_hook(lambda *_: mask_gradients_(self.pairs)))
            self.handles.append(self.optimizer.register_step_post_hook(lambda *_: mask_parameters_and_state_(self.pairs, self.optimizer)))

    def kept(self) -> int:
        return int(sum(int(mask.sum()) for _, mask in self.pairs))

    def total(self) -> int:
        return int(sum(mask.numel() for _, mask in self.pairs))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _masking(mask: torch.Tensor):
    def hook(parameter: torch.Tensor) -> None:
        if parameter.grad is not None:
            parameter.grad.mul_(mask)
    return hook


def hold_masks(optimizer, params: Mapping[str, nn.Parameter], masks: Mapping[str, torch.Tensor]) -> MaskHold:
    """Zero the pruned entries of ``params`` now and keep them (and their gradients and ``optimizer``
    state) zero through every later backward and step; returns the handle whose ``remove()`` stops it.
    ``optimizer`` may be None (gradients only), a torch optimizer or a wrapper around one. Masks must be
    bool tensors; a parameter can be held once at a time (``remove()`` the first hold before another)."""
    check.optimizer(optimizer), check.masks(masks, check.parameters(params))
    return MaskHold(optimizer, params, masks)
