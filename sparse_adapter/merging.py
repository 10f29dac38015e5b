"""What merging an adapter into the frozen weights does to its sparsity, measured when a user merges.

A LoRA merges as W' = W + ΔW with ΔW = (alpha / r)·B·A. Pruned factors do not make ΔW sparse: ΔW_ij is zero only
when no k keeps both B_ik and A_kj, so at factor densities d_B, d_A and rank r about (1 - d_B·d_A)^r of ΔW stays
zero (d = 0.5, r = 8: 10%); the merged model is a dense one. IA³ merges into a scaling of W's rows (keys, values)
or columns (a feedforward input): a pruned entry (0) zeroes that whole row or column. Serial and parallel
bottleneck adapters put a nonlinearity between their two matrices, and a prefix adds keys rather than weights:
none of them merges into W.

``merge_lora(model)`` merges our LoRA and ``peft_delta_densities(model)`` measures a PEFT LoRA's ΔW before
``merge_and_unload`` (``merge_peft_lora`` does both); each returns ΔW's density per module, logs it, and warns
when pruned factors were merged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from sparse_adapter.adapters.layouts import replace_submodule
from sparse_adapter.adapters.lora import LoRALinear

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergedDelta:
    """One merged module: the non-zero fraction of ΔW = B·A (over the output channels the LoRA writes: all but
    a fused projection's untouched slices), and the kept fraction of its two factors."""

    density: float
    factor_density: float
    shape: tuple[int, ...]


def measured(delta: torch.Tensor, factors: tuple[torch.Tensor, ...]) -> MergedDelta:
    kept = sum(int(torch.count_nonzero(f)) for f in factors)
    return MergedDelta(density=float(torch.count_nonzero(delta)) / delta.numel(),
                       factor_density=kept / sum(f.numel() for f in factors), shape=tuple(delta.shape))


def report(deltas: dict[str, MergedDelta], what: str) -> None:
    """Each module's densities (info), and one warning when pruned factors were merged: the sparsity is gone."""
    for name, delta in deltas.items():
        log.info("%s: %s ΔW density %.4f (factors kept %.4f)", what, name, delta.density, delta.factor_density)
    pruned = [d for d in deltas.values() if d.factor_density < 1]
    if pruned:
        kept = sum(d.factor_density for d in pruned) / len(pruned)
        log.warning("%s: %d of %d merged modules had pruned factors (kept %.3f on average); their update ΔW = B·A "
                    "has density %.3f to %.3f, and the merged weights W + ΔW are dense: keep the adapter file for "
                    "sparse storage", what, len(pruned), len(deltas), kept, min(d.density for d in pruned),
                    max(d.density for d in pruned))


@torch.no_grad()
def merge_lora(model: nn.Module) -> dict[str, MergedDelta]:
    """Add every LoRA of ours into its frozen weight (W += ΔW), put the plain projection back in its place, and
    return ΔW's density per module (also logged; a warning when the merge is denser than the pruned factors).
    The model then has no LoRA parameters, so its masks no longer apply: save the adapter before merging."""
    deltas = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoRALinear):
            continue
        delta = module.delta_weight()
        weight = module.base_layer.weight
        weight.add_(delta.to(weight.dtype))
        replace_submodule(model, name, module.base_layer)
        deltas[name] = measured(module.lora_B @ module.lora_A, (module.lora_A, module.lora_B))  # the rows it writes
    if deltas and getattr(model, "adapter_config", None) is not None:
        del model.adapter_config  # nothing left to save as an adapter
    report(deltas, "merge_lora")
    return deltas


@torch.no_grad()
def peft_delta_densities(model: nn.Module, adapter: str | None = None) -> dict[str, MergedDelta]:
    """ΔW's density per LoRA module of a PEFT model (PEFT's own ``get_delta_weight``), as ``merge_and_unload``
    would add it: read it before merging a pruned LoRA (also logged)."""
    from peft.tuners.lora import LoraLayer

    adapter = adapter or getattr(model, "active_adapter", "default")
    deltas = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter in getattr(module, "lora_A", {}):
            delta = module.get_delta_weight(adapter)
            deltas[name] = measured(delta, (module.lora_A[adapter].weight, module.lora_B[adapter].weight))
    report(deltas, "peft_delta_densities")
    return deltas


def merge_peft_lora(model: nn.Module, adapter: str | None = None) -> tuple[nn.Module, dict[str, MergedDelta]]:
    """(``model.merge_and_unload()``, ΔW's density per module measured just before it)."""
    deltas = peft_delta_densities(model, adapter)
    return model.merge_and_unload(adapter_names=[adapter] if adapter else None), deltas
