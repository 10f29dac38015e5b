"""OmegaConf resolvers that derive settings in the config itself, so ``--cfg job --resolve`` and the
logged config show what runs.

Large-Sparse (paper Table 3) multiplies an adapter's width by k and prunes 1 - 1/k of it:
``bottleneck: ${large_sparse.width:64,${large_sparse}}`` and
``sparsity: ${large_sparse.sparsity:${large_sparse},0.4}``. An explicit ``adapter.bottleneck=...``
replaces the interpolation and is the width that runs.

``hydra.output_subdir: ${record_dir:${hydra:runtime.output_dir},${skip_finished}}`` keeps the
``.hydra/`` record of a finished job as it ran: Hydra rewrites it before the job starts, so a
restarted sweep that skips the job would otherwise replace it with today's config. ``job_log``
does the same for its ``train.log``, which Hydra opens for appending before the job can skip.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf


def scaled_width(width: int, k: int | None) -> int:
    """The dense width ×k, or the width itself without Large-Sparse (k checked by the run)."""
    return width * k if isinstance(k, int) and k >= 1 else width


def large_sparse_sparsity(k: int | None, default: float) -> float:
    """1 - 1/k: the same number of kept weights as the dense adapter at width ×k."""
    return 1.0 - 1.0 / k if isinstance(k, int) and k >= 1 else default


def record_dir(output_dir: str, skip_finished: bool | None) -> str | None:
    """Where Hydra writes the job's config record: nowhere for a job skip_finished will skip."""
    from sparse_adapter.errors import ConfigError
    from tasks.rundir import finished_summary  # rundir imports nothing from here

    try:
        if skip_finished and finished_summary(Path(output_dir)):
            return None
    except ConfigError:  # an unreadable summary: an unfinished job, set aside by the run itself (tasks.rundir)
        pass
    return ".hydra"


def job_log(output_dir: str, job_name: str, skip_finished: bool | None) -> str:
    """The job's log file; the null device for a job skip_finished will skip (its log stays as it ran)."""
    return os.devnull if record_dir(output_dir, skip_finished) is None else str(Path(output_dir) / f"{job_name}.log")


def register() -> None:
    resolvers = {"large_sparse.width": scaled_width, "large_sparse.sparsity": large_sparse_sparsity, "record_dir": record_dir,
                 "job_log": job_log}
    for name, function in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register()
