"""Full fine-tuning: the paper's reference row; every backbone weight trains, nothing is prunable."""

from dataclasses import dataclass

from torch import nn

from sparse_adapter.adapters.base import ADAPTERS, AdapterConfig


@ADAPTERS.register("none")
@dataclass
class FullFineTuningConfig(AdapterConfig):
    def insert(self, model: nn.Module) -> list[str]:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return []
