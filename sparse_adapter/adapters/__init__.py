"""Adapter variants, one module each, each registered by name in ``ADAPTERS`` (``sparse_adapter.registry``)."""

from __future__ import annotations

from torch import nn

from sparse_adapter.adapters.base import ADAPTERS, AdapterConfig  # each variant below registers itself in ADAPTERS
from sparse_adapter.adapters.full import FullFineTuningConfig
from sparse_adapter.adapters.fusion import FusionConfig
from sparse_adapter.adapters.houlsby import HoulsbyConfig
from sparse_adapter.adapters.ia3 import IA3Config
from sparse_adapter.adapters.lora import LoRAConfig
from sparse_adapter.adapters.mam import MAMConfig
from sparse_adapter.adapters.parallel import ParallelConfig
from sparse_adapter.adapters.pfeiffer import PfeifferConfig
from sparse_adapter.adapters.prefix import PrefixConfig
from sparse_adapter import arguments as check
from sparse_adapter.errors import ConfigError



def attach_adapter(model: nn.Module, adapter: AdapterConfig | str, **options) -> list[str]:
    """Attach an adapter (a config, or a registry name plus options); return prunable names."""
    check.model(model)
    if isinstance(adapter, str):
        if adapter not in ADAPTERS:
            raise ConfigError(f"adapter='{adapter}' is unknown (choose from {', '.join(ADAPTERS)})")
        try:
            adapter = ADAPTERS[adapter](**options)
        except TypeError as error:  # an option the variant does not have
            raise ConfigError(f"adapter='{adapter}': {error}") from None
    elif options:
        raise ConfigError(f"{', '.join(options)}: options go with an adapter name; set them on the config ({type(adapter).__name__})")
    check.instance(adapter, "adapter", AdapterConfig)
    adapter.validate()
    return adapter.attach(model)


def adapter_name(config: AdapterConfig) -> str:
    """The registry name of a config's class (what an adapter file records)."""
    return ADAPTERS.name_of(type(config))


__all__ = [
    "ADAPTERS", "AdapterConfig", "FullFineTuningConfig", "FusionConfig", "HoulsbyConfig", "IA3Config", "LoRAConfig", "MAMConfig", "ParallelConfig",
    "PfeifferConfig", "PrefixConfig", "adapter_name", "attach_adapter",
]
