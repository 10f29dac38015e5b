"""Parallel adapter on the FFN (He et al., 2022, "Towards a unified view of parameter-efficient
transfer learning"): h ← FFN(x) + s · up(act(down(x))), computed from the FFN input x beside the
FFN, added to its output before the residual and LayerNorm."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparse_adapter.adapters.base import ADAPTERS, AdapterConfig, freeze_backbone
from sparse_adapter.adapters.bottleneck import Bottleneck
from sparse_adapter.adapters.layouts import layouts_for, replace_submodule, require_slot, transformer_blocks
from sparse_adapter.schema import ranged


class ParallelFFN(nn.Module):
    """Wraps the FFN output module ``inner(ffn_hidden, ffn_input)`` (BERT: dense, dropout, residual, LN).

    ``inner(h, x + s·A(x))`` = LN(FFN(x) + s·A(x) + x): the adapter's output joins the FFN output
    right before the residual, so a zero up-projection leaves the model exactly unchanged.
    """

    def __init__(self, inner: nn.Module, adapter: Bottleneck, scaling: float):
        super().__init__()
        self.inner = inner
        self.adapter = adapter
        self.scaling = scaling

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor, *args, **kwargs):
        return self.inner(hidden_states, input_tensor + self.scaling * self.adapter(input_tensor), *args, **kwargs)


class ParallelLinears(nn.Module):
    """For an FFN of two plain Linears (BART's fc1, fc2): wraps fc2 and adds s·A(x), where x is the
    input that fc1 saw in the same forward (``InputTap`` hands it over); zero up-projection: unchanged."""

    def __init__(self, inner: nn.Linear, adapter: Bottleneck, scaling: float):
        super().__init__()
        self.inner = inner
        self.adapter = adapter
        self.scaling = scaling
        self.ffn_input: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        ffn_input, self.ffn_input = self.ffn_input, None  # never reuse a stale input
        return self.inner(hidden_states, *args, **kwargs) + self.scaling * self.adapter(ffn_input)


class ParallelModule(nn.Module):
    """For an FFN that is one module called with its input (Llama's mlp, GPT-2's mlp, T5's
    DenseReluDense): FFN(x) + s·A(x), before the residual add; zero up-projection: unchanged."""

    def __init__(self, inner: nn.Module, adapter: Bottleneck, scaling: float):
        super().__init__()
        self.inner = inner
        self.adapter = adapter
        self.scaling = scaling

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return self.inner(hidden_states, *args, **kwargs) + self.scaling * self.adapter(hidden_states)


class InputTap(nn.Module):
    """Wraps fc1 and passes its input to the block's ``ParallelLinears`` (held outside the module
    tree, so its parameters are not registered twice)."""

    def __init__(self, inner: nn.Linear, target: ParallelLinears):
        super().__init__()
        self.inner = inner
        self.__dict__["target"] = target

    def forward(self, x: torch.Tensor, *args, **kwargs):
        self.target.ffn_input = x
        return self.inner(x, *args, **kwargs)


def insert_parallel(model: nn.Module, bottleneck: int, scaling: float, activation: str, dropout: float, init: str,
                    init_std: float, adapter: str = "parallel") -> list[str]:
    """Put a parallel adapter beside every block's FFN; return the prunable weight names."""
    layouts = layouts_for(model).values()
    if not any(layout.ffn_output or layout.ffn_linears or layout.ffn_module for layout in layouts):
        require_slot(model, "ffn_output", adapter)
    hidden = model.config.hidden_size
    prunable = []
    for block_name, block, layout in transformer_blocks(model):
        module = Bottleneck(hidden, bottleneck, activation, dropout, init, init_std, residual=False)
        if layout.ffn_output:
            path = layout.ffn_output
            replace_submodule(block, path, ParallelFFN(block.get_submodule(path), module, scaling))
        elif layout.ffn_module:
            path = layout.ffn_module
            replace_submodule(block, path, ParallelModule(block.get_submodule(path), module, scaling))
        elif layout.ffn_linears:
            first, path = layout.ffn_linears
            wrapper = ParallelLinears(block.get_submodule(path), module, scaling)
            replace_submodule(block, path, wrapper)
            replace_submodule(block, first, InputTap(block.get_submodule(first), wrapper))
        else:  # a part without FFN (BART's cross-attention)
            continue
        prunable += [f"{block_name}.{path}.adapter.down.weight", f"{block_name}.{path}.adapter.up.weight"]
    return prunable


@ADAPTERS.register("parallel")
@dataclass
class ParallelConfig(AdapterConfig):
    bottleneck: int = ranged(64, ge=1)
    scaling: float = 4.0  # s in He et al. (2022)
    activation: str = "relu"
    dropout: float = ranged(0.0, ge=0.0, lt=1.0)
    init: str = "bert"
    init_std: float = ranged(0.02, gt=0.0)

    size_field = "bottleneck"

    def insert(self, model: nn.Module) -> list[str]:
        freeze_backbone(model)
        return insert_parallel(model, self.bottleneck, self.scaling, self.activation, self.dropout, self.init, self.init_std)
