"""Extensions from files outside the package, one of each kind, register themselves and train through train.py.

``tests/plugins`` holds a toy adapter variant, scorer (with its own setting), allocation, architecture
(DistilBERT) and task family in one module plus their YAMLs; each test copies them to a temporary
folder, so nothing in the repository's ``conf/`` or packages is involved (docs/extending.md).
"""

from __future__ import annotations

import gc
import json
import shutil
import sys
from pathlib import Path

import pytest

from sparse_adapter.errors import ConfigError
from sparse_adapter.registry import Registry
from tests.cli_support import call_train, error_lines

PLUGINS = Path(__file__).parent / "plugins"
TOY = ["backbone=toy-distilbert", "adapter=toy_attention", "pruner=toy_power", "pruner.scope=toy_uniform", "task=toy",
       "trainer=smoke", "logger=csv", "sparsity=0.5"]


def plugged(folder: Path) -> list[str]:
    """What the user's command line adds: their module, and their YAML folder on Hydra's search path."""
    return ["plugins=[toy_extensions]", f"hydra.searchpath=[file://{folder / 'conf'}]"]


@pytest.fixture
def outside(tmp_path, monkeypatch) -> Path:
    """The plugins' folder, copied; afterwards every registry is as it was and the module forgotten, so what the plugin
    registered (a DistilBERT layout, say) does not leak into later tests of the same worker."""
    folder = shutil.copytree(PLUGINS, tmp_path / "elsewhere")
    monkeypatch.syspath_prepend(str(folder))
    # by exact type: isinstance reads every object's __class__, which warns on deprecated aliases (torch's reduce_op)
    saved = [(registry, dict(registry)) for registry in gc.get_objects() if type(registry) is Registry]
    yield folder
    for registry, entries in saved:
        registry.clear()
        registry.update(entries)
    sys.modules.pop("toy_extensions", None)


def test_a_toy_variant_scorer_allocation_architecture_and_family_train_through_train_py(outside, tmp_path, capsys):
    run = tmp_path / "run"
    code = call_train(*TOY, *plugged(outside), f"hydra.run.dir={run}")
    assert code == 0, capsys.readouterr().err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["task"], summary["backbone"], summary["adapter"]) == ("toy", "toy-distilbert", "toy_attention")
    assert summary["pruner_settings"]["scorer"] == "toy_power" and summary["pruner_settings"]["scope"] == "toy_uniform"
    assert summary["pruner_settings"]["options"] == {"power": 2.0}  # the scorer's own setting, recorded
    assert summary["global_steps"] > 0 and 0.0 <= summary["metrics"]["accuracy"] <= 1.0
    densities = summary["layer_density"]
    assert len(densities) == 4  # 2 blocks × (down, up), after the attention only
    assert all(name.endswith(("down.weight", "up.weight")) and ".attention.out_lin." in name for name in densities)
    assert all(d == pytest.approx(0.5, abs=0.02) for d in densities.values())  # toy_uniform: one density per matrix


def test_a_scorer_setting_out_of_its_declared_range_is_one_error_line(outside, tmp_path, capsys):
    code = call_train(*TOY, *plugged(outside), f"hydra.run.dir={tmp_path / 'run'}", "pruner.options.power=-1")
    lines = error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1 and "pruner.options.power=-1" in lines[0], lines


def test_plugins_are_named_by_the_user_never_replayed_from_a_run_folder(tmp_path, capsys):
    from tasks.replay import override_problem

    assert "chooses code to run" in override_problem("plugins=[toy_extensions]")
    assert call_train("plugins=[no_such_module_here]", f"hydra.run.dir={tmp_path / 'run'}") == 2
    assert "plugins: cannot import 'no_such_module_here'" in error_lines(capsys.readouterr().err)[0]


def test_a_variant_names_the_attachment_point_an_architecture_lacks():
    from dataclasses import dataclass

    from sparse_adapter.adapters.bottleneck import BottleneckConfig
    from tests.conftest import tiny_model

    @dataclass
    class NowhereConfig(BottleneckConfig):
        sublayers = needs = ("before_everything",)

    model, _ = tiny_model("bert")
    with pytest.raises(ConfigError, match="needs the attachment point.*before_everything.*.bert. architecture"):
        NowhereConfig(bottleneck=4).attach(model)
