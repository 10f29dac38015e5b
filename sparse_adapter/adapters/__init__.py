"""Adapter variants, one module each, and the registry that names them."""

from __future__ import annotations

from torch import nn

from sparse_adapter.adapters.base import AdapterConfig
from sparse_adapter.adapters.full import FullFineTuningConfig
from sparse_adapter.adapters.houlsby import HoulsbyConfig
from sparse_adapter.adapters.lora import LoRAConfig
from sparse_adapter.adapters.pfeiffer import PfeifferConfig
from sparse_adapter.errors import ConfigError

ADAPTERS: dict[str, type[AdapterConfig]] = {
    "none": FullFineTuningConfig,
    "houlsby": HoulsbyConfig,
    "pfeiffer": PfeifferConfig,
    "lora": LoRAConfig,
}


def attach_adapter(model: nn.Module, adapter: AdapterConfig | str, **options) -> list[str]:
    """Attach an adapter (a config, or a registry name plus options); return prunable names."""
    if isinstance(adapter, str):
        if adapter not in ADAPTERS:
            raise ConfigError(f"adapter='{adapter}' is unknown (choose from {', '.join(ADAPTERS)})")
        adapter = ADAPTERS[adapter](**options)
    return adapter.attach(model)


__all__ = ["ADAPTERS", "AdapterConfig", "FullFineTuningConfig", "HoulsbyConfig", "LoRAConfig", "PfeifferConfig", "attach_adapter"]
