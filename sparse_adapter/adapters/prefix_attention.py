"""Prefix-tuning attention wrappers that re-run their attention's projections: BERT-style
self-attention and BART's attention (self, causal decoder, cross), plus the mask helpers."""

from __future__ import annotations

import sys

import torch
from torch import nn

from sparse_adapter.adapters.base import AdapterLayer, adapter_dtype


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
        hidden, key_width, value_width, reference = self.dimensions(attention)
        self.prefix_widths = (key_width, value_width)
        factory = dict(dtype=adapter_dtype(reference), device=reference.device)
        if mlp_hidden > 0:
            self.embedding = nn.Parameter(torch.empty(length, hidden, **factory).normal_(0.0, init_std))
            self.mlp = nn.Sequential(nn.Linear(hidden, mlp_hidden), nn.Tanh(), nn.Linear(mlp_hidden, key_width + value_width))
            self.mlp.to(**factory)
            for layer in (self.mlp[0], self.mlp[2]):
                nn.init.normal_(layer.weight, 0.0, init_std)
                nn.init.zeros_(layer.bias)
        else:
            self.prefix_key = nn.Parameter(torch.empty(length, key_width, **factory).normal_(0.0, init_std))
            self.prefix_value = nn.Parameter(torch.empty(length, value_width, **factory).normal_(0.0, init_std))

    def dimensions(self, attention: nn.Module) -> tuple[int, int, int, torch.Tensor]:
        """(hidden size, key width, value width, a weight giving dtype and device)."""
        return attention.query.in_features, attention.key.out_features, attention.value.out_features, attention.query.weight

    @property
    def reparametrised(self) -> bool:
        return hasattr(self, "mlp")

    def prefixes(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reparametrised:
            return self.mlp(self.embedding).split([self.prefix_widths[0], self.prefix_widths[1]], dim=-1)
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
        split = (*hidden_states.shape[:-1], -1, attention.attention_head_size)
        query = attention.query(hidden_states).view(*split).transpose(1, 2)
        key = attention.key(hidden_states).view(*split).transpose(1, 2)
        value = attention.value(hidden_states).view(*split).transpose(1, 2)
        for unused in ("cache", "past_key_values", "encoder_hidden_states"):  # self-attention of an encoder only
            kwargs.pop(unused, None)
        output, weights = self.attend(query, key, value, attention_mask, attention.dropout.p, **kwargs)
        return output.reshape(*hidden_states.shape[:-1], -1).contiguous(), weights

    def attend(self, query, key, value, attention_mask, dropout: float, **kwargs):
        """The prefix's keys and values in front of the sequence's, then the model's own attention
        function (eager, SDPA or flash, as the model is configured). Tensors are (batch, heads, length, head size)."""
        attention = self.attention
        batch, head_size = query.shape[0], query.shape[-1]
        prefix_key, prefix_value = self.prefixes()
        as_heads = lambda t: t.view(1, self.length, -1, head_size).transpose(1, 2).expand(batch, -1, -1, -1)  # noqa: E731
        key = torch.cat([as_heads(prefix_key).to(key.dtype), key], dim=2)
        value = torch.cat([as_heads(prefix_value).to(value.dtype), value], dim=2)
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        eager = getattr(sys.modules[type(attention).__module__], "eager_attention_forward", None)
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager)
        return interface(attention, query, key, value, extend_mask(attention_mask, self.length),
                         dropout=dropout if self.training else 0.0, scaling=attention.scaling, **kwargs)


class BartPrefixAttention(PrefixAttention):
    """A BART attention (``q_proj``/``k_proj``/``v_proj``/``out_proj``) with a trained prefix: encoder
    self-attention, decoder self-attention (the prefix is visible to every position; causality
    holds among the sequence's own keys) and cross-attention (prefix before the encoder's keys).

    The cache keeps the sequence's keys and values only; the prefix is put in front on every call.
    """

    def dimensions(self, attention: nn.Module) -> tuple[int, int, int, torch.Tensor]:
        return attention.q_proj.in_features, attention.k_proj.out_features, attention.v_proj.out_features, attention.q_proj.weight

    def forward(self, hidden_states: torch.Tensor, key_value_states: torch.Tensor | None = None, cache=None,
                attention_mask: torch.Tensor | None = None, **kwargs):
        from transformers.cache_utils import EncoderDecoderCache

        attention = self.attention
        batch, length = hidden_states.shape[:2]
        head_size = attention.head_dim
        query = attention.q_proj(hidden_states).view(batch, length, -1, head_size).transpose(1, 2)
        cross = key_value_states is not None
        layered = isinstance(cache, EncoderDecoderCache)
        current = (cache.cross_attention_cache if cross else cache.self_attention_cache) if layered else cache
        if cross and layered and cache.is_updated.get(attention.layer_idx):
            key, value = current.layers[attention.layer_idx].keys, current.layers[attention.layer_idx].values
        else:
            states = key_value_states if cross else hidden_states
            key = attention.k_proj(states).view(batch, -1, attention.num_heads, head_size).transpose(1, 2)
            value = attention.v_proj(states).view(batch, -1, attention.num_heads, head_size).transpose(1, 2)
            if cache is not None:
                key, value = current.update(key, value, attention.layer_idx, kwargs=kwargs)
                if cross and layered:
                    cache.is_updated[attention.layer_idx] = True
        eager_mode = attention.config._attn_implementation == "eager"
        if attention_mask is None and not cross and attention.is_causal and length > 1:
            attention_mask = causal_mask(length, key.shape[2], batch, query.device, query.dtype if eager_mode else None)
        output, weights = self.attend(query, key, value, attention_mask, attention.dropout, **kwargs)
        return attention.out_proj(output.reshape(batch, length, -1).contiguous()), weights


def causal_mask(length: int, keys: int, batch: int, device, additive_dtype=None) -> torch.Tensor:
    """A 4-D causal mask for ``length`` queries that are the last of ``keys`` positions (True = attend,
    or additive 0 / -inf for eager attention): what SDPA's ``is_causal`` would do without a prefix."""
    positions = torch.arange(keys, device=device)
    allowed = positions[None, :] <= (keys - length + torch.arange(length, device=device))[:, None]
    allowed = allowed[None, None].expand(batch, 1, length, keys)
    if additive_dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=additive_dtype, device=device).masked_fill(~allowed, torch.finfo(additive_dtype).min)
