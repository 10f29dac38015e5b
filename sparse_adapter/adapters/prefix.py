"""Prefix tuning (Li & Liang, 2021): trained key/value vectors prepended in every self-attention.

The wrapper re-runs the wrapped self-attention's projections, puts ``length`` prefix keys and
values in front of the sequence's, extends the attention mask for them (prefix positions are
visible to every query; padding stays masked) and calls the same attention kernel the model is
configured with (eager or SDPA), so the prefix really enters attention.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from sparse_adapter.adapters.base import AdapterConfig, AdapterLayer, freeze_backbone
from sparse_adapter.adapters.layouts import replace_submodule, require_slot, transformer_blocks
from sparse_adapter.errors import ConfigError


def extend_mask(mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Prepend ``length`` visible key positions to a 4-D attention mask (bool: True = attend;
    float: additive, 0 = attend); ``None`` (nothing masked) stays ``None``."""
    if mask is None:
        return None
    shape = (*mask.shape[:-1], length)
    visible = torch.ones(shape, dtype=torch.bool, device=mask.device) if mask.dtype == torch.bool \
        else torch.zeros(shape, dtype=mask.dtype, device=mask.device)
    return torch.cat([visible, mask], dim=-1)


class PrefixAttention(AdapterLayer):
    """A BERT-style self-attention (``query``/``key``/``value`` Linears) with a trained prefix.

    Without reparametrisation the prefix is two (length, hidden) matrices; with ``mlp_hidden > 0``
    it is ``mlp(embedding)`` (Li & Liang's reparametrisation), which ``merge_`` folds into the plain
    matrices after training.
    """

    wrapped = ("attention",)

    def __init__(self, attention: nn.Module, length: int, mlp_hidden: int, init_std: float):
        super().__init__()
        self.attention = attention
        self.length = length
        hidden = attention.query.in_features
        reference = attention.query.weight
        factory = dict(dtype=reference.dtype, device=reference.device)
        if mlp_hidden > 0:
            self.embedding = nn.Parameter(torch.empty(length, hidden, **factory).normal_(0.0, init_std))
            self.mlp = nn.Sequential(nn.Linear(hidden, mlp_hidden), nn.Tanh(), nn.Linear(mlp_hidden, 2 * attention.key.out_features))
            self.mlp.to(**factory)
            for layer in (self.mlp[0], self.mlp[2]):
                nn.init.normal_(layer.weight, 0.0, init_std)
                nn.init.zeros_(layer.bias)
        else:
            self.prefix_key = nn.Parameter(torch.empty(length, attention.key.out_features, **factory).normal_(0.0, init_std))
            self.prefix_value = nn.Parameter(torch.empty(length, attention.value.out_features, **factory).normal_(0.0, init_std))

    @property
    def reparametrised(self) -> bool:
        return hasattr(self, "mlp")

    def prefixes(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reparametrised:
            return self.mlp(self.embedding).chunk(2, dim=-1)
        return self.prefix_key, self.prefix_value

    @torch.no_grad()
    def merge_(self) -> None:
        if not self.reparametrised:
            return
        key, value = (t.detach().clone() for t in self.prefixes())
        del self.mlp, self.embedding
        self.prefix_key = nn.Parameter(key, requires_grad=False)
        self.prefix_value = nn.Parameter(value, requires_grad=False)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        attention = self.attention
        batch = hidden_states.shape[0]
        head_size = attention.attention_head_size
        split = (*hidden_states.shape[:-1], -1, head_size)
        query = attention.query(hidden_states).view(*split).transpose(1, 2)
        key = attention.key(hidden_states).view(*split).transpose(1, 2)
        value = attention.value(hidden_states).view(*split).transpose(1, 2)
        prefix_key, prefix_value = self.prefixes()
        as_heads = lambda t: t.view(1, self.length, -1, head_size).transpose(1, 2).expand(batch, -1, -1, -1)  # noqa: E731
        key = torch.cat([as_heads(prefix_key).to(key.dtype), key], dim=2)
        value = torch.cat([as_heads(prefix_value).to(value.dtype), value], dim=2)
        eager = getattr(sys.modules[type(attention).__module__], "eager_attention_forward", None)
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager)
        for unused in ("cache", "past_key_values", "encoder_hidden_states"):  # self-attention of an encoder only
            kwargs.pop(unused, None)
        output, weights = interface(
            attention, query, key, value, extend_mask(attention_mask, self.length),
            dropout=attention.dropout.p if self.training else 0.0, scaling=attention.scaling, **kwargs,
        )
        return output.reshape(*hidden_states.shape[:-1], -1).contiguous(), weights


def insert_prefix(model: nn.Module, length: int, mlp_hidden: int, init_std: float, adapter: str = "prefix") -> list[str]:
    """Wrap every block's self-attention with a prefix; return the prunable matrix names."""
    require_slot(model, "self_attention", adapter)
    prunable = []
    for block_name, block, layout in transformer_blocks(model):
        path = layout.self_attention
        if not path:
            continue
        replace_submodule(block, path, PrefixAttention(block.get_submodule(path), length, mlp_hidden, init_std))
        name = f"{block_name}.{path}"
        if mlp_hidden > 0:
            prunable += [f"{name}.embedding", f"{name}.mlp.0.weight", f"{name}.mlp.2.weight"]
        else:
            prunable += [f"{name}.prefix_key", f"{name}.prefix_value"]
    return prunable


@dataclass
class PrefixConfig(AdapterConfig):
    length: int = 30  # prefix vectors per layer (keys and values each)
    mlp_hidden: int = 0  # > 0: reparametrise the prefix through an MLP of this width (merged after training)
    init_std: float = 0.02

    size_field = "length"

    def validate(self) -> None:
        if self.length <= 0:
            raise ConfigError(f"adapter.length={self.length} must be a positive integer (prefix vectors per layer)")
        if self.mlp_hidden < 0:
            raise ConfigError(f"adapter.mlp_hidden={self.mlp_hidden} must be ≥ 0 (0: no reparametrisation)")

    def insert(self, model: nn.Module) -> list[str]:
        freeze_backbone(model)
        return insert_prefix(model, self.length, self.mlp_hidden, self.init_std)

    def merged(self) -> "PrefixConfig":
        return PrefixConfig(length=self.length, mlp_hidden=0, init_std=self.init_std)
