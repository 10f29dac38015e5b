"""What every adapter variant shares: its config contract and parameter bookkeeping."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from sparse_adapter.adapters.layouts.registry import UnknownArchitecture, check_points
from sparse_adapter.errors import ConfigError
from sparse_adapter.registry import Registry
from sparse_adapter.schema import check_ranges

INITS = ("bert", "lora")
# adapter name -> its config class; each variant registers itself: @ADAPTERS.register("houlsby") above its @dataclass
ADAPTERS = Registry("adapter config", "adapter")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


@dataclass
class AdapterConfig:
    """Base of all adapter configs; ``attach`` edits a model in place.

    ``size_field`` names the width that Large-Sparse multiplies (bottleneck or rank);
    ``None`` means the variant has no such width.
    """

    size_field = None  # class attribute, not a dataclass field
    needs: ClassVar[tuple[str, ...]] = ()  # attachment points (layout names) the variant needs in some part

    def attach(self, model: nn.Module) -> list[str]:
        """Insert the adapters and freeze the backbone; return the prunable parameter names.

        The config is recorded on the model (``model.adapter_config``) so an adapter file can
        describe itself and be attached again from the file alone.
        """
        self.validate()
        try:
            name = ADAPTERS.name_of(type(self)) if type(self) in ADAPTERS.values() else type(self).__name__
            check_points(model, self.needs, name)
            prunable = self.insert(model)
        except UnknownArchitecture as error:  # serial, parallel, prefix need the block structure
            variant = type(self).__name__.removesuffix("Config").lower()
            raise ConfigError(f"adapter={variant} on '{model.config.model_type}': {error}") from error
        model.train(model.training)  # inserted modules take the model's train/eval mode
        model.adapter_config = self
        return prunable

    def insert(self, model: nn.Module) -> list[str]:
        """Variant-specific: edit ``model`` in place; return the prunable parameter names."""
        raise NotImplementedError

    def merged(self) -> "AdapterConfig":
        """The config after ``merge_adapters`` (a reparametrised prefix becomes a plain one)."""
        return self

    def validate(self) -> None:
        """Ranges come from the fields (``sparse_adapter.schema.ranged``); choices are checked here."""
        check_ranges(self, prefix="adapter")
        init = getattr(self, "init", None)
        if init is not None and init not in INITS:
            raise ConfigError(f"adapter.init='{init}' is unknown (choose from {', '.join(INITS)})")
        activation = getattr(self, "activation", None)
        if activation is not None and activation not in ACTIVATIONS:
            raise ConfigError(f"adapter.activation='{activation}' is unknown (choose from {', '.join(ACTIVATIONS)})")


class AdapterLayer(nn.Module):
    """Base of every module an adapter inserts; accounting and saving find adapters through it.

    Parameters of the module count as adapter parameters, except those under the children named
    in ``wrapped`` (the backbone module an adapter wraps, e.g. LoRA's ``base_layer``).
    """

    wrapped: tuple[str, ...] = ()

    def adapter_parameters(self, prefix: str = ""):
        """(qualified name, parameter) of the adapter's own parameters."""
        for name, parameter in self.named_parameters(prefix=prefix):
            local = name[len(prefix) + 1 :] if prefix else name
            if local.split(".", 1)[0] not in self.wrapped:
                yield name, parameter

    def merge_(self) -> None:
        """Fold training-time reparametrisations away (no-op unless a variant has one)."""

    def flow_input(self) -> int | None:
        """The width of the input SynFlow feeds this module (all ones); None: no input path to score
        data-free (a prefix, an IA³ scale, a fusion layer)."""
        return None


class WrapperLayer(AdapterLayer):
    """An adapter that wraps one backbone projection (``wrapped[0]``) and stands in its place:
    code that reads the projection's ``weight`` (T5's FFN checks ``wo.weight.dtype``) still finds it."""

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self, self.wrapped[0]).weight


def adapter_parameter_names(model: nn.Module) -> set[str]:
    """Names of all parameters that adapters added to ``model`` (trained or frozen)."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            names.update(name for name, _ in module.adapter_parameters(module_name))
    return names


def merge_adapters(model: nn.Module) -> None:
    """Merge every reparametrised adapter (e.g. a prefix MLP) into plain tensors, after training."""
    for module in list(model.modules()):
        if isinstance(module, AdapterLayer):
            module.merge_()
    config = getattr(model, "adapter_config", None)
    if config is not None:
        model.adapter_config = config.merged()


def freeze_backbone(model: nn.Module) -> None:
    """Freeze the pretrained body and any LM head; a task head (classifier, QA span head) stays trainable.

    Selecting the head structurally rather than by a name filter avoids the official code's bug of
    freezing a randomly initialised head.
    """
    for parameter in model.base_model.parameters():
        parameter.requires_grad_(False)
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if lm_head is not None:  # a language-model head is pretrained (vocab × hidden), tied or not: part of the backbone
        lm_head.requires_grad_(False)


def init_linear(layer: nn.Linear, std: float, zero: bool = False) -> None:
    with torch.no_grad():
        if zero:
            layer.weight.zero_()
        else:
            layer.weight.normal_(0.0, std)
        if layer.bias is not None:
            layer.bias.zero_()


def kaiming_uniform(weight: torch.Tensor) -> None:
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
