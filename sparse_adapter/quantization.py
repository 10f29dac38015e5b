"""Quantized backbones (QLoRA): the frozen body's Linear layers in 4-bit NF4 or 8-bit int8 (bitsandbytes).

    quantize_backbone(model, Quantization("nf4"))   # after the adapter is attached

Quantization runs after ``attach``: the adapters are created in fp32 beside fp32 layers (so adapter
files stay fp32), then every frozen projection of the body is swapped for its bitsandbytes twin,
LoRA's and IA³'s wrapped ``base_layer``/``inner`` included, as PEFT's bnb layers wrap them. What
stays full precision: every trainable tensor, the adapters' own layers, the task head (outside
``base_model``), embeddings and norms, and the modules a model keeps in fp32
(``_keep_in_fp32_modules``: T5's ``wo``, which casts its input to its weight's dtype). Quantized
weights cannot train, so a quantized backbone needs an adapter (``adapter=none`` is refused).

Gradients flow through the quantized layers to the input (bitsandbytes dequantizes in backward),
twice for GraSP, so every scorer scores through the quantized model.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from sparse_adapter.errors import ConfigError

METHODS = ("none", "nf4", "int8")
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXTRA = "pip install .[quant]"


@dataclass
class Quantization:
    """``method``: none, nf4 (4-bit NormalFloat, QLoRA) or int8 (LLM.int8 weights, no outlier split);
    ``compute_dtype``: the dtype NF4 matmuls run in (float32 on CPUs without bf16 units: bf16 there
    costs 16× an fp32 step); ``double_quant``: quantize NF4's block scales too (QLoRA's 0.4 bit/param)."""

    method: str = "none"
    compute_dtype: str = "float32"
    double_quant: bool = False

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"backbone.quantization={self.method!r} is unknown (choose from {', '.join(METHODS)})")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"backbone.compute_dtype={self.compute_dtype!r} is unknown (choose from {', '.join(COMPUTE_DTYPES)})")

    def describe(self) -> dict:
        """What the summary records."""
        if not self.enabled:
            return {"method": "none"}
        described = {"method": self.method}
        if self.method == "nf4":
            described.update(compute_dtype=self.compute_dtype, double_quant=self.double_quant)
        return described


def of_backbone(backbone) -> Quantization:
    """The quantization a backbone spec asks for (``backbone.quantization``, ``compute_dtype``, ``double_quant``)."""
    quantization = Quantization(getattr(backbone, "quantization", "none") or "none",
                                getattr(backbone, "compute_dtype", "float32"), bool(getattr(backbone, "double_quant", False)))
    quantization.validate()
    return quantization


def bitsandbytes(method: str = "nf4"):
    """The bitsandbytes module, or one error line naming the extra that installs it."""
    try:
        return importlib.import_module("bitsandbytes")
    except ImportError as error:
        raise ConfigError(f"backbone.quantization={method} needs bitsandbytes, which is not installed: {EXTRA}") from error


def is_quantized(module: nn.Module) -> bool:
    """A bitsandbytes 4-bit or 8-bit linear layer (ours or one transformers/PEFT built)."""
    return type(module).__name__ in ("Linear4bit", "Linear8bitLt", "LinearNF4", "LinearFP4") and \
        type(module).__module__.startswith("bitsandbytes")


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: module for name, module in model.named_modules() if is_quantized(module)}


def _kept_in_fp32(model: nn.Module) -> tuple[str, ...]:
    kept = []
    for module in model.modules():
        kept += list(getattr(module, "_keep_in_fp32_modules", None) or [])
    return tuple(dict.fromkeys(kept))


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Frozen Linear/Conv1D layers of the body that no adapter owns and the model does not keep in fp32."""
    from sparse_adapter.adapters.base import adapter_parameter_names

    body = getattr(model, "base_model", model)
    body_ids = {id(m) for m in body.modules()}
    owned = adapter_parameter_names(model)
    fp32 = _kept_in_fp32(model)
    found = []
    for name, module in model.named_modules():
        if id(module) not in body_ids or not isinstance(module, (nn.Linear, Conv1D)) or is_quantized(module):
            continue
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        if any(f"{name}.{p}" in owned for p, _ in module.named_parameters(recurse=False)):
            continue
        if any(part in fp32 for part in name.split(".")):
            continue
        found.append((name, module))
    return found


def _replacement(module: nn.Module, quantization: Quantization, bnb) -> nn.Module:
    weight = module.weight.detach()
    if isinstance(module, Conv1D):  # GPT-2 stores in×out: a Linear holds the transpose
        weight = weight.t()
    out_features, in_features = weight.shape
    bias = module.bias is not None
    device = weight.device
    if quantization.method == "nf4":
        layer = bnb.nn.Linear4bit(in_features, out_features, bias=bias, compute_dtype=COMPUTE_DTYPES[quantization.compute_dtype],
                                  compress_statistics=quantization.double_quant, quant_type="nf4", device="meta")
        layer.weight = bnb.nn.Params4bit(weight.float().contiguous().clone(), requires_grad=False,
                                         compress_statistics=quantization.double_quant, quant_type="nf4")
    else:
        layer = bnb.nn.Linear8bitLt(in_features, out_features, bias=bias, has_fp16_weights=False, threshold=0.0, device="meta")
        layer.weight = bnb.nn.Int8Params(weight.contiguous().clone(), requires_grad=False, has_fp16_weights=False)
    if bias:
        layer.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=False)
    layer = layer.to(device)  # bitsandbytes quantizes on the move to a device (CPU included)
    if hasattr(layer, "support_avx512bf16_for_cpu"):
        # bitsandbytes' CPU inference path repacks the weight in place the first time an eval-mode layer sees an input
        # without grad (scoring, validation): it fails for widths under its block size and leaves the weight in another
        # layout for training; one layout for every pass keeps scores and steps the same in train and eval mode
        layer.support_avx512bf16_for_cpu = False
    layer.train(module.training)
    return layer


def quantize_backbone(model: nn.Module, quantization: Quantization) -> int:
    """Swap the frozen body's projections for quantized ones in place; return how many were swapped.

    Call it after the adapter is attached (see the module docstring). Each fp32 weight is freed as
    soon as its quantized twin exists, so the peak is one layer above the quantized model's size.
    """
    quantization.validate()
    if not quantization.enabled:
        return 0
    bnb = bitsandbytes(quantization.method)
    candidates = _candidates(model)
    if not candidates:
        raise ConfigError(f"backbone.quantization={quantization.method}: the model has no frozen Linear layer to quantize")
    for name, module in candidates:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _replacement(module, quantization, bnb))
        del module
    model.quantization = quantization
    # the flags transformers sets when it loads a model in 4/8 bits: PEFT reads them to pick its bnb LoRA layers
    setattr(model, "is_loaded_in_4bit" if quantization.method == "nf4" else "is_loaded_in_8bit", True)
    return len(candidates)


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (quantized weights at their packed size)."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    for module in quantized_layers(model).values():  # NF4 block scales live in the quant state, not in buffers
        state = getattr(module.weight, "quant_state", None)
        if state is not None:
            total += sum(t.numel() * t.element_size() for t in _state_tensors(state))
        scales = getattr(module.weight, "SCB", None)
        if scales is not None:
            total += scales.numel() * scales.element_size()
    return total


def _state_tensors(state) -> list[torch.Tensor]:
    tensors = [t for t in (getattr(state, "absmax", None), getattr(state, "code", None)) if torch.is_tensor(t)]
    nested = getattr(state, "state2", None)
    if nested is not None:
        tensors += _state_tensors(nested)
    return tensors


def config_problem(cfg: dict) -> str | None:
    """The one-line problem of a composed config's quantization settings, before anything loads."""
    backbone = cfg.get("backbone") or {}
    method = backbone.get("quantization", "none") or "none"
    if method == "none":
        return None
    try:
        Quantization(method, backbone.get("compute_dtype", "float32"), bool(backbone.get("double_quant", False))).validate()
    except ConfigError as error:
        return str(error)
    if str((cfg.get("adapter") or {}).get("_target_", "")).endswith("FullFineTuningConfig"):
        return (f"backbone.quantization={method} with adapter=none: quantized weights do not train; "
                "pick an adapter (adapter=lora, ia3, houlsby, ...) or backbone.quantization=none")
    try:
        bitsandbytes(method)
    except ConfigError as error:
        return str(error)
    return None


def drop_quantization_state(model: nn.Module, state_dict: dict, prefix: str = "") -> int:
    """Remove from a checkpoint's ``state_dict`` the quantization state bitsandbytes writes beside each quantized
    weight (NF4 ``absmax``/``quant_map``/``quant_state``, int8 ``SCB``/``weight_format``), which its layers do not
    read back; the packed weights themselves load as they are. The state is a function of the frozen weights, so
    the rebuilt model already holds it. Returns how many entries were dropped."""
    kept = {f"{prefix}{name}.{suffix}" for name in quantized_layers(model) for suffix in ("weight", "bias")}
    layers = tuple(f"{prefix}{name}." for name in quantized_layers(model))
    extra = [key for key in state_dict if key.startswith(layers) and key not in kept]
    for key in extra:
        del state_dict[key]
    return len(extra)
