"""Exact-k selection and the allocations (global, layer, Erdős–Rényi)."""

import math

import pytest
import torch

from sparse_adapter.errors import ConfigError
from sparse_adapter.pruning import erdos_renyi_densities, kept_count, select, top_k_mask


def scores_for(shapes, seed=0, ties=False):
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.zeros(shape) if ties else torch.rand(shape, generator=generator)
        for name, shape in shapes.items()
    }


SHAPES = {"a.down": (16, 48), "a.up": (48, 16), "lora.A": (4, 48), "lora.B": (48, 4), "odd": (7, 13)}


@pytest.mark.parametrize("scope", ["global", "layer", "er"])
@pytest.mark.parametrize("sparsity", [0.0, 0.2, 0.4, 0.5, 0.6, 2 / 3, 0.75, 0.8, 0.99])
@pytest.mark.parametrize("ties", [False, True])
def test_kept_count_is_exact(scope, sparsity, ties):
    scores = scores_for(SHAPES, ties=ties)
    masks = select(scores, sparsity, scope, torch.Generator().manual_seed(0))
    total = sum(math.prod(s) for s in SHAPES.values())
    assert sum(int(m.sum()) for m in masks.values()) == kept_count(total, sparsity)
    assert all(m.dtype == torch.bool and m.shape == scores[n].shape for n, m in masks.items())


def test_kept_count_rounds_half_up():
    assert kept_count(10, 0.25) == 8  # 7.5 -> 8
    assert kept_count(3, 0.5) == 2  # 1.5 -> 2
    assert kept_count(100, 0.4) == 60


def test_global_keeps_the_highest_scores():
    scores = {"x": torch.arange(10.0).view(2, 5), "y": torch.arange(10.0, 20.0).view(5, 2)}
    masks = select(scores, 0.7, "global", torch.Generator().manual_seed(0))
    assert not masks["x"].any()
    assert masks["y"].view(-1).tolist() == [False] * 4 + [True] * 6


def test_ties_are_broken_exactly_and_reproducibly():
    scores = torch.tensor([3.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    first = top_k_mask(scores, 3, torch.Generator().manual_seed(5))
    again = top_k_mask(scores, 3, torch.Generator().manual_seed(5))
    assert int(first.sum()) == 3 and first[0] and not first[5]
    assert torch.equal(first, again)
    assert int(first[1:5].sum()) == 2


def test_layer_scope_gives_every_matrix_the_same_density():
    masks = select(scores_for(SHAPES), 0.4, "layer", torch.Generator().manual_seed(0))
    for name, mask in masks.items():
        assert abs(mask.float().mean().item() - 0.6) <= 1.0 / mask.numel() + 1e-9, name


def test_er_densities_follow_the_formula():
    shapes = {"down": (16, 48), "up": (48, 16), "A": (4, 48), "B": (48, 4)}
    sparsity = 0.9
    raw = {n: (a + b) / (a * b) for n, (a, b) in shapes.items()}
    total = sum(a * b for a, b in shapes.values())
    epsilon = (1 - sparsity) * total / sum(raw[n] * a * b for n, (a, b) in shapes.items())
    densities = erdos_renyi_densities(shapes, sparsity)
    for name in shapes:
        assert densities[name] == pytest.approx(epsilon * raw[name])
    assert densities["A"] > densities["down"]  # the thin LoRA factor keeps more


def test_er_keeps_overfull_layers_dense_and_total_exact():
    shapes = {"small": (2, 2), "big": (64, 64)}
    sparsity = 0.5
    densities = erdos_renyi_densities(shapes, sparsity)
    assert densities["small"] == 1.0
    budget = (1 - sparsity) * (4 + 4096)
    assert densities["big"] == pytest.approx((budget - 4) / 4096)
    masks = select(scores_for(shapes), sparsity, "er", torch.Generator().manual_seed(0))
    assert bool(masks["small"].all())
    assert int(masks["small"].sum() + masks["big"].sum()) == kept_count(4100, sparsity)


def test_unknown_scope_is_a_config_error():
    with pytest.raises(ConfigError, match="pruner.scope"):
        select(scores_for(SHAPES), 0.4, "blockwise", torch.Generator())


@pytest.mark.parametrize("sparsity", [0.4, 0.75, 0.9])
def test_min_density_keeps_a_floor_in_every_matrix_and_the_total_exact(sparsity):
    scores = scores_for(SHAPES)
    scores["lora.B"] = torch.zeros(SHAPES["lora.B"])  # a zero-init factor: all ties, lowest scores
    plain = select(scores, sparsity, "global", torch.Generator().manual_seed(0))
    assert int(plain["lora.B"].sum()) == 0  # the global ranking empties it (layer collapse)
    masks = select(scores, sparsity, "global", torch.Generator().manual_seed(0), min_density=0.05)
    total = sum(math.prod(s) for s in SHAPES.values())
    assert sum(int(m.sum()) for m in masks.values()) == kept_count(total, sparsity)
    for name, shape in SHAPES.items():
        assert int(masks[name].sum()) >= math.ceil(0.05 * math.prod(shape)), name
    # beyond the floors one global ranking decides: in a matrix holding more than its floor, the
    # lowest kept score beats every pruned score anywhere
    above = [n for n, s in SHAPES.items() if int(masks[n].sum()) > math.ceil(0.05 * math.prod(s))]
    assert above
    lowest_kept = min(float(scores[n][masks[n]].min()) for n in above)
    highest_pruned = max(float(scores[n][~masks[n]].max()) for n in SHAPES if bool((~masks[n]).any()))
    assert lowest_kept >= highest_pruned


def test_min_density_beyond_the_budget_is_a_config_error():
    with pytest.raises(ConfigError, match="pruner.min_density"):
        select(scores_for(SHAPES), 0.9, "global", torch.Generator().manual_seed(0), min_density=0.5)


def test_pruner_config_refuses_min_density_outside_its_range_or_scope():
    from sparse_adapter.pruning import PrunerConfig

    with pytest.raises(ConfigError, match="pruner.min_density"):
        PrunerConfig("snip", min_density=0.7).validate(0.4)
    with pytest.raises(ConfigError, match="pruner.min_density"):
        PrunerConfig("snip", scope="layer", min_density=0.1).validate(0.4)
