"""Prefix tuning for attentions that call transformers' attention interface (Llama, Mistral, Qwen,
GPT-2, T5): the model's own forward runs and the prefix joins at the interface call."""

from __future__ import annotations

import sys

import torch
from torch import nn

from sparse_adapter.adapters.layouts import Slice, target_path
from sparse_adapter.adapters.prefix_attention import PrefixAttention, causal_mask, extend_mask
from sparse_adapter.adapters.targets import in_features, out_features

INTERFACE = "sparse_adapter_prefix"  # the attention implementation a prefixed attention module sees
_registered = False


def register_interface() -> None:
    """Register ``INTERFACE`` with transformers' attention functions, once, on first use (not at import:
    importing this module must not load transformers' modeling code)."""
    global _registered
    if not _registered:
        from transformers.modeling_utils import AttentionInterface

        AttentionInterface.register(INTERFACE, _prefixed_attention)
        _registered = True


class PrefixedConfig:
    """A prefixed attention module's view of the model config: its attention implementation is
    ``INTERFACE``; everything else, the model's real implementation included, is read live from the
    model config (so ``set_attn_implementation``, e.g. GraSP's switch to eager, still applies)."""

    def __init__(self, config):
        self.__dict__["base"] = config

    def __getattr__(self, name):
        base = self.__dict__.get("base")
        if base is None:
            raise AttributeError(name)
        return INTERFACE if name == "_attn_implementation" else getattr(base, name)

    def __setattr__(self, name, value):
        setattr(self.__dict__["base"], name, value)


class InterfacePrefixAttention(PrefixAttention):
    """Any attention that calls transformers' attention interface (Llama, Mistral, Qwen, GPT-2, T5):
    the model's own forward runs unchanged (projections, q/k norms, RoPE, the cache update) and
    the prefix joins at the interface call: after RoPE, so it is not rotated; after the cache, so
    the cache keeps the sequence's keys only; shaped like the keys (GQA: the key/value heads);
    visible to every query under the causal mask; with zero position bias (T5: the sequence's
    relative bias is untouched)."""

    def __init__(self, attention: nn.Module, length: int, mlp_hidden: int, init_std: float, key: Slice | str):
        self._key = key
        register_interface()
        super().__init__(attention, length, mlp_hidden, init_std)
        attention.config = PrefixedConfig(attention.config)
        attention.__dict__["prefix_owner"] = self  # outside the module tree: no cycle

    def dimensions(self, attention: nn.Module) -> tuple[int, int, int, torch.Tensor]:
        module = attention.get_submodule(target_path(self._key))  # values are as wide as keys in these models
        width = out_features(module) // (self._key.parts if isinstance(self._key, Slice) else 1)
        return in_features(module), width, width, module.weight

    def forward(self, *args, **kwargs):
        register_interface()  # a module unpickled in a fresh process never ran __init__
        return self.attention(*args, **kwargs)

    def join(self, module: nn.Module, query, key, value, attention_mask, **kwargs):
        """The interface call with the prefix in front of the keys and values."""
        batch, queries, head_size = query.shape[0], query.shape[2], query.shape[-1]
        implementation = module.config.base._attn_implementation
        if attention_mask is None and getattr(module, "is_causal", False) and queries > 1:
            attention_mask = causal_mask(queries, key.shape[2], batch, query.device, query.dtype if implementation == "eager" else None)
        prefix_key, prefix_value = self.prefixes()
        as_heads = lambda t: t.reshape(1, self.length, -1, head_size).transpose(1, 2).expand(batch, -1, -1, -1)  # noqa: E731
        key = torch.cat([as_heads(prefix_key).to(key.dtype), key], dim=2)
        value = torch.cat([as_heads(prefix_value).to(value.dtype), value], dim=2)
        bias = kwargs.get("position_bias")
        if bias is not None:  # T5: the prefix's keys carry no relative position bias
            kwargs["position_bias"] = torch.cat([bias.new_zeros((*bias.shape[:-1], self.length)), bias], dim=-1)
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager)
        return interface(module, query, key, value, extend_mask(attention_mask, self.length), **kwargs)


def _prefixed_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    return module.__dict__["prefix_owner"].join(module, query, key, value, attention_mask, **kwargs)
