"""Mix-and-Match (MAM, He et al., 2022): a parallel adapter on the FFN plus prefix tuning in
attention, composed from the ``parallel`` and ``prefix`` modules.

The trained-parameter budget is split equally: the prefix holds 2·length·hidden weights per layer
and the parallel adapter 2·bottleneck·hidden, so one width ``size`` (prefix length = bottleneck)
gives both parts the same number of weight entries. Large-Sparse (``large_sparse=k``) scales
``size``, hence both parts; sparsity applies to both parts' matrices in one ranking. With
``mlp_hidden > 0`` the prefix trains through an MLP (more parameters while training, counted as
such in the summary); merged after training it holds 2·size·hidden per layer again.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from sparse_adapter.adapters.base import ADAPTERS, AdapterConfig, freeze_backbone
from sparse_adapter.adapters.parallel import insert_parallel
from sparse_adapter.adapters.prefix import insert_prefix
from sparse_adapter.schema import ranged


@ADAPTERS.register("mam")
@dataclass
class MAMConfig(AdapterConfig):
    size: int = ranged(30, ge=1)  # prefix length and parallel bottleneck alike (equal weight budgets)
    scaling: float = 4.0  # parallel adapter's s
    activation: str = "relu"
    mlp_hidden: int = ranged(0, ge=0)  # prefix reparametrisation width (0: off)
    dropout: float = ranged(0.0, ge=0.0, lt=1.0)
    init: str = "bert"
    init_std: float = ranged(0.02, gt=0.0)

    size_field = "size"

    def insert(self, model: nn.Module) -> list[str]:
        freeze_backbone(model)
        prefix = insert_prefix(model, self.size, self.mlp_hidden, self.init_std, adapter="mam")
        parallel = insert_parallel(model, self.size, self.scaling, self.activation, self.dropout, self.init, self.init_std, adapter="mam")
        return prefix + parallel

    def merged(self) -> "MAMConfig":
        return MAMConfig(**{**vars(self), "mlp_hidden": 0})
