"""train.py's entry point, in-process and as a subprocess, with the error contract made checkable.

``call_train`` runs exactly what ``python train.py ...`` runs (precheck, composition, the run's checks, ``run_checked``)
without a new interpreter (about 8 s of imports saved per call) and returns the exit code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from tasks import rundir
from sparse_adapter.errors import ConfigError
from tasks.cli import EXIT_CODE, compose_checked, precheck, report, run_checked, start_run
from tests import zygote

FAST = [
    "backbone=tiny-bert", "task=rte", "trainer=smoke", "logger=csv",
    "data.max_train_samples=32", "data.max_eval_samples=16", "data.batch_size=8", "pruner.batches=2",
]


def call_train(*argv: str) -> int:
    """``python train.py *argv`` in this process; returns the exit code (0, or 2 with one `error:` line on stderr)."""
    run_dir = None
    try:
        args = precheck(list(argv))
        try:
            cfg = compose_checked(args)
        except ConfigError as error:
            report(error)
            return EXIT_CODE
        start_run(cfg, args)  # what Hydra's on_run_start callback does before it creates the directory
        run_dir = Path(cfg.hydra.run.dir)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
        HydraConfig.instance().set_config(cfg)
        saved = run_dir / ".hydra" / "overrides.yaml"  # Hydra records the task overrides; resume= reads them
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(yaml.safe_dump([a for a in args if not a.split("=", 1)[0].lstrip("+~").startswith("hydra")]))
        run_checked(cfg, run_dir)
        return 0
    except SystemExit as exit_:
        return exit_.code
    finally:
        for directory in [run_dir, *(Path(a.split("=", 1)[1]) for a in argv if a.startswith("hydra.run.dir="))]:
            if directory is not None:
                rundir.release(directory)


def train_subprocess(*argv: str, timeout: int = 300, fresh: bool = False) -> subprocess.CompletedProcess:
    """``python train.py *argv`` in a process of its own, forked from a zygote that has the frameworks imported, or
    a ``fresh`` interpreter (joblib's loky workers, started from a forked child, ran 4x slower)."""
    env = dict(os.environ, **zygote.BASE_ENV)
    if fresh:
        return subprocess.run([sys.executable, "train.py", *argv], cwd=zygote.ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)
    return zygote.run("train.py", list(argv), env, timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]
