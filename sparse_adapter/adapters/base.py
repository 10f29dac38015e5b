"""What every adapter variant shares: its config contract and parameter bookkeeping."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
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
            train_in_fp32(model)
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


def adapter_dtype(reference: torch.Tensor) -> torch.dtype:
    """The dtype an adapter beside ``reference`` is stored in: at least fp32. Small updates to bf16 weights round
    away (PEFT's ``autocast_adapter_dtype`` upcasts for the same reason). Adapters compute in their input's dtype
    (``linear``), as autocast does: fp32 master weights, and a bf16 body's activations stay bf16, saved once."""
    return torch.promote_types(reference.dtype, torch.float32)


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` computed in ``x``'s dtype (its weights cast, gradients flowing back to them in fp32)."""
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, layer.weight.to(x.dtype), bias)


def train_in_fp32(model: nn.Module) -> None:
    """Keep every trained tensor in (at least) fp32 on a half-precision body, as mixed-precision training keeps
    master weights: trainable half-precision parameters (a task head built in the body's dtype) are upcast, and a
    head whose weights were upcast casts its input up, so its logits (and the loss) are fp32."""
    upcast = set()
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            if parameter.requires_grad and adapter_dtype(parameter) != parameter.dtype:
                parameter.data = parameter.data.to(adapter_dtype(parameter))
                upcast.add(id(module))
    if not upcast:
        return
    for module in _outermost(model, upcast):
        module.register_forward_pre_hook(_cast_inputs_to_weights, with_kwargs=True)


def _outermost(model: nn.Module, chosen: set[int]) -> list[nn.Module]:
    """The largest modules whose parameters all sit in ``chosen`` modules (ids): a head, not each of its Linears."""
    found = []

    def visit(module: nn.Module) -> None:
        holders = [m for m in module.modules() if next(m.parameters(recurse=False), None) is not None]
        if holders and all(id(m) in chosen for m in holders):
            found.append(module)
            return
        for child in module.children():
            visit(child)

    for child in model.children():
        visit(child)
    return found


def _cast_inputs_to_weights(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    dtype = next(module.parameters()).dtype

    def cast(value):
        return value.to(dtype) if torch.is_tensor(value) and value.is_floating_point() else value

    return tuple(cast(a) for a in args), {key: cast(value) for key, value in kwargs.items()}


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
