"""What every adapter variant shares: its config contract and parameter bookkeeping."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from sparse_adapter.errors import ConfigError

INITS = ("bert", "lora")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


@dataclass
class AdapterConfig:
    """Base of all adapter configs; ``attach`` edits a model in place.

    ``size_field`` names the width that Large-Sparse multiplies (bottleneck or rank);
    ``None`` means the variant has no such width.
    """

    size_field = None  # class attribute, not a dataclass field

    def attach(self, model: nn.Module) -> list[str]:
        """Insert the adapters and freeze the backbone; return the prunable parameter names."""
        raise NotImplementedError

    def scaled(self, factor: int) -> "AdapterConfig":
        """The same adapter with its bottleneck (or rank) multiplied by ``factor``."""
        if self.size_field is None:
            raise ConfigError(f"large_sparse: adapter '{type(self).__name__}' has no bottleneck or rank to scale")
        return dataclasses.replace(self, **{self.size_field: getattr(self, self.size_field) * factor})

    def validate(self) -> None:
        if self.size_field is not None and getattr(self, self.size_field) <= 0:
            raise ConfigError(f"adapter.{self.size_field}={getattr(self, self.size_field)} must be a positive integer")
        init = getattr(self, "init", None)
        if init is not None and init not in INITS:
            raise ConfigError(f"adapter.init='{init}' is unknown (choose from {', '.join(INITS)})")
        dropout = getattr(self, "dropout", 0.0)
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"adapter.dropout={dropout} must be in [0, 1)")


def freeze_backbone(model: nn.Module) -> None:
    """Freeze the pretrained body; the task head (everything outside ``base_model``) stays trainable.

    Selecting the head structurally rather than by a name filter avoids the official code's bug of
    freezing a randomly initialised head.
    """
    for parameter in model.base_model.parameters():
        parameter.requires_grad_(False)


def init_linear(layer: nn.Linear, std: float, zero: bool = False) -> None:
    with torch.no_grad():
        if zero:
            layer.weight.zero_()
        else:
            layer.weight.normal_(0.0, std)
        if layer.bias is not None:
            layer.bias.zero_()


def kaiming_uniform(weight: torch.Tensor) -> None:
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
