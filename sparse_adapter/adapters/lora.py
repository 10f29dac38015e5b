"""LoRA (Hu et al., 2022): a low-rank update B·A added beside frozen linear layers."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sparse_adapter.adapters.base import ADAPTERS, AdapterConfig, WrapperLayer, adapter_dtype, freeze_backbone, kaiming_uniform
from sparse_adapter.adapters.layouts import replace_submodule
from sparse_adapter.adapters.targets import in_features, is_conv1d, merged, out_features, resolve
from sparse_adapter.errors import ConfigError
from sparse_adapter.schema import ranged


class LoRALinear(WrapperLayer):
    """base(x) + scaling · B(A(dropout(x))); A is (r, in), B is (out, r) as in PEFT.

    ``base`` is an ``nn.Linear`` or a GPT-2 ``Conv1D`` (weight stored in×out: the factors are the
    same). ``channels`` restricts the update to some output features (query and value of GPT-2's
    fused ``c_attn``, as loralib's MergedLinear): B is then (len(channels), r).
    """

    wrapped = ("base_layer",)

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float, init: str, init_std: float,
                 channels: list[int] | None = None):
        super().__init__()
        self.base_layer = base
        factory = dict(dtype=adapter_dtype(base.weight), device=base.weight.device)
        self.lora_A = nn.Parameter(torch.empty(r, in_features(base), **factory))
        self.lora_B = nn.Parameter(torch.empty(len(channels) if channels else out_features(base), r, **factory))
        if channels:
            self.register_buffer("channels", torch.tensor(channels, device=base.weight.device), persistent=False)
        else:
            self.channels = None
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
        result = self.base_layer(x)
        a, b = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)  # fp32 factors computed in the body's dtype (adapter_dtype)
        update = (F.linear(F.linear(self.dropout(x), a), b) * self.scaling).to(result.dtype)
        if self.channels is None:
            return result + update
        return result.index_add(-1, self.channels, update)

    def flow_input(self) -> int:
        return self.lora_A.shape[1]

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """ΔW = scaling · B·A in the wrapped weight's own layout (Linear: out×in; Conv1D: in×out), zero outside
        ``channels``: what merging adds to the frozen weight."""
        update = (self.lora_B.float() @ self.lora_A.float()) * self.scaling
        if self.channels is not None:
            full = update.new_zeros(out_features(self.base_layer), update.shape[1])
            update = full.index_copy(0, self.channels, update)
        return update.T if is_conv1d(self.base_layer) else update


@ADAPTERS.register("lora")
@dataclass
class LoRAConfig(AdapterConfig):
    r: int = ranged(8, ge=1)
    alpha: float = ranged(16.0, gt=0.0)
    targets: list[str] = field(default_factory=lambda: ["query", "value"])
    dropout: float = ranged(0.0, ge=0.0, lt=1.0)
    init: str = "bert"
    init_std: float = ranged(0.02, gt=0.0)

    size_field = "r"

    def insert(self, model: nn.Module) -> list[str]:
        if not self.targets:
            raise ConfigError("adapter.targets=[]: name one or more projections (e.g. [query,value] or [q_proj,v_proj])")
        sites = merged(model, [site for found in resolve(model, list(self.targets), ("linears",)).values() for site in found])
        freeze_backbone(model)
        prunable = []
        for site in sites:
            wrapper = LoRALinear(site.module, self.r, self.alpha, self.dropout, self.init, self.init_std, site.channels)
            replace_submodule(model, site.path, wrapper)
            prunable += [f"{site.path}.lora_A", f"{site.path}.lora_B"]
        return prunable
