"""Binary masks as an ``nn.Module`` of bool buffers, so they move with the model and live in checkpoints."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn


def _buffer_name(parameter_name: str) -> str:
    """Buffer names cannot hold '.', so '.' becomes '__'; a name already holding '__' could not be
    read back unambiguously from a checkpoint, so it is refused."""
    if "__" in parameter_name:
        raise ValueError(f"MaskSet: parameter name '{parameter_name}' contains '__', which mask buffer names reserve for '.'")
    return parameter_name.replace(".", "__")


def owning_module(parameter_name: str) -> str:
    """The adapter module a prunable tensor belongs to: ``x.adapter.down.weight`` → ``x.adapter``,
    ``x.query.lora_A`` → ``x.query``."""
    return parameter_name.removesuffix(".weight").rsplit(".", 1)[0]


class MaskSet(nn.Module):
    """Masks keyed by parameter name (``True`` = kept). Empty until pruning (or a checkpoint) fills it.

    Loading a state dict creates the buffers it carries, so a freshly built model can resume from a
    checkpoint with masks without pruning again.
    """

    def __init__(self, masks: Mapping[str, torch.Tensor] | None = None):
        super().__init__()
        self._names: dict[str, str] = {}  # buffer name -> parameter name
        for name, mask in (masks or {}).items():
            self[name] = mask

    def __setitem__(self, parameter_name: str, mask: torch.Tensor) -> None:
        buffer = _buffer_name(parameter_name)
        self._names[buffer] = parameter_name
        self.register_buffer(buffer, mask.detach().to(torch.bool).clone())

    def __getitem__(self, parameter_name: str) -> torch.Tensor:
        return getattr(self, _buffer_name(parameter_name))

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names.values())

    def __contains__(self, parameter_name: object) -> bool:
        return isinstance(parameter_name, str) and "__" not in parameter_name and _buffer_name(parameter_name) in self._names

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for buffer, name in self._names.items():
            yield name, getattr(self, buffer)

    def kept(self) -> int:
        return int(sum(int(mask.sum()) for _, mask in self.items()))

    def total(self) -> int:
        return int(sum(mask.numel() for _, mask in self.items()))

    def densities(self) -> dict[str, float]:
        return {name: float(mask.float().mean()) for name, mask in self.items()}

    def empty(self) -> list[str]:
        """Matrices left with no weight (layer collapse: a global ranking can empty whole matrices)."""
        return [name for name, mask in self.items() if not bool(mask.any())]

    def silenced_modules(self) -> list[str]:
        """Adapter modules with an empty factor (``down``/``up``, LoRA ``A``/``B``): a product with
        an empty factor is zero, so the whole module contributes nothing (or only its bias)."""
        return sorted({owning_module(name) for name in self.empty()})

    @torch.no_grad()
    def apply_(self, parameters: Mapping[str, torch.Tensor]) -> None:
        """Zero every pruned entry of ``parameters`` (weights, gradients or optimizer moments)."""
        names = [n for n in self if n in parameters and parameters[n] is not None]
        if names:
            torch._foreach_mul_([parameters[n] for n in names], [self[n] for n in names])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        for key, value in state_dict.items():
            if key.startswith(prefix) and "." not in key[len(prefix) :]:
                buffer = key[len(prefix) :]
                if buffer not in self._names:
                    self[buffer.replace("__", ".")] = value
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


MaskedPairs = list[tuple[torch.nn.Parameter, torch.Tensor]]


@torch.no_grad()
def mask_gradients_(pairs: MaskedPairs) -> None:
    """Zero the gradients of pruned entries, so no optimizer moves them or counts them in a norm."""
    pairs = [(p, m) for p, m in pairs if p.grad is not None]
    if pairs:
        torch._foreach_mul_([p.grad for p, _ in pairs], [m for _, m in pairs])


@torch.no_grad()
def mask_parameters_and_state_(pairs: MaskedPairs, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Zero pruned weights and every same-shaped optimizer state tensor (Adam's moments) in one call."""
    if not pairs:
        return
    tensors, masks = [p for p, _ in pairs], [m for _, m in pairs]
    if optimizer is not None:
        for parameter, mask in pairs:
            for value in optimizer.state.get(parameter, {}).values():
                if torch.is_tensor(value) and value.shape == parameter.shape:
                    tensors.append(value)
                    masks.append(mask)
    torch._foreach_mul_(tensors, masks)
