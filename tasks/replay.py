"""What ``resume=<run dir>`` may replay from a run folder: plain settings, never a choice of code.

A run folder is data (a colleague's results, a cluster's scratch space, a downloaded reproduction).
Its ``.hydra/overrides.yaml`` is replayed into Hydra's composition, and Hydra turns any ``_target_``
into a call: a planted ``+callbacks.x._target_=...`` line would run code. So each saved override is
checked before it is replayed: a config group may only pick one of our own option files, and a value
override may only set plain data (numbers, strings, lists, mappings) on a key that names no code.
Anything else is refused with one line naming the override; the user can still pass it on the command
line, where it is their own choice.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sparse_adapter.errors import ConfigError
from tasks.compose import CONF, MOVED

# Hydra's instantiation keywords (_target_, _args_, _partial_, _convert_, _recursive_, ...)
KEYWORD = re.compile(r"^_[A-Za-z]+_$")
# plain strings that the run imports or executes: the task's LightningModule/DataModule classes (tasks.family),
# a weights package (sparse_adapter.backbones), a model folder's own Python files (transformers), extension modules
CODE_KEYS = frozenset({"module", "datamodule", "package", "trust_remote_code", "auto_map", "plugins"})
OPTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _names_code(key: str) -> bool:
    return bool(KEYWORD.match(key)) or key in CODE_KEYS


def _value_problem(value: Any, where: str) -> str | None:
    """Why ``value`` is not plain data (None when it is)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has a non-string key {key!r}"
            if _names_code(key):
                return f"{where} sets {key}, which chooses code to run"
            if (problem := _value_problem(item, f"{where}.{key}")) is not None:
                return problem
        return None
    if isinstance(value, list):
        return next((p for i, item in enumerate(value) if (p := _value_problem(item, f"{where}[{i}]")) is not None), None)
    if isinstance(value, str):
        return f"{where} is an interpolation, which can read or compute anything" if "${" in value else None
    if value is None or isinstance(value, (bool, int, float)):
        return None
    return f"{where} is a {type(value).__name__}, not plain data"


def override_problem(override: Any, conf: Path = CONF) -> str | None:
    """Why one saved override may not be replayed (None: it is plain data on a key that names no code)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if not isinstance(override, str):
        return f"{override!r} is not an override string"
    try:
        parsed = OverridesParser.create().parse_override(override)
    except HydraException as error:
        return f"{override!r} is not a Hydra override ({str(error).splitlines()[0]})"
    key = parsed.key_or_group
    if parsed.package is not None or "@" in key:
        return f"{override!r} moves a config node (`@package`), which can turn settings into code"
    if key.split(".")[0] == "hydra":
        return f"{override!r} changes Hydra's own settings (search path, launcher, callbacks)"
    if parsed.is_sweep_override():
        return f"{override!r} is a sweep, not one run's setting"
    parts = key.split(".")
    if bad := next((p for p in parts if _names_code(p)), None):
        return f"{override!r} sets {bad}, which chooses code to run"
    if parsed.is_delete():
        return None
    value = parsed.value()
    group = conf / key
    if len(parts) == 1 and group.is_dir():  # a config group: one of our own option files, by name
        if value is None:
            return None
        if not isinstance(value, str) or not OPTION_NAME.match(value) or ".." in value:
            return f"{override!r} is not an option name of group {key}"
        if not (group / f"{value}.yaml").is_file():
            return f"{override!r}: {key} has no option {value!r} (conf/{key}/)"
        return None
    problem = _value_problem(value, key)
    return f"{override!r}: {problem}" if problem else None


def renamed(directory: Path, saved: list) -> list:
    """Saved overrides of settings that moved (``tasks.compose.MOVED``) under their new names. GraSP's
    ``pruner.temperature`` moved into its own ``pruner.options``; under any other scorer it changed nothing (no
    record names it), so it is dropped there. The run's scorer is read from its ``.hydra/config.yaml``."""
    import yaml

    def scorer() -> str | None:
        try:
            config = yaml.safe_load((directory / ".hydra" / "config.yaml").read_text()) or {}
            return (config.get("pruner") or {}).get("scorer")
        except (OSError, yaml.YAMLError, AttributeError):
            return None  # unknown: renamed, and checked like any override

    out = []
    for override in saved:
        key = override.split("=", 1)[0] if isinstance(override, str) else None
        if key in MOVED and key == "pruner.temperature" and scorer() not in (None, "grasp"):
            continue
        out.append(f"{MOVED[key]}={override.split('=', 1)[1]}" if key in MOVED and "=" in override else override)
    return out


def replayable(directory: Path, saved_file: Path, saved: list) -> list[str]:
    """The saved overrides, renamed where a setting moved, each checked; ConfigError naming the first that is not
    plain data."""
    saved = renamed(directory, saved)
    for override in saved:
        if (problem := override_problem(override)) is not None:
            raise ConfigError(
                f"resume={directory}: {saved_file} holds {problem}; a run folder is data, never code: nothing from it"
                " is replayed until it is removed there (or, if you trust it, given again on the command line)"
            )
    return [str(o) for o in saved]
