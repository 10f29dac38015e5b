"""GraSP's temperature is GraSP's own setting (``pruner.options.temperature``), and records written while it was
``pruner.temperature`` still name the same masks: on resume, on replay of a run folder, and in the report."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from hydra.utils import instantiate

from paper.report import report
from paper.runs import load_summaries, row_key
from sparse_adapter.errors import ConfigError
from sparse_adapter.pruning import PrunerConfig, prune
from sparse_adapter.pruning.pruner import recorded_settings
from sparse_adapter.pruning.scorers import SCORERS
from tasks.compose import compose_checked
from tasks.replay import replayable
from tasks.resume import check_matches
from tests.test_report import write_run

# what summaries, checkpoints and adapter files recorded for a default GraSP run before the move
OLD_GRASP = {"scorer": "grasp", "scope": "global", "iterations": 1, "control": "none", "min_density": 0.0,
             "batches": 10, "temperature": 200.0}


def test_grasp_owns_its_temperature_and_the_cli_sets_it_in_options():
    config = instantiate(compose_checked(["pruner=grasp", "pruner.options.temperature=100"]).pruner, _convert_="object")
    assert config.scorer_options() == {"temperature": 100.0}  # a whole number typed on the CLI: still a float
    assert "temperature" not in vars(config) and SCORERS["grasp"].settings.__name__ == "GraspSettings"
    default = instantiate(compose_checked(["pruner=grasp"]).pruner, _convert_="object")
    assert default.settings() == PrunerConfig("grasp").settings()  # YAML default = the dataclass's: 200
    assert PrunerConfig("grasp").settings()["options"] == {"temperature": 200.0}
    assert "options" not in PrunerConfig("snip").settings()  # scorers without settings record none


def test_the_option_reaches_the_scorer():
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(6, 5))
    batches = [(torch.randn(4, 5), torch.randint(6, (4,))) for _ in range(2)]

    def loss_fn(batch, temperature=1.0):
        x, y = batch
        return torch.nn.functional.cross_entropy(x @ W.T / temperature, y)

    for temperature in (1.0, 50.0):
        scores = SCORERS["grasp"](params={"w": W}, loss_fn=loss_fn, batches=batches, temperature=temperature)["w"]
        masks = prune({"w": W}, 0.5, PrunerConfig("grasp", options={"temperature": temperature}), loss_fn, batches)
        kept = torch.zeros(30, dtype=torch.bool).scatter(0, scores.flatten().topk(15).indices, True)
        assert torch.equal(masks["w"].flatten(), kept)


def test_old_grasp_records_read_as_todays_settings():
    assert recorded_settings(OLD_GRASP) == PrunerConfig("grasp").settings()
    hotter = PrunerConfig("grasp", options={"temperature": 50}).settings()
    assert recorded_settings({**OLD_GRASP, "temperature": 50.0}) == hotter
    assert recorded_settings(PrunerConfig("grasp").settings()) == PrunerConfig("grasp").settings()  # new: unchanged
    snip = PrunerConfig("snip").settings()
    assert recorded_settings(snip) == snip


def test_resuming_an_old_grasp_checkpoint_matches_and_a_changed_temperature_is_refused():
    current = {"pruner": "grasp", "pruner_settings": PrunerConfig("grasp").settings()}
    assert check_matches("last.ckpt", {"pruner": "grasp", "pruner_settings": OLD_GRASP}, current) == {}
    other = {"pruner": "grasp", "pruner_settings": PrunerConfig("grasp", options={"temperature": 100.0}).settings()}
    with pytest.raises(ConfigError, match=r"pruner\.options=\{'temperature': 200\.0\}"):
        check_matches("last.ckpt", {"pruner": "grasp", "pruner_settings": OLD_GRASP}, other)


@pytest.mark.parametrize("scorer, replayed", [("grasp", ["pruner=grasp", "pruner.options.temperature=100"]),
                                              ("snip", ["pruner=snip"])])  # it changed nothing under SNIP
def test_a_run_folders_saved_temperature_is_replayed_under_its_new_name(tmp_path, scorer, replayed):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"pruner": {"scorer": scorer, "temperature": 100}}))
    saved = [f"pruner={scorer}", "pruner.temperature=100"]
    assert replayable(tmp_path, tmp_path / ".hydra" / "overrides.yaml", saved) == replayed


def test_the_report_puts_old_and_new_grasp_records_in_one_row(tmp_path):
    before, after = tmp_path / "before", tmp_path / "after"
    for folder, settings in ((before, OLD_GRASP), (after, PrunerConfig("grasp").settings())):
        for seed, value in [(1, 0.60), (2, 0.70)]:
            write_run(folder, "rte", "grasp", seed, value, pruner="grasp", pruner_settings=settings)
    mixed = tmp_path / "mixed"
    write_run(mixed, "rte", "grasp", 1, 0.60, pruner="grasp", pruner_settings=OLD_GRASP)
    write_run(mixed, "rte", "grasp", 2, 0.70, pruner="grasp", pruner_settings=PrunerConfig("grasp").settings())
    assert {row_key(run) for run in load_summaries([mixed])} == {"grasp"}  # not split into two rows
    assert report(load_summaries([before])) == report(load_summaries([after])) == report(load_summaries([mixed]))
    recorded = json.loads((after / "grasp-rte-1" / "summary.json").read_text())["pruner_settings"]
    assert recorded["options"] == {"temperature": 200.0}
