"""The command line's error contract: bad input or a failed run prints one ``error:`` line and exits 2.

``train.py`` and the tests go through the same functions: ``config_error`` turns Hydra's multi-line
composition errors into one ``ConfigError`` (Hydra composes a run's config once; ``compose_checked``
composes a sweep's points for ``precheck``), ``RunChecks`` validates a run's composed config before Hydra
creates its directory, ``run_checked`` runs the experiment and reports ``ConfigError``/``NumericalError``
as one line, and ``expand_resume`` turns ``resume=<run dir>`` into the overrides that run was started with.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sparse_adapter.errors import ConfigError, NumericalError, StorageError
from sparse_adapter.registry import load_plugins
from tasks import rundir
from tasks.compose import CONF, compose_checked, composing, config_error, moved_problem, one_line, rephrase  # noqa: F401
from tasks.replay import replayable

EXIT_CODE = 2
FAILURES = (ConfigError, NumericalError, StorageError)
RESUME = "resume="
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def report(error: BaseException) -> None:
    print(f"error: {one_line(str(error))}", file=sys.stderr)  # once, on stderr (the console stays quiet)


def run_checked(cfg: DictConfig, output_dir: Path) -> float:
    """``tasks.experiment.run``, with bad input and failed runs reported as one line and exit code 2."""
    from callbacks.interrupt import Interrupted
    from tasks import sweep
    from tasks.experiment import run
    from tasks.validation import validate_config

    swept = sweep.in_sweep()
    if swept:
        sweep.clear_failure(output_dir)
    try:
        load_plugins(cfg.get("plugins"))  # again in this process: a launcher's or DDP's job may be a fresh interpreter
        if swept and not sweep.points_checked():  # a sweeper that picks its own points (Optuna): checked as each runs
            validate_config(cfg)
        return run(cfg, output_dir)
    except FAILURES as error:
        report(error)
        if swept:  # the other jobs go on; the sweep ends with one line naming each failed job (tasks.sweep)
            sweep.record_failure(output_dir, one_line(str(error)))
            return float("nan")
        raise SystemExit(EXIT_CODE) from None
    except OSError as error:  # a logger's or Lightning's own write on a full or read-only disk
        if error.errno not in DISK_ERRNOS:
            raise
        report(StorageError(f"cannot write {error.filename or output_dir}: {error.strerror}; free space or choose another hydra.run.dir"))
        raise SystemExit(EXIT_CODE) from None
    except Interrupted as stopped:
        print(stopped.message(output_dir.resolve() if stopped.checkpoint else None), file=sys.stderr)
        if stopped.requeue is not None:
            stopped.requeue()  # submitit's handler: requeue this job (same overrides; it resumes from last.ckpt), then exit
        raise SystemExit(stopped.exit_code) from None


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def expand_resume(argv: list[str]) -> list[str]:
    """``resume=DIR [overrides]`` → the overrides DIR was started with, then the new ones, run in DIR from its last.ckpt.

    Overrides given again replace the saved ones; the checkpoint check in ``tasks.resume`` then refuses
    any that contradict what the checkpoint trained.
    """
    given = [a for a in argv if a.startswith(RESUME)]
    if not given:
        return argv
    directory = Path(given[-1][len(RESUME):]).expanduser()
    saved_file = directory / ".hydra" / "overrides.yaml"
    if not saved_file.is_file():
        raise ConfigError(f"resume={directory}: no run there ({saved_file} is missing); pass the run directory of an earlier run")
    checkpoint = directory / rundir.LAST_CHECKPOINT
    try:
        saved = yaml.safe_load(saved_file.read_text()) or []
    except yaml.YAMLError as error:
        raise ConfigError(f"resume={directory}: {saved_file} is not readable YAML ({one_line(str(error))})") from error
    if not checkpoint.is_file():
        if isinstance(saved, list) and "callbacks=resumable" in map(str, saved):
            raise ConfigError(
                f"resume={directory}: the run was started with callbacks=resumable but stopped before its first checkpoint"
                f" ({rundir.LAST_CHECKPOINT} was never written), so there is nothing to resume; rerunning its command starts afresh"
            )
        raise ConfigError(f"resume={directory}: no {rundir.LAST_CHECKPOINT} there; runs are resumable when started with callbacks=resumable")
    if not isinstance(saved, list):
        raise ConfigError(f"resume={directory}: {saved_file} is not a list of overrides")
    new = [a for a in argv if not a.startswith(RESUME)]
    flags = [a for a in new if a.startswith("-")]
    if flags:
        raise ConfigError(f"resume={directory}: resumes one run; drop {' '.join(flags)}")
    replaced = {_key(a) for a in new} | {"hydra.run.dir", "ckpt_path"}
    kept = replayable(directory, saved_file, [a for a in saved if not (isinstance(a, str) and _key(a) in replaced)])
    return [*kept, *new, f"hydra.run.dir={hydra_quoted(directory.resolve())}", f"ckpt_path={hydra_quoted(checkpoint.resolve())}"]


def hydra_quoted(path: Path) -> str:
    """A path as one Hydra override value: quoted, since a sweep job's folder (``row=dense,seed=43``) holds the ``=``
    and ``,`` that Hydra's grammar would read as syntax."""
    text = str(path)
    quote = next((q for q in ('"', "'") if q not in text), None)
    if quote is None:
        raise ConfigError(f"resume={text}: a path holding both quote characters cannot be passed to Hydra; rename the folder")
    return f"{quote}{text}{quote}"


def precheck(argv: list[str]) -> list[str]:
    """Expand ``resume=`` and check every point of a sweep (-m), before Hydra writes anything.

    Returns the argv Hydra should parse. A single run is composed once, by Hydra, and checked by ``RunChecks``
    before its directory exists. Processes started by Lightning's DDP launcher (ranks > 0) skip all of this:
    rank 0 checked the same command.
    """
    if not rundir.is_launching_process():
        return argv
    try:
        argv = expand_resume(argv)
        if problem := moved_problem(argv):  # Hydra alone would suggest adding the old key back with +
            raise ConfigError(problem)
        flags = [a for a in argv if a.startswith("-")]
        if flags and set(flags) <= {"-m", "--multirun"}:
            from tasks.sweep import check_points

            check_points([a for a in argv if not a.startswith("-")])  # every point, before the first job
    except (ConfigError, StorageError) as error:
        report(error)
        raise SystemExit(EXIT_CODE) from None
    return argv


def check_run(cfg: DictConfig, overrides: list[str]) -> None:
    """Validate a single run's composed config and claim its run directory (ConfigError, StorageError)."""
    from tasks.validation import validate_config  # torch and transformers: not for --help or --cfg

    load_plugins(cfg.get("plugins"))  # the user's own extension modules, named on their command line or config
    validate_config(cfg)
    # Hydra's parsed value, not the override's text: a quoted dir (commas, as in sweep folders) is the folder Hydra makes
    explicit_dir = str(cfg.hydra.run.dir) if any(_key(a) == "hydra.run.dir" for a in overrides) else None
    if explicit_dir and cfg.get("skip_finished") and Path(explicit_dir).is_dir():
        rundir.set_aside_unreadable(Path(explicit_dir))
    if explicit_dir and not (cfg.get("skip_finished") and rundir.finished_summary(Path(explicit_dir))):
        # skip_finished resumes an interrupted job (tasks.experiment.run), so its checkpoint is no obstacle
        rundir.claim(Path(explicit_dir), resuming=bool(cfg.get("ckpt_path") or cfg.get("skip_finished") or rundir.requeued()))
    elif not explicit_dir:  # the timestamped default: probe where Hydra will create it, creating nothing
        target = Path(str(cfg.hydra.run.dir)).absolute()
        existing = next(p for p in (target, *target.parents) if p.exists())
        rundir.check_writable(existing)


def start_run(cfg: DictConfig, overrides: list[str]) -> None:
    """``check_run``, with bad input reported as one ``error:`` line and exit code 2."""
    if not rundir.is_launching_process():
        return
    try:
        check_run(cfg, overrides)
    except (ConfigError, StorageError) as error:
        report(error)
        raise SystemExit(EXIT_CODE) from None


class RunChecks(Callback):
    """Hydra calls ``on_run_start`` with the run's composed config before it creates the run directory: the one
    place a single run is validated (a sweep's points are checked by ``precheck``, its jobs by ``run_checked``)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        start_run(config, [*config.hydra.overrides.hydra, *config.hydra.overrides.task])
