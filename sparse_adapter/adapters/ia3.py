"""IA³ (Liu et al., 2022, "Few-shot parameter-efficient fine-tuning is better and cheaper than
in-context learning"): learned vectors that rescale the keys, the values and the FFN's inner
activation, element-wise. The fewest trained parameters of all variants (2·hidden + ffn per layer).

The vectors start at one (the model is unchanged at init) and are the prunable tensors. A pruned
entry is held at zero like any pruned weight, which switches that channel off: sparse IA³ removes
key/value/FFN channels, a much stronger intervention than pruning an additive adapter's weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from sparse_adapter.adapters.base import AdapterConfig, AdapterLayer, freeze_backbone
from sparse_adapter.adapters.layouts import layouts_for, replace_submodule, transformer_blocks
from sparse_adapter.errors import ConfigError


def output_features(module: nn.Module) -> int:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"adapter=ia3: cannot tell the output width of {type(module).__name__}")
    return linears[-1].out_features


class IA3Scale(AdapterLayer):
    """inner(x) ⊙ scale, with ``scale`` a learned vector over the output features."""

    wrapped = ("inner",)

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        reference = next(inner.parameters())
        self.scale = nn.Parameter(torch.ones(output_features(inner), dtype=reference.dtype, device=reference.device))

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs) * self.scale


class IA3InputScale(AdapterLayer):
    """inner(x ⊙ scale): scales a Linear's input features (BART's FFN activation feeding fc2)."""

    wrapped = ("inner",)

    def __init__(self, inner: nn.Linear):
        super().__init__()
        self.inner = inner
        self.scale = nn.Parameter(torch.ones(inner.in_features, dtype=inner.weight.dtype, device=inner.weight.device))

    def forward(self, x, *args, **kwargs):
        return self.inner(x * self.scale, *args, **kwargs)


@dataclass
class IA3Config(AdapterConfig):
    targets: list[str] = field(default_factory=lambda: ["key", "value", "ffn"])

    def validate(self) -> None:
        if not self.targets or len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"adapter.targets={list(self.targets)}: name each IA³ target once (key, value, ffn)")

    def insert(self, model: nn.Module) -> list[str]:
        layouts = layouts_for(model).values()
        known = list(dict.fromkeys(name for layout in layouts for name in (*layout.scaled, *layout.scaled_input)))
        unknown = [t for t in self.targets if t not in known]
        if unknown:
            raise ConfigError(
                f"adapter.targets: unknown IA³ target {', '.join(map(repr, unknown))} (choose from {', '.join(known)})"
            )
        freeze_backbone(model)
        prunable = []
        for block_name, block, layout in transformer_blocks(model):
            for target in self.targets:
                if target in layout.scaled:
                    path, wrapper = layout.scaled[target], IA3Scale
                elif target in layout.scaled_input:
                    path, wrapper = layout.scaled_input[target], IA3InputScale
                else:  # e.g. ffn in BART's cross-attention part
                    continue
                replace_submodule(block, path, wrapper(block.get_submodule(path)))
                prunable.append(f"{block_name}.{path}.scale")
        return prunable
