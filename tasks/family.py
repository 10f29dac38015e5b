"""How a task names its family: class paths of its LightningModule and DataModule, from the task yaml.

The classes are resolved when the run starts, so a task object never imports its module (the
module imports the task's data code, not the other way round) and a new family is a new folder
plus yaml, with no registry edit here.
"""

from __future__ import annotations

from hydra.utils import get_class

from sparse_adapter.errors import ConfigError


class TaskFamily:
    """Mixin for task dataclasses that carry ``module`` and ``datamodule`` class paths."""

    module: str
    datamodule: str

    def module_class(self) -> type:
        return _resolve(self.module, "task.module")

    def datamodule_class(self) -> type:
        return _resolve(self.datamodule, "task.datamodule")


def _resolve(path: str, setting: str) -> type:
    try:
        return get_class(path)
    except Exception as error:  # hydra wraps ImportError/AttributeError in its own types
        raise ConfigError(f"{setting}='{path}' is not an importable class: {error}") from error


def check_positions(setting: str, length: int, max_positions: int | None) -> None:
    """A sequence limit beyond the backbone's position embeddings would crash inside training."""
    if max_positions and length > max_positions:
        raise ConfigError(f"{setting}={length} exceeds the backbone's {max_positions} positions; set {setting} ≤ {max_positions}")
