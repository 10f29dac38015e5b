"""How many weights each matrix keeps, and exactly which ones.

An allocation turns a total budget into per-matrix counts (or one global ranking); selection
takes exactly that many by score. Exactness matters: Algorithm 1's ``z >= z_s`` keeps every tie
and misses the budget, and ``score <= threshold`` (the official code) over-prunes.
"""

from __future__ import annotations

import math

import torch

from sparse_adapter.errors import ConfigError
from sparse_adapter.registry import Registry



def kept_count(total: int, sparsity: float) -> int:
    """round((1 - s) · N), halves rounded up, so every scope keeps the same number."""
    return int(math.floor((1.0 - sparsity) * total + 0.5))


def top_k_mask(scores: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Boolean mask keeping exactly ``k`` highest scores; ties broken by a seeded permutation.

    A random (not positional) tie-break spreads the kept weights of an all-tie matrix (a
    zero-initialised factor) over the matrix instead of keeping its first rows.
    """
    flat = scores.reshape(-1)
    permutation = torch.randperm(flat.numel(), generator=generator).to(flat.device)
    order = torch.sort(flat[permutation], descending=True, stable=True).indices
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[permutation[order[:k]]] = True
    return mask.view_as(scores)


def largest_remainder(quotas: list[float], total: int, caps: list[int]) -> list[int]:
    """Integers near ``quotas`` (each ≤ its cap) that sum to exactly ``total``."""
    counts = [min(int(math.floor(q)), c) for q, c in zip(quotas, caps)]
    remainder = total - sum(counts)
    by_fraction = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - math.floor(quotas[i])), i))
    while remainder > 0:
        progressed = False
        for i in by_fraction:
            if remainder == 0:
                break
            if counts[i] < caps[i]:
                counts[i] += 1
                remainder -= 1
                progressed = True
        if not progressed:
            raise ValueError("budget exceeds the number of weights")
    return counts


def uniform_counts(shapes: dict[str, torch.Size], sparsity: float) -> dict[str, int]:
    """The same density in every matrix (a per-layer scope), total still exact."""
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    total = kept_count(sum(sizes.values()), sparsity)
    quotas = [(1.0 - sparsity) * n for n in sizes.values()]
    return dict(zip(sizes, largest_remainder(quotas, total, list(sizes.values()))))


def erdos_renyi_densities(shapes: dict[str, torch.Size], sparsity: float) -> dict[str, float]:
    """Density ∝ (n_in + n_out) / (n_in · n_out), scaled to total density 1 - s.

    Matrices whose density would exceed 1 are kept dense and the others rescaled, repeatedly,
    until no density exceeds 1 (Evci et al., 2020; Mocanu et al., 2018).
    """
    for name, shape in shapes.items():
        if len(shape) != 2:
            raise ConfigError(f"pruner.scope=er needs 2-D weights; '{name}' has shape {tuple(shape)}")
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: (shape[0] + shape[1]) / (shape[0] * shape[1]) for name, shape in shapes.items()}
    budget = (1.0 - sparsity) * sum(sizes.values())
    dense: set[str] = set()
    while True:
        sparse_names = [n for n in shapes if n not in dense]
        remaining = budget - sum(sizes[n] for n in dense)
        denominator = sum(raw[n] * sizes[n] for n in sparse_names)
        epsilon = remaining / denominator if denominator else 0.0
        newly_dense = {n for n in sparse_names if epsilon * raw[n] > 1.0}
        if not newly_dense:
            return {n: 1.0 if n in dense else epsilon * raw[n] for n in shapes}
        dense |= newly_dense


def er_counts(shapes: dict[str, torch.Size], sparsity: float) -> dict[str, int]:
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    densities = erdos_renyi_densities(shapes, sparsity)
    total = kept_count(sum(sizes.values()), sparsity)
    quotas = [densities[n] * sizes[n] for n in shapes]
    return dict(zip(shapes, largest_remainder(quotas, total, list(sizes.values()))))


def floor_counts(shapes: dict[str, torch.Size], min_density: float) -> dict[str, int]:
    """ceil(min_density · n) weights every matrix keeps whatever the ranking says (0 when off)."""
    return {name: min(math.prod(shape), math.ceil(min_density * math.prod(shape))) for name, shape in shapes.items()}


def global_masks(scores: dict[str, torch.Tensor], sparsity: float, generator: torch.Generator, min_density: float = 0.0) -> dict[str, torch.Tensor]:
    """One ranking over all matrices; with ``min_density`` each matrix first keeps its own best
    ``ceil(min_density · n)`` and the rest of the budget goes to the global ranking of what is left."""
    names = list(scores)
    flat = torch.cat([scores[n].detach().reshape(-1).float() for n in names])
    total = kept_count(flat.numel(), sparsity)
    floors = floor_counts({n: scores[n].shape for n in names}, min_density)
    if sum(floors.values()) > total:
        raise ConfigError(
            f"pruner.min_density={min_density} needs {sum(floors.values())} weights but sparsity={sparsity} keeps {total}; lower one of them"
        )
    reserved = torch.cat([top_k_mask(scores[n].detach().reshape(-1).float(), floors[n], generator) for n in names])
    rest = (~reserved).nonzero().squeeze(1)
    keep = reserved.clone()
    keep[rest[top_k_mask(flat[rest], total - int(reserved.sum()), generator)]] = True
    masks, offset = {}, 0
    for name in names:
        n = scores[name].numel()
        masks[name] = keep[offset : offset + n].view_as(scores[name])
        offset += n
    return masks


def nm_group_size(shape: torch.Size, m: int) -> str | None:
    """Why a matrix cannot be split into groups of ``m`` along its input (last) dimension, or None."""
    if shape[-1] % m:
        return f"its input dimension {shape[-1]} (shape {tuple(shape)}) is not a multiple of pruner.m={m}"
    return None


def nm_masks(scores: dict[str, torch.Tensor], n: int, m: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """N:M sparsity: in every group of ``m`` consecutive weights along the input dimension keep the
    ``n`` best (2:4 is what sparse tensor cores run). A Linear weight is (out, in), so groups run
    along rows; ties inside a group are broken by a seeded permutation, as in ``top_k_mask``."""
    masks = {}
    for name, score in scores.items():
        if (problem := nm_group_size(score.shape, m)) is not None:
            raise ConfigError(f"pruner.scope=nm: cannot group {name}: {problem}")
        groups = score.detach().float().reshape(-1, m)
        permutation = torch.argsort(torch.rand(groups.shape, generator=generator), dim=1).to(groups.device)
        order = torch.sort(torch.gather(groups, 1, permutation), dim=1, descending=True, stable=True).indices
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(1, torch.gather(permutation, 1, order[:, :n]), True)
        masks[name] = keep.view_as(score)
    return masks


def per_matrix(counts_for):
    """An allocation that gives every matrix its own count, then keeps that matrix's best."""
    def allocate(scores, sparsity, generator, **_):
        counts = counts_for({name: score.shape for name, score in scores.items()}, sparsity)
        return {name: top_k_mask(scores[name].detach().float(), counts[name], generator) for name in scores}
    return allocate


# scope -> allocation(scores, sparsity, generator, min_density=, n=, m=) -> masks; a new one registers itself:
# ALLOCATIONS.register("mine", per_matrix(my_counts)) (or any function of that signature), then pruner.scope=mine
ALLOCATIONS = Registry("allocation", "pruner.scope")
ALLOCATIONS.register("global", lambda scores, sparsity, generator, min_density=0.0, **_: global_masks(
    scores, sparsity, generator, min_density))
ALLOCATIONS.register("layer", per_matrix(uniform_counts))
ALLOCATIONS.register("er", per_matrix(er_counts))
ALLOCATIONS.register("nm", lambda scores, sparsity, generator, n=2, m=4, **_: nm_masks(scores, n, m, generator))
SCOPES = ALLOCATIONS  # the scope names (a live view: registered allocations included)


def select(
    scores: dict[str, torch.Tensor], sparsity: float, scope: str, generator: torch.Generator, min_density: float = 0.0,
    n: int = 2, m: int = 4,
) -> dict[str, torch.Tensor]:
    """Masks keeping exactly round((1 - s) · N) weights over all ``scores``, split by ``scope``.

    ``min_density`` (global scope) guards against layer collapse; the layer and ER scopes give
    every matrix a positive budget of its own already. ``n``/``m``: the N:M scope's pattern
    (``sparsity`` is then 1 - n/m, checked by ``PrunerConfig.validate``).
    """
    return ALLOCATIONS.lookup(scope)(scores, sparsity, generator, min_density=min_density, n=n, m=m)
