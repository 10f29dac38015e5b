"""Trained-parameter accounting in the paper's terms (#Param as % of the backbone)."""

from __future__ import annotations

from torch import nn

from sparse_adapter.adapters.base import adapter_parameter_names
from sparse_adapter.pruning.masks import MaskSet


def parameter_report(model: nn.Module, prunable: list[str], masks: MaskSet | None) -> dict:
    """Counts of adapter weights kept/total, trained parameters, and #Param % of the backbone.

    The backbone is the pretrained body (``model.base_model``) without the inserted adapters; the
    paper's #Param counts trained adapter parameters (kept weights, biases) and leaves out the
    task head, which every method trains. Full fine-tuning counts the whole body.
    """
    named = dict(model.named_parameters())
    body = {id(p) for p in model.base_model.parameters()}  # structural: T5ForConditionalGeneration is its own base
    in_body = {n for n, p in named.items() if id(p) in body}
    adapter_names = adapter_parameter_names(model)  # found through the adapter modules, not by name
    backbone = sum(p.numel() for n, p in named.items() if n in in_body and n not in adapter_names)
    head = sum(p.numel() for n, p in named.items() if n not in in_body and p.requires_grad)
    prunable_total = sum(named[n].numel() for n in prunable)
    prunable_kept = masks.kept() if masks is not None and len(masks) else prunable_total
    trained_body = sum(p.numel() for n, p in named.items() if n in in_body and p.requires_grad)
    trained_body += prunable_kept - prunable_total  # pruned entries are not trained
    return {
        "adapter_weights_total": prunable_total,
        "adapter_weights_kept": prunable_kept,
        "actual_sparsity": 1.0 - prunable_kept / prunable_total if prunable_total else 0.0,
        "trained_params": trained_body + head,
        "trained_params_body": trained_body,
        "head_params": head,
        "backbone_params": backbone,
        "trained_params_pct": 100.0 * trained_body / backbone,
    }

