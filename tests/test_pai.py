"""Pruning at initialization, complete: SynFlow, iterative rounds, sanity-check controls and N:M masks.

SynFlow is checked against |θ ⊙ ∂R/∂θ| worked out by hand on a linear chain; every round of an
iterative schedule against its exact count; each control against what it must keep and change.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sparse_adapter.adapters.base import AdapterLayer
from sparse_adapter.errors import ConfigError
from sparse_adapter.pruning import SCORERS, PrunerConfig, kept_count, prune, schedule, select
from sparse_adapter.pruning import pruner as pruner_module
from paper.runs import load_summaries, row_key
from tests.cli_support import FAST, call_train, error_lines
from tests.conftest import tiny_model
from tests.test_scorers import float64  # noqa: F401 (autouse: every reference here is computed in float64)


class Chain(AdapterLayer):
    """x → W3 W2 W1 x: the linear chain SynFlow's closed form is written for."""

    def __init__(self, widths=(4, 5, 3, 2), seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(widths, widths[1:]))
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def flow_input(self) -> int:
        return self.layers[0].in_features


def chain_params(chain: Chain) -> dict[str, nn.Parameter]:
    return {f"layers.{i}.weight": layer.weight for i, layer in enumerate(chain.layers)}


def test_synflow_equals_the_closed_form_on_a_linear_chain():
    chain = Chain()
    before = [layer.weight.detach().clone() for layer in chain.layers]
    scores = SCORERS["synflow"](params=chain_params(chain), model=chain)
    A1, A2, A3 = (w.abs() for w in before)
    ones_in, ones_out = torch.ones(4), torch.ones(2)
    # R = 1ᵀ|W3||W2||W1|1, so ∂R/∂|W_k|_ij = (what flows into row i from the output side) · (what reaches column j from the input)
    by_hand = {
        "layers.0.weight": A1 * torch.outer(A2.T @ A3.T @ ones_out, ones_in),
        "layers.1.weight": A2 * torch.outer(A3.T @ ones_out, A1 @ ones_in),
        "layers.2.weight": A3 * torch.outer(ones_out, A2 @ A1 @ ones_in),
    }
    for name, expected in by_hand.items():
        torch.testing.assert_close(scores[name], expected)
    for layer, original in zip(chain.layers, before):  # signs come back: the chain is untouched
        assert torch.equal(layer.weight.detach(), original) and layer.weight.grad is None


def test_synflow_feeds_our_adapters_and_refuses_those_without_an_input_path():
    from sparse_adapter import attach_adapter

    model, _ = tiny_model()
    prunable = attach_adapter(model, "houlsby", bottleneck=8)
    params = {n: p for n, p in model.named_parameters() if n in prunable}
    masks = prune(params, 0.5, PrunerConfig("synflow", iterations=3), model=model)
    total = sum(p.numel() for p in params.values())
    assert sum(int(m.sum()) for m in masks.values()) == kept_count(total, 0.5)

    prefixed, _ = tiny_model()
    prunable = attach_adapter(prefixed, "prefix", length=4)
    params = {n: p for n, p in prefixed.named_parameters() if n in prunable}
    with pytest.raises(ConfigError, match="synflow.*no adapter module with an input path"):
        PrunerConfig("synflow").check_model(prefixed, params)


def test_synflow_defaults_to_100_rounds_and_data_driven_scorers_to_one():
    assert PrunerConfig("synflow").rounds == 100 and PrunerConfig("snip").rounds == 1
    assert PrunerConfig("snip", iterations=10).rounds == 10


def test_the_schedule_is_the_official_exponential_one():
    s, n = 0.8, 4
    assert schedule(s, 1) == [s]
    for i, si in enumerate(schedule(s, n)):
        assert si == pytest.approx(1 - 0.2 ** ((i + 1) / n))
    assert schedule(s, n)[-1] == pytest.approx(s)


def linear_problem(seed=0):
    generator = torch.Generator().manual_seed(seed)
    params = {"W1": nn.Parameter(torch.randn(6, 8, generator=generator)), "W2": nn.Parameter(torch.randn(4, 6, generator=generator))}
    batches = [(torch.randn(5, 8, generator=generator), torch.randint(0, 4, (5,), generator=generator)) for _ in range(2)]

    def loss_fn(batch, temperature=1.0):
        x, y = batch
        return nn.functional.cross_entropy(torch.tanh(x @ params["W1"].T) @ params["W2"].T / temperature, y)

    return params, batches, loss_fn


@pytest.mark.parametrize("scorer, scope", [("snip", "global"), ("grasp", "global"), ("magnitude", "layer"), ("snip", "er")])
def test_every_round_keeps_its_exact_count_and_only_survivors(scorer, scope, monkeypatch):
    params, batches, loss_fn = linear_problem()
    before = {n: p.detach().clone() for n, p in params.items()}
    rounds = []

    def recording_select(scores, sparsity, *args, **kwargs):
        masks = select(scores, sparsity, *args, **kwargs)
        rounds.append((sparsity, masks))
        return masks

    monkeypatch.setattr(pruner_module, "select", recording_select)
    masks = prune(params, 0.75, PrunerConfig(scorer, scope=scope, iterations=5), loss_fn=loss_fn, batches=batches)
    total = sum(p.numel() for p in params.values())
    assert [s for s, _ in rounds] == pytest.approx(schedule(0.75, 5))
    for (sparsity, kept), (_, earlier) in zip(rounds[1:], rounds):
        assert sum(int(m.sum()) for m in kept.values()) == kept_count(total, sparsity)
        if scope == "global":  # a pruned weight never comes back (per-matrix roundings may move one weight)
            assert all(bool((kept[n] <= earlier[n]).all()) for n in kept)
    assert sum(int(m.sum()) for m in masks.values()) == kept_count(total, 0.75)
    for name, parameter in params.items():  # the rounds zero pruned weights only while they score
        assert torch.equal(parameter.detach(), before[name])


def test_one_iteration_is_the_one_shot_pruner():
    params, batches, loss_fn = linear_problem()
    one_shot = prune(params, 0.6, PrunerConfig("snip"), loss_fn=loss_fn, batches=batches, seed=3)
    one_round = prune(params, 0.6, PrunerConfig("snip", iterations=1), loss_fn=loss_fn, batches=batches, seed=3)
    assert all(torch.equal(one_shot[n], one_round[n]) for n in params)


def test_iterative_snip_rescoring_changes_the_choice():
    """Re-scoring after earlier rounds is not the one-shot ranking again (FORCE's point)."""
    params, batches, loss_fn = linear_problem(1)
    one_shot = prune(params, 0.9, PrunerConfig("snip"), loss_fn=loss_fn, batches=batches)
    iterative = prune(params, 0.9, PrunerConfig("snip", iterations=10), loss_fn=loss_fn, batches=batches)
    assert any(not torch.equal(one_shot[n], iterative[n]) for n in params)


def plain_and(control: str, seed: int = 0):
    params, batches, loss_fn = linear_problem()
    plain = prune(params, 0.5, PrunerConfig("snip"), loss_fn=loss_fn, batches=batches, seed=seed)
    controlled = prune(params, 0.5, PrunerConfig("snip", control=control), loss_fn=loss_fn, batches=batches, seed=seed)
    return params, batches, loss_fn, plain, controlled


def test_shuffle_keeps_every_matrix_count_and_moves_the_weights():
    _, _, _, plain, shuffled = plain_and("shuffle")
    for name in plain:
        assert int(shuffled[name].sum()) == int(plain[name].sum())
        assert not torch.equal(shuffled[name], plain[name])


def test_invert_keeps_the_lowest_scored_weights_at_the_same_counts():
    params, batches, loss_fn, plain, inverted = plain_and("invert")
    scores = SCORERS["snip"](params=params, loss_fn=loss_fn, batches=batches)
    for name in plain:
        assert int(inverted[name].sum()) == int(plain[name].sum())
        assert float(scores[name][inverted[name]].max()) <= float(scores[name][~inverted[name]].min())


def test_reinit_keeps_the_mask_and_redraws_the_values_from_the_init():
    params, batches, loss_fn = linear_problem()
    before = {n: p.detach().clone() for n, p in params.items()}
    plain = prune(params, 0.5, PrunerConfig("snip"), loss_fn=loss_fn, batches=batches)
    reinit = prune(params, 0.5, PrunerConfig("snip", control="reinit"), loss_fn=loss_fn, batches=batches)
    for name, parameter in params.items():
        assert torch.equal(reinit[name], plain[name])
        assert not torch.equal(parameter.detach()[reinit[name]], before[name][reinit[name]])
        # a fresh draw from the same (i.i.d.) init: the matrix's own values, elsewhere
        assert torch.equal(parameter.detach().flatten().sort().values, before[name].flatten().sort().values)


def test_nm_keeps_exactly_n_best_of_every_m_along_the_input_dimension():
    generator = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(6, 8, generator=generator), "b": torch.rand(3, 12, generator=generator)}
    masks = select(scores, 0.5, "nm", torch.Generator().manual_seed(1), n=2, m=4)
    for name, mask in masks.items():
        groups, group_scores = mask.reshape(-1, 4), scores[name].reshape(-1, 4)
        assert bool((groups.sum(1) == 2).all())
        kept = group_scores.masked_fill(~groups, float("inf")).min(1).values
        pruned = group_scores.masked_fill(groups, float("-inf")).max(1).values
        assert bool((kept >= pruned).all())
    ties = select({"z": torch.zeros(2, 8)}, 0.75, "nm", torch.Generator().manual_seed(0), n=1, m=4)["z"]
    assert bool((ties.reshape(-1, 4).sum(1) == 1).all())


def test_nm_through_prune_with_every_scorer():
    params, batches, loss_fn = linear_problem()
    for scorer in ("random", "magnitude", "snip", "grasp"):
        masks = prune(params, 0.5, PrunerConfig(scorer, scope="nm", n=1, m=2), loss_fn=loss_fn, batches=batches)
        assert all(bool((m.reshape(-1, 2).sum(1) == 1).all()) for m in masks.values())


@pytest.mark.parametrize("config, sparsity, message", [
    (dict(scope="nm", n=2, m=4), 0.4, "contradicts pruner.scope=nm"),
    (dict(scope="nm", n=4, m=4), 0.0, "1 ≤ n < m"),
    (dict(iterations=0), 0.4, "pruner.iterations=0"),
    (dict(control="bogus"), 0.4, "pruner.control='bogus' is unknown"),
    (dict(scorer=None, control="shuffle"), 0.4, "pruner.control=shuffle needs a pruner"),
    (dict(control="invert", iterations=3), 0.4, "control=invert"),
    (dict(scope="nm", iterations=2), 0.5, "one-shot"),
])
def test_bad_combinations_are_config_errors(config, sparsity, message):
    with pytest.raises(ConfigError, match=message):
        PrunerConfig(**config).validate(sparsity)


def test_a_row_name_with_two_pruner_settings_becomes_two_rows(tmp_path):
    def summary(folder, **pruner):
        run = {"status": "complete", "task": "mrpc", "row": "snip", "adapter": "houlsby", "pruner": "snip", "scope": "global",
               "sparsity": 0.4, "seed": 42, "metrics": {"accuracy": 0.8}, "main_metric": "accuracy", "trained_params_pct": 1.0}
        if pruner:
            run["pruner_settings"] = {"scorer": "snip", "scope": "global", "iterations": 1, "control": "none", "min_density": 0.0, **pruner}
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "summary.json").write_text(json.dumps(run))

    summary("old")  # an older summary records no pruner settings: the defaults
    summary("new", batches=10)  # batches do not tell two pruners apart
    summary("shuffled", control="shuffle")
    keys = {run["_dir"].rsplit("/", 1)[1]: row_key(run) for run in load_summaries([tmp_path])}
    assert keys == {"old": "snip", "new": "snip", "shuffled": "snip [control=shuffle]"}


# ---- through train.py ---------------------------------------------------------------------------

def run_summary(tmp_path, glue_dir, *overrides):
    run = tmp_path / "run"
    assert call_train(*FAST, f"data_dir={glue_dir}", f"hydra.run.dir={run}", *overrides) == 0
    return json.loads((run / "summary.json").read_text()), run


@pytest.mark.parametrize("overrides, kept_fraction", [
    (["pruner=synflow", "pruner.iterations=5", "sparsity=0.6"], 0.4),
    (["pruner=snip", "pruner.iterations=3", "pruner.control=shuffle", "sparsity=0.8"], 0.2),
    (["pruner=snip", "pruner.scope=nm", "sparsity=0.5"], 0.5),
])
def test_train_py_runs_each_new_pruner_exactly_and_records_it(overrides, kept_fraction, tmp_path, glue_dir):
    from sparse_adapter import read_adapter

    summary, run = run_summary(tmp_path, glue_dir, *overrides)
    assert summary["adapter_weights_kept"] == kept_count(summary["adapter_weights_total"], 1 - kept_fraction)
    settings = summary["pruner_settings"]
    for override in overrides:
        key, value = override.split("=")
        if key.startswith("pruner."):
            assert str(settings[key.removeprefix("pruner.")]) == value
    tensors, masks, metadata = read_adapter(run / "adapter.safetensors")
    assert metadata["pruner"] == settings
    for name, mask in masks.items():
        assert bool((tensors[name][~mask] == 0).all())  # held through training
        if settings["scope"] == "nm":
            assert bool((mask.reshape(-1, 4).sum(1) == 2).all())


@pytest.mark.parametrize("overrides, named", [
    (["pruner.scope=nm", "sparsity=0.4"], "contradicts pruner.scope=nm"),
    (["pruner.iterations=0"], "pruner.iterations=0"),
    (["pruner=none", "pruner.control=shuffle"], "pruner.control=shuffle needs a pruner"),
    (["pruner.control=flip"], "pruner.control='flip' is unknown"),
    (["pruner=synflow", "adapter=prefix"], "pruner=synflow"),
    (["pruner.scope=nm", "pruner.m=3", "pruner.n=1", "sparsity=0.6666666666666667"], "not a multiple of pruner.m=3"),
])
def test_bad_pruner_settings_are_one_error_line(overrides, named, tmp_path, glue_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    code = call_train(*FAST, f"data_dir={glue_dir}", f"hydra.run.dir={run}", *overrides)
    lines = error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1 and named in lines[0], lines
    assert not (run / "summary.json").exists() and not (run / "adapter.safetensors").exists()


def test_plots_never_put_two_pruners_on_one_line():
    from paper.runs import pruner_label

    def run(**settings):
        return {"pruner": settings.get("scorer", "snip"), "scope": settings.get("scope", "global"), "pruner_settings": settings}

    assert pruner_label({"pruner": "none"}) == "dense"
    assert pruner_label({"pruner": "snip", "scope": "global"}) == "snip"  # an older summary: the defaults
    assert pruner_label({"pruner": "random", "scope": "er"}) == "er"
    assert pruner_label(run(scorer="snip", control="shuffle")) == "snip [control=shuffle]"
    assert pruner_label(run(scorer="snip", scope="layer")) == "snip [scope=layer]"
    assert pruner_label(run(scorer="snip", scope="nm", n=2, m=4)) == "snip [scope=nm 2:4]"
    assert pruner_label(run(scorer="synflow", iterations=100)) == "synflow"  # its own default
    assert pruner_label(run(scorer="snip", iterations=10)) == "snip [iterations=10]"
