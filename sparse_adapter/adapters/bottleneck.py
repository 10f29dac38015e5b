"""Serial bottleneck adapters (down-project, nonlinearity, up-project, residual).

Houlsby and Pfeiffer are the same module placed at different sublayers, so both are thin
configs over ``BottleneckConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from sparse_adapter.adapters.base import ACTIVATIONS, AdapterConfig, AdapterLayer, freeze_backbone, init_linear, linear
from sparse_adapter.adapters.layouts import replace_submodule, transformer_blocks
from sparse_adapter.schema import ranged


class Bottleneck(AdapterLayer):
    """x + up(dropout(act(down(x)))): identity at init when the up-projection starts at zero.

    ``residual=False`` leaves the ``x +`` out (the parallel adapter adds its output elsewhere).
    """

    def __init__(self, hidden: int, bottleneck: int, activation: str, dropout: float, init: str, init_std: float,
                 residual: bool = True):
        super().__init__()
        self.residual = residual
        self.down = nn.Linear(hidden, bottleneck)
        self.up = nn.Linear(bottleneck, hidden)
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        init_linear(self.down, init_std)
        init_linear(self.up, init_std, zero=init == "lora")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = linear(self.up, self.dropout(self.act(linear(self.down, x))))  # in x's dtype: a bf16 body's stays bf16
        return x + update if self.residual else update

    def flow_input(self) -> int:
        return self.down.in_features


def on_hidden(output, function):
    """Apply ``function`` to a sublayer's hidden states: the output itself, or the first element of
    the (hidden, attention weights, ...) tuple that attention modules return (BART)."""
    if isinstance(output, tuple):
        return (function(output[0]), *output[1:])
    return function(output)


class AfterModule(nn.Module):
    """Runs ``inner`` and then ``adapter`` on its output; replaces ``inner`` in the model tree."""

    def __init__(self, inner: nn.Module, adapter: nn.Module):
        super().__init__()
        self.inner = inner
        self.adapter = adapter

    def forward(self, *args, **kwargs):
        return on_hidden(self.inner(*args, **kwargs), self.adapter)


@dataclass
class BottleneckConfig(AdapterConfig):
    bottleneck: int = ranged(64, ge=1)
    activation: str = "relu"
    dropout: float = ranged(0.0, ge=0.0, lt=1.0)
    init: str = "bert"  # "bert": both projections N(0, init_std) as the official code; "lora": zero up
    init_std: float = ranged(0.02, gt=0.0)

    size_field = "bottleneck"
    sublayers: ClassVar[tuple[str, ...]] = ()  # which layout slots get an adapter; set by subclasses

    def insert(self, model: nn.Module) -> list[str]:
        freeze_backbone(model)
        hidden = model.config.hidden_size
        prunable = []
        for block_name, block, layout in transformer_blocks(model):
            for sublayer in self.sublayers:
                path = layout.point(sublayer)
                if not path:  # e.g. after_ffn in BART's cross-attention part
                    continue
                adapter = Bottleneck(hidden, self.bottleneck, self.activation, self.dropout, self.init, self.init_std)
                replace_submodule(block, path, AfterModule(block.get_submodule(path), adapter))
                prefix = f"{block_name}.{path}.adapter"
                prunable += [f"{prefix}.down.weight", f"{prefix}.up.weight"]
        return prunable
