"""Task families are chosen by config: each task yaml names its module and datamodule classes."""

import inspect
from pathlib import Path

import lightning as L
import pytest
from hydra.utils import instantiate

from tests.conftest import ROOT, compose_config

TASKS = sorted(p.stem for p in (ROOT / "conf" / "task").glob("*.yaml"))


@pytest.mark.parametrize("name", TASKS)
def test_every_task_yaml_resolves_its_family_classes_without_an_import_circle(name):
    task = instantiate(compose_config(f"task={name}").task, _convert_="object")
    assert issubclass(task.module_class(), L.LightningModule)
    assert issubclass(task.datamodule_class(), L.LightningDataModule)
    assert "import" not in inspect.getsource(type(task))  # the task names its classes, never imports them
    family = Path(inspect.getfile(task.module_class())).parent.name
    assert family == Path(inspect.getfile(type(task))).parent.name in {"classification", "qa", "seq2seq", "sft"}


@pytest.mark.parametrize(
    "overrides, accepted, refused",
    [(["task=squad"], "data.doc_stride", None), (["task=xsum"], "data.max_target_length", None),
     (["task=rte", "+data.doc_stride=128"], None, "data.doc_stride")],
)
def test_data_settings_are_those_of_the_task_family(overrides, accepted, refused):
    """``data`` is the DataModule's keyword arguments: SQuAD's stride and XSum's target length are
    settings there, and no other family accepts them."""
    from omegaconf import OmegaConf

    from sparse_adapter.errors import ConfigError
    from tasks.validation import validate_config

    cfg = compose_config(*overrides)
    if refused:
        with pytest.raises(ConfigError, match=refused.replace(".", r"\.")):
            validate_config(cfg)
    else:
        validate_config(cfg)
        assert OmegaConf.select(cfg, accepted) is not None


FAMILY_ARGUMENTS = {  # each family's own data settings; the shared ones come from tasks.data.TaskDataModule
    "rte": ({"max_length", "max_positions"}, (32, 64)), "squad": ({"max_length", "doc_stride", "max_question_length",
                                                               "max_positions"}, (12, 32)),
    "xsum": ({"max_length", "max_target_length", "max_positions"}, (8, 16)),
    "sft": ({"max_length", "max_target_length", "max_positions"}, (8, 16)),
}


@pytest.mark.parametrize("name", list(FAMILY_ARGUMENTS))
def test_a_datamodule_lists_only_its_own_arguments_and_data_keeps_every_shared_type(name):
    """The ten shared arguments live once, in TaskDataModule; ``data`` is still typed from both signatures
    (tasks.typed_config), and a family's own defaults for shared settings (smaller batches) still hold."""
    import dataclasses

    from tasks.data import TaskDataModule
    from tasks.typed_config import RUNNER_SUPPLIED, data_schema

    own, batch_sizes = FAMILY_ARGUMENTS[name]
    datamodule = instantiate(compose_config(f"task={name}").task, _convert_="object").datamodule_class()
    parameters = inspect.signature(datamodule.__init__).parameters
    assert {p for p in parameters if p not in ("self", "task", "tokenizer", "shared")} == own
    shared = {p: v.annotation for p, v in inspect.signature(TaskDataModule.__init__).parameters.items()
              if p not in RUNNER_SUPPLIED}
    typed = {f.name: f.type for f in dataclasses.fields(data_schema(datamodule))}
    assert set(shared) <= set(typed) and typed["batch_size"] is int and typed["max_train_samples"] == int | None
    assert typed["group_by_length"] is bool and set(typed) == set(shared) | (own - set(RUNNER_SUPPLIED))
    assert (datamodule.shared_defaults.get("batch_size", 32), datamodule.shared_defaults.get("eval_batch_size", 64)) \
        == batch_sizes
