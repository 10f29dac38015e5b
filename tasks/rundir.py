"""One run per directory: a lock held while a run lives, and no run written over a finished one.

Two runs sharing a directory would interleave their logs, checkpoints and summaries. The lock is
an ``flock`` on the directory itself: the kernel drops it when the holder dies (even by SIGKILL), so
an interrupted run can be resumed in place, and no lock file is written or left behind.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
from pathlib import Path

from sparse_adapter.errors import ConfigError, StorageError

log = logging.getLogger(__name__)
SUMMARY = "summary.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
_held: dict[Path, int] = {}  # directories this process has claimed -> lock file descriptor


def is_launching_process() -> bool:
    """False in ranks > 0 (started by Lightning's DDP launcher, or as SLURM tasks): they share rank 0's directory."""
    return all(int(os.environ.get(name, "0") or 0) == 0 for name in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def check_writable(directory: Path, setting: str = "hydra.run.dir") -> None:
    """A run directory that cannot take files (read-only, no permission, a full disk) is one error before any
    model loads, not a traceback after the last training step. A 64 KiB probe is written, synced and removed."""
    from sparse_adapter.io import disk_fault  # torch: imported when a run directory is probed, not for --help

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        error = disk_fault(directory)
    except OSError as failed:
        error = failed
    if error is not None:
        why = "the disk is full" if error.errno == errno.ENOSPC else "check its permissions and free space"
        raise StorageError(f"{setting}: cannot write in {directory} ({error.strerror or error}; {why}); choose another {setting}") from error


def requeued() -> bool:
    """True in a SLURM job that was requeued (preempted or timed out, then restarted): it resumes in place."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def read_summary(directory: Path) -> dict | None:
    """The run's summary, or None; a corrupt summary is an error naming the file, never a traceback."""
    path = Path(directory) / SUMMARY
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON ({error}); delete it or choose another hydra.run.dir") from error
    if not isinstance(summary, dict):
        raise ConfigError(f"{path}: not a run summary (a JSON object was expected)")
    return summary


def set_aside_unreadable(directory: Path) -> Path | None:
    """For skip_finished (and requeued jobs): an unreadable summary marks an unfinished job, not a fatal error.

    The file is kept beside as ``summary.json.unreadable`` (nothing is destroyed), a warning names it, and
    the job resumes from its checkpoint or runs again. Returns where it went (None: nothing to set aside).
    """
    try:
        read_summary(directory)
        return None
    except ConfigError as error:
        path = Path(directory) / SUMMARY
        aside = path.with_name(f"{SUMMARY}.unreadable")
        try:
            os.replace(path, aside)
        except OSError as failed:
            raise StorageError(f"{error}; it cannot be set aside ({failed.strerror or failed})") from failed
        log.warning("%s; treated as an unfinished job (the file is kept as %s): it runs again", error, aside.name)
        return aside


def finished_summary(directory: Path) -> dict | None:
    summary = read_summary(directory)
    return summary if summary and summary.get("status") == "complete" else None


def exclusive_lock(directory: Path, in_use: str) -> int:
    """An flock on the folder, held until released or until the process exits (the kernel drops it then, even after
    SIGKILL); the ConfigError ``in_use`` when another process holds it. Returns the descriptor that holds it."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise ConfigError(in_use) from None
    return descriptor


def claim(directory: Path, resuming: bool) -> None:
    """Lock ``directory`` for this process, refusing a directory in use, finished, or interrupted.

    Idempotent within a process (train.py claims before Hydra writes into the directory, the run
    claims again). Raises ConfigError naming the directory and what to do instead.
    """
    directory = Path(directory).resolve()
    if directory in _held:
        return
    check_writable(directory)
    _held[directory] = exclusive_lock(directory, f"hydra.run.dir: {directory} is in use by a running run; choose another directory")
    try:
        if finished_summary(directory):
            raise ConfigError(
                f"hydra.run.dir: {directory} already holds a complete run ({SUMMARY}); choose another directory"
                " (sweeps: skip_finished=true skips finished jobs)"
            )
        if not resuming and (directory / LAST_CHECKPOINT).is_file():
            raise ConfigError(
                f"hydra.run.dir: {directory} holds an interrupted run; resume it with `python train.py resume={directory}`"
                " or choose another directory"
            )
    except ConfigError:
        release(directory)
        raise


def release(directory: Path) -> None:
    descriptor = _held.pop(Path(directory).resolve(), None)
    if descriptor is not None:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)
