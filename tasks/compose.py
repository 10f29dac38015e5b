"""Compose ``train.yaml`` with overrides, every Hydra/OmegaConf composition error turned into one ConfigError.

Kept apart from ``tasks.cli`` (the error contract around a run) so that ``tasks.sweep`` can compose
each sweep point without importing the CLI that calls it.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from omegaconf import DictConfig

from sparse_adapter.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"


def one_line(text: str) -> str:
    """Collapse a multi-line message (Hydra's, OmegaConf's) into one line, dropping type noise."""
    lines = [line.strip() for line in str(text).splitlines()]
    kept = [line for line in lines if line and not line.startswith(("object_type=", "Set the environment variable HYDRA_FULL_ERROR"))]
    return re.sub(r"\s+", " ", "; ".join(kept)).strip()


# Hydra's composition errors, rephrased to name the setting first (pattern on the one-line text → message).
REPHRASE: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^.*?Could not override '([^']+)'.*?To append to your config use \+([^;\s]+).*$"),
     r"\1: not a setting of the config (to add a key the config lacks, use +\2)"),
    (re.compile(r"^.*?Could not find '([^'/]+)/([^']+)'; Available options in '[^']+':; (.*?); Config search path.*$"),
     r"\1=\2: unknown option (choose from: \3)"),
    (re.compile(r"^.*?Could not find '([^']+)'; Config search path.*$"), r"\1: no such config"),
]


# settings that moved: old key → where it lives now (run folders' saved overrides are renamed on replay, tasks.replay)
MOVED = {"pruner.temperature": "pruner.options.temperature"}  # GraSP's own setting (pruner=grasp)


def moved_problem(overrides: list[str]) -> str | None:
    """One line for an override of a setting that moved (Hydra alone would suggest adding it back with ``+``)."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in MOVED:
            value = override.split("=", 1)[1] if "=" in override else "..."
            return f"{override}: {key} is now {MOVED[key]} (e.g. {MOVED[key]}={value})"
    return None


def rephrase(message: str) -> str:
    for pattern, replacement in REPHRASE:
        if pattern.search(message):
            return pattern.sub(replacement, message, count=1)
    return message


def _bad_override(overrides: list[str]) -> str | None:
    """The first override Hydra's grammar rejects (its own message does not say which)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException:
            return override
    return None


_composing = False


@contextlib.contextmanager
def composing():
    """Initialise Hydra once for many ``compose_checked`` calls (a sweep's points: ~10x faster than one each)."""
    global _composing
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        _composing = True
        try:
            yield
        finally:
            _composing = False


def compose_checked(overrides: list[str]) -> DictConfig:
    """Compose ``train`` with ``overrides`` (Hydra config included); any composition error becomes a ConfigError."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if problem := moved_problem(overrides):
        raise ConfigError(problem)
    try:
        if _composing:  # inside ``composing()``: Hydra is initialised once for many compositions
            return compose("train", overrides=list(overrides), return_hydra_config=True)
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            return compose("train", overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        raise config_error(error, overrides) from error


def config_error(error: Exception, overrides: list[str]) -> ConfigError:
    """Hydra's or OmegaConf's composition error as one line naming the setting (and the override it cannot parse)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    cause = error.__cause__ if isinstance(error.__cause__, (HydraException, OmegaConfBaseException)) else None
    detail = f"{error}; {cause}" if cause and str(cause) not in str(error) else str(error)
    bad = _bad_override(overrides)
    if bad:
        detail = f"{bad}: cannot parse this override ({detail})"
    return ConfigError(rephrase(one_line(detail).replace(".;", ";")))
