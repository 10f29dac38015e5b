"""Pfeiffer et al. (2021): one bottleneck adapter per block, after the FFN sublayer only."""

from dataclasses import dataclass

from sparse_adapter.adapters.bottleneck import BottleneckConfig


@dataclass
class PfeifferConfig(BottleneckConfig):
    sublayers = ("after_ffn",)
