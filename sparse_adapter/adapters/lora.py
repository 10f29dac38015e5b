"""LoRA (Hu et al., 2022): a low-rank update B·A added beside frozen linear layers."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sparse_adapter.adapters.base import AdapterConfig, AdapterLayer, freeze_backbone, kaiming_uniform
from sparse_adapter.adapters.layouts import layouts_for, replace_submodule, transformer_blocks
from sparse_adapter.errors import ConfigError


class LoRALinear(AdapterLayer):
    """base(x) + scaling · B(A(dropout(x))); A is (r, in), B is (out, r) as in PEFT."""

    wrapped = ("base_layer",)

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float, init: str, init_std: float):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=base.weight.dtype, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.empty(base.out_features, r, dtype=base.weight.dtype, device=base.weight.device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / r
        with torch.no_grad():
            if init == "lora":  # the LoRA paper: A random, B zero, so the update starts at 0
                kaiming_uniform(self.lora_A)
                self.lora_B.zero_()
            else:  # the official SparseAdapter code: both N(0, 0.02), so no factor is all ties
                self.lora_A.normal_(0.0, init_std)
                self.lora_B.normal_(0.0, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base_layer(x) + update * self.scaling

    def flow_input(self) -> int:
        return self.lora_A.shape[1]


@dataclass
class LoRAConfig(AdapterConfig):
    r: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: ["query", "value"])
    dropout: float = 0.0
    init: str = "bert"
    init_std: float = 0.02

    size_field = "r"

    def insert(self, model: nn.Module) -> list[str]:
        known = list(dict.fromkeys(name for layout in layouts_for(model).values() for name in layout.linears))
        unknown = [t for t in self.targets if t not in known]
        if unknown or not self.targets:
            raise ConfigError(
                f"adapter.targets={list(self.targets)}: choose one or more of {', '.join(known)}"
            )
        freeze_backbone(model)
        prunable = []
        for block_name, block, layout in transformer_blocks(model):
            for target in self.targets:
                if target not in layout.linears:  # e.g. fc1 in BART's cross-attention part
                    continue
                path = layout.linears[target]
                base = block.get_submodule(path)
                replace_submodule(block, path, LoRALinear(base, self.r, self.alpha, self.dropout, self.init, self.init_std))
                prunable += [f"{block_name}.{path}.lora_A", f"{block_name}.{path}.lora_B"]
        return prunable
