"""Houlsby et al. (2019): a bottleneck adapter after the attention and after the FFN sublayer."""

from dataclasses import dataclass

from sparse_adapter.adapters.base import ADAPTERS
from sparse_adapter.adapters.bottleneck import BottleneckConfig


@ADAPTERS.register("houlsby")
@dataclass
class HoulsbyConfig(BottleneckConfig):
    sublayers = ("after_attention", "after_ffn")
    # a part without an FFN of its own (BART's cross-attention) takes the attention adapter only
    needs = ("after_attention",)
