"""Sweeps (``train.py -m``) that check every point first and finish the other jobs when one fails.

Before Hydra starts anything, ``check_points`` expands the sweep exactly as Hydra's basic sweeper does
(``hydra.sweeper.params`` of an experiment, then the command line; a later value of a key replaces an
earlier one; the cartesian product in command-line order, through Hydra's public override parser),
composes and validates each point, and refuses the sweep with one line listing every bad point.
Sweepers that choose their own points (Optuna) are left to check each trial as it runs.

A job that fails at run time (bad data, a sparsity that empties a matrix, NaN) is recorded in its
directory (``failed.json``) and the sweep goes on; ``SweepFailures``, a Hydra callback, ends the
sweep with one line naming each failed job and exit code 2. This works for every launcher: the
record is a file in the job's directory, wherever the job ran.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sparse_adapter.errors import ConfigError
from sparse_adapter.registry import load_plugins
from tasks.rundir import exclusive_lock

FAILED = "failed.json"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
EXIT_CODE = 2


def _label(point: list[str], varying: set[str]) -> str:
    return " ".join(o for o in point if o.split("=", 1)[0].lstrip("+~") in varying) or " ".join(point)


def sweep_points(overrides: list[str], compose) -> tuple[list[list[str]], set[str]] | None:
    """(the override list of each job a basic sweep would launch, the swept keys); None for a sweeper that picks its own points."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    cfg = compose(first_point(overrides))
    if cfg.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.get("params") or {}).items()]
    every = parser.parse_overrides([*params, *overrides])
    choices: dict[str, list[str]] = {}  # key -> its overrides, one per value; a later override of a key replaces it
    for override in every:
        key = override.get_key_element()
        if override.is_sweep_override() and not override.is_discrete_sweep():
            raise ConfigError(f"{override.input_line}: range and interval sweeps need a sweeper that samples (hparams_search=optuna)")
        values = override.sweep_string_iterator() if override.is_sweep_override() else [override.get_value_element_as_str()]
        choices[key] = [f"{key}={value}" for value in values]
    varying = {o.key_or_group for o in every if o.is_sweep_override()}
    return [list(point) for point in itertools.product(*choices.values())], varying


def first_point(overrides: list[str]) -> list[str]:
    """The overrides of a sweep's first job (each swept key at its first value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override() else o.input_line for o in parsed]


_sweep_locks: dict[Path, int] = {}  # sweep folders this process holds -> lock file descriptor


def lock_sweep_dir(directory: Path) -> None:
    """One sweep per sweep folder, as one run per run folder (tasks.rundir): an flock on the folder, held until the
    sweep's process exits (the kernel drops it then, even after SIGKILL). A second sweep there is refused."""
    directory = Path(directory).resolve()
    if directory in _sweep_locks:
        return
    directory.mkdir(parents=True, exist_ok=True)
    _sweep_locks[directory] = exclusive_lock(
        directory, f"hydra.sweep.dir: {directory} is in use by a running sweep; wait for it or choose another hydra.sweep.dir")


def check_points(overrides: list[str]) -> int:
    """ConfigError listing every invalid sweep point (nothing has run); returns the number of points."""
    from tasks.compose import compose_checked, composing, one_line
    from tasks.rundir import check_writable
    from tasks.validation import validate_config

    with composing():
        expanded = sweep_points(overrides, compose_checked)
        if expanded is None:  # a sweeper that picks its own points (Optuna): the folder is locked all the same
            target = Path(str(compose_checked(first_point(overrides)).hydra.sweep.dir)).absolute()
            check_writable(next(p for p in (target, *target.parents) if p.exists()), setting="hydra.sweep.dir")
            lock_sweep_dir(target)
            return 0
        points, varying = expanded
        bad = []
        for point in points:
            try:
                cfg = compose_checked(point)
                load_plugins(cfg.get("plugins"))
                validate_config(cfg)
            except ConfigError as error:
                bad.append(f"[{_label(point, varying)}] {one_line(str(error))}")
        if bad:
            raise ConfigError(f"{len(bad)} of {len(points)} sweep points are invalid, nothing was run: {'; '.join(bad)}")
        target = Path(str(compose_checked(points[0]).hydra.sweep.dir)).absolute()
    check_writable(next(p for p in (target, *target.parents) if p.exists()), setting="hydra.sweep.dir")
    lock_sweep_dir(target)
    return len(points)


def points_checked() -> bool:
    """Whether ``check_points`` validated every point of the running sweep before its first job."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().sweeper.get("_target_") == BASIC_SWEEPER


def in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_failure(output_dir: Path, message: str) -> None:
    """The job failed at run time: say so in its directory, for ``SweepFailures`` at the end of the sweep."""
    from hydra.core.hydra_config import HydraConfig

    from sparse_adapter.io import write_json_atomic

    job = HydraConfig.get().job
    write_json_atomic({"job": job.num, "overrides": job.override_dirname, "error": message, "time": time.time()}, Path(output_dir) / FAILED)


def clear_failure(output_dir: Path) -> None:
    (Path(output_dir) / FAILED).unlink(missing_ok=True)


class SweepFailures(Callback):
    """After the sweep: one line naming each job that failed in it, and exit code 2 (0 when none failed)."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        failed = []
        for path in sorted(Path(str(config.hydra.sweep.dir)).glob(f"*/{FAILED}")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record.get("time", 0) >= self.started - 1:
                failed.append(record)
        if failed:
            failed.sort(key=lambda r: r.get("job", 0))
            listed = "; ".join(f"#{r['job']} ({r['overrides'] or 'no overrides'}): {r['error']}" for r in failed)
            print(f"error: {len(failed)} sweep job(s) failed, the others finished: {listed}", file=sys.stderr)
            raise SystemExit(EXIT_CODE)
