"""Sanity checks for pruning at initialization (Frankle et al., ICLR 2021), applied to final masks.

Each control keeps every matrix's kept count, so what it changes is *which* weights (or which
values) survive, never how many: a control that costs nothing shows that only the per-matrix
densities of a pruner mattered.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sparse_adapter.pruning.allocation import top_k_mask

Masks = dict[str, torch.Tensor]
Control = Callable[[Masks, Masks, dict[str, nn.Parameter], torch.Generator], Masks]


def keep(masks: Masks, scores: Masks, params: dict[str, nn.Parameter], generator: torch.Generator) -> Masks:
    return masks


def shuffle(masks: Masks, scores: Masks, params: dict[str, nn.Parameter], generator: torch.Generator) -> Masks:
    """Each matrix's mask permuted at random (seeded): same count per matrix, positions forgotten."""
    shuffled = {}
    for name, mask in masks.items():
        flat = mask.reshape(-1)
        permutation = torch.randperm(flat.numel(), generator=generator).to(flat.device)
        shuffled[name] = flat[permutation].view_as(mask)
    return shuffled


@torch.no_grad()
def reinit(masks: Masks, scores: Masks, params: dict[str, nn.Parameter], generator: torch.Generator) -> Masks:
    """Same masks; every matrix's values redrawn from its own initial values (a seeded permutation).

    Every adapter initialisation here is i.i.d. per matrix (N(0, σ), Kaiming uniform, zeros, ones),
    so a permutation of a matrix's initial values is a fresh draw from its init distribution,
    whatever the variant, without knowing which initialiser made it.
    """
    for name, parameter in params.items():
        flat = parameter.detach().reshape(-1)
        permutation = torch.randperm(flat.numel(), generator=generator).to(flat.device)
        parameter.copy_(flat[permutation].view_as(parameter))
    return masks


def invert(masks: Masks, scores: Masks, params: dict[str, nn.Parameter], generator: torch.Generator) -> Masks:
    """The lowest-scored weights of each matrix, as many as the pruner kept there: the scores'
    information reversed, the per-matrix densities unchanged."""
    return {name: top_k_mask(-scores[name].detach().float(), int(mask.sum()), generator) for name, mask in masks.items()}


CONTROLS: dict[str, Control] = {"none": keep, "shuffle": shuffle, "reinit": reinit, "invert": invert}


def apply_control(control: str, masks: Masks, scores: Masks, params: dict[str, nn.Parameter], generator: torch.Generator) -> Masks:
    return CONTROLS[control](masks, scores, params, generator)
