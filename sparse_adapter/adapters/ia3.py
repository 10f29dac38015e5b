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

from sparse_adapter.adapters.base import ADAPTERS, AdapterConfig, WrapperLayer, adapter_dtype, freeze_backbone
from sparse_adapter.adapters.layouts import has_layout, layouts_for, replace_submodule
from sparse_adapter.adapters.targets import in_features, merged, out_features, resolve
from sparse_adapter.errors import ConfigError


class IA3Scale(WrapperLayer):
    """inner(x) ⊙ scale, with ``scale`` a learned vector over the output features (or over
    ``channels`` of them: the keys and values of GPT-2's fused ``c_attn``)."""

    wrapped = ("inner",)

    def __init__(self, inner: nn.Module, channels: list[int] | None = None):
        super().__init__()
        self.inner = inner
        reference = next(inner.parameters())
        width = out_features(inner)
        self.scale = nn.Parameter(torch.ones(len(channels) if channels else width, dtype=adapter_dtype(reference), device=reference.device))
        if channels:
            self.register_buffer("channels", torch.tensor(channels, device=reference.device), persistent=False)
        else:
            self.channels = None
        self.width = width

    def forward(self, *args, **kwargs):
        output = self.inner(*args, **kwargs)
        scale = self.scale if self.channels is None else \
            torch.ones(self.width, dtype=self.scale.dtype, device=self.scale.device).index_copy(0, self.channels, self.scale)
        return output * scale.to(output.dtype)  # computed in the body's dtype (adapter_dtype)


class IA3InputScale(WrapperLayer):
    """inner(x ⊙ scale): scales a Linear's input features (the FFN activation feeding BART's fc2, Llama's down_proj)."""

    wrapped = ("inner",)

    def __init__(self, inner: nn.Linear):
        super().__init__()
        self.inner = inner
        self.scale = nn.Parameter(torch.ones(in_features(inner), dtype=adapter_dtype(inner.weight), device=inner.weight.device))

    def forward(self, x, *args, **kwargs):
        return self.inner(x * self.scale.to(x.dtype), *args, **kwargs)


@ADAPTERS.register("ia3")
@dataclass
class IA3Config(AdapterConfig):
    targets: list[str] = field(default_factory=lambda: ["key", "value", "ffn"])

    def validate(self) -> None:
        if not self.targets or len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"adapter.targets={list(self.targets)}: name each IA³ target once (key, value, ffn)")

    def insert(self, model: nn.Module) -> list[str]:
        """Abstract names scale where the layout says (``ffn``: the down-projection's input); module
        names (``k_proj``, ``c_attn``) scale that module's output, as PEFT's IA³ outside ``feedforward_modules``."""
        found = resolve(model, list(self.targets), ("scaled", "scaled_input"))
        input_names = {name for layout in layouts_for(model).values() for name in layout.scaled_input} if has_layout(model) else set()
        inputs = {site.path for name, sites in found.items() if name in input_names for site in sites}
        freeze_backbone(model)
        prunable = []
        for site in merged(model, [site for sites in found.values() for site in sites]):
            wrapper = IA3InputScale(site.module) if site.path in inputs else IA3Scale(site.module, site.channels)
            replace_submodule(model, site.path, wrapper)
            prunable.append(f"{site.path}.scale")
        return prunable
