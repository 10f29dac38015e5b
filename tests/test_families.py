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
