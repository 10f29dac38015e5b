"""Apply the typed configs to a composed config: each node against what it instantiates (``_target_``).

OmegaConf checks a node's keys and types against the dataclass it builds (a structured config) and
``sparse_adapter.schema`` the ranges declared on that dataclass's fields; ``data`` is typed by the
task's DataModule signature, and the Trainer, loggers and callbacks by theirs. Nothing here is a rule
about a particular setting: those live on the dataclasses (``tasks.settings`` for train.yaml's own keys)
and, when they span several settings, in ``tasks.validation``.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from sparse_adapter.errors import ConfigError
from sparse_adapter.schema import check_ranges, show
from tasks.settings import CheckpointRanges, DataRanges, RunSettings, TrainerRanges

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("backbone", "task", "optimizer", "adapter", "pruner", "trainer", "logger", "callbacks")
FREE_FORM = ("hydra",)  # Hydra's own node, checked by Hydra
RUNNER_SUPPLIED = ("self", "task", "tokenizer", "data_dir", "seed", "max_positions")  # tasks.experiment passes these
EXPECTED = {"Integer": "an integer", "Float": "a number", "valid bool": "true or false", "String": "a string"}
RANGES = {"trainer": TrainerRanges, "callbacks.last_checkpoint": CheckpointRanges}  # nodes without a dataclass of ours


def _settings(node: Any) -> Any:
    """``node`` without Hydra's keys (_target_, _convert_, ...), recursively; nested targets are checked apart."""
    if not isinstance(node, dict):
        return node
    return {k: _settings(v) for k, v in node.items() if not (k.startswith("_") and k.endswith("_"))}


def check_typed(path: str, node: dict, schema: type) -> None:
    """OmegaConf's type check of ``node`` against dataclass ``schema``, then the schema's ranges, as one line."""
    fields = _settings(node)
    dotted = f"{path}." if path else ""
    try:
        OmegaConf.merge(OmegaConf.structured(schema), fields)
    except ConfigKeyError as error:
        known = ", ".join(sorted(f.name for f in dataclasses.fields(schema) if f.init))
        where = path or "train.yaml"
        raise ConfigError(f"{dotted}{error.full_key}: unknown setting (known in {where}: {known})") from None
    except ValidationError as error:
        expected = next((name for word, name in EXPECTED.items() if word in str(error)), str(error).splitlines()[0])
        raise ConfigError(f"{dotted}{error.full_key}={show(error.value)}: expected {expected}") from None
    check_ranges(fields, schema, path)


def check_signature(path: str, node: dict, target: Any) -> None:
    """Unknown keyword arguments of a non-dataclass target (lightning.Trainer, a logger, a callback)."""
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    for key in node:
        if not (key.startswith("_") and key.endswith("_")) and key not in parameters:
            raise ConfigError(f"{path}.{key}: unknown setting ({getattr(target, '__name__', target)} takes {', '.join(p for p in parameters if p != 'self')})")
    if path in RANGES:
        check_ranges(node, RANGES[path], path)


def _import(path: str, setting: str) -> Any:
    try:
        return get_object(path)
    except Exception as error:  # Hydra raises ImportError or its own error for a bad path
        raise ConfigError(f"{setting}={path!r}: cannot be imported ({error})") from error


def data_schema(datamodule: type) -> type:
    """``data`` holds the DataModule's keyword arguments: a structured config made from its signature. A
    family's ``__init__`` may take only its own settings and ``**shared``: the base classes' are added."""
    fields: dict[str, Any] = {}
    for cls in datamodule.__mro__:
        if "__init__" not in vars(cls):
            continue
        try:
            hints = typing.get_type_hints(cls.__init__)
        except Exception:  # noqa: BLE001 - an unresolvable annotation only costs the type check
            hints = {}
        parameters = inspect.signature(cls.__init__).parameters
        for name, parameter in parameters.items():
            if name not in RUNNER_SUPPLIED and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                fields.setdefault(name, hints.get(name, Any))
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            break
    return dataclasses.make_dataclass(datamodule.__name__, list(fields.items()))


def check_node(path: str, node: Any) -> None:
    if not isinstance(node, dict):
        return
    if "_target_" in node:
        target = _import(node["_target_"], f"{path}._target_")
        (check_typed if dataclasses.is_dataclass(target) else check_signature)(path, node, target)
    for key, value in node.items():
        if isinstance(value, dict) and not (key.startswith("_") and key.endswith("_")):
            if path in ("callbacks", "logger") or "_target_" in value:
                check_node(f"{path}.{key}", value)


def plain_config(cfg: DictConfig) -> dict:
    """The config as plain containers, Hydra's runtime interpolations left unresolved (they need a run)."""
    plain = {}
    for key in cfg:
        if key in FREE_FORM:
            continue
        node = cfg._get_node(key)
        try:
            value = OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else cfg[key]
        except Exception:  # ${hydra:...} outside a Hydra run: check those nodes unresolved
            value = OmegaConf.to_container(node, resolve=False) if isinstance(node, (DictConfig, ListConfig)) else None
        plain[key] = value
    return plain


def known_top_level() -> set[str]:
    """train.yaml's keys and config groups: anything else at the top level came from a stray ``+key=``."""
    primary = OmegaConf.load(CONF / "train.yaml")
    groups = {next(iter(d)) if isinstance(d, dict) else d for d in OmegaConf.to_container(primary.get("defaults", []))}
    return {str(k) for k in primary if k != "defaults"} | {g for g in groups if g != "_self_"} | set(GROUPS) | set(FREE_FORM)


def check_types_and_ranges(plain: dict) -> None:
    """Every node of the plain config against its schema; one ConfigError naming the first bad key."""
    unknown = sorted(set(plain) - known_top_level())
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown setting (see README.md for the settings train.yaml knows)")
    own = {f.name for f in dataclasses.fields(RunSettings)}
    check_typed("", {k: v for k, v in plain.items() if k in own}, RunSettings)
    if isinstance(plain.get("data"), dict) and (datamodule := (plain.get("task") or {}).get("datamodule")):
        check_typed("data", plain["data"], data_schema(_import(datamodule, "task.datamodule")))
        check_ranges(plain["data"], DataRanges, "data")
    for group in GROUPS:
        check_node(group, plain.get(group))
