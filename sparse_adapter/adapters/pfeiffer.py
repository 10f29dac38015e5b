"""Pfeiffer et al. (2021): one bottleneck adapter per block, after the FFN sublayer only."""

from dataclasses import dataclass

from sparse_adapter.adapters.base import ADAPTERS
from sparse_adapter.adapters.bottleneck import BottleneckConfig


@ADAPTERS.register("pfeiffer")
@dataclass
class PfeifferConfig(BottleneckConfig):
    sublayers = needs = ("after_ffn",)
