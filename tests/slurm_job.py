"""Run ``train.py ARGS`` as the process of a submitit SLURM job: submitit's own signal handlers installed.

submitit's job entry point (``submitit.core.submission``) unpickles the submitted callable, installs
``SignalHandler`` (USR2 → checkpoint + ``scontrol requeue``; SIGTERM bypassed) and calls it. Here the
callable is train.py's command line, and ``checkpoint`` resubmits it unchanged, as Hydra's submitit
launcher does (``BaseSubmititLauncher.checkpoint``). Run with SLURM_* variables set and a ``scontrol``
on PATH; the test's ``scontrol`` records its arguments instead of talking to a controller.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from submitit.core.utils import DelayedSubmission, JobPaths
from submitit.slurm.slurm import SlurmJobEnvironment

ROOT = Path(__file__).resolve().parents[1]


class TrainCommand:
    def __init__(self, argv: list[str]):
        self.argv = argv

    def __call__(self) -> None:
        sys.argv = [str(ROOT / "train.py"), *self.argv]
        sys.path.insert(0, str(ROOT))
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")

    def checkpoint(self, *args, **kwargs) -> DelayedSubmission:
        return DelayedSubmission(self, *args, **kwargs)  # requeue the same command: it resumes from last.ckpt


if __name__ == "__main__":
    folder = Path(os.environ["SUBMITIT_FOLDER"])
    folder.mkdir(parents=True, exist_ok=True)
    environment = SlurmJobEnvironment()
    paths = JobPaths(folder, job_id=environment.job_id)
    delayed = DelayedSubmission(TrainCommand(sys.argv[1:]))
    delayed.set_timeout(timeout_min=240, max_num_timeout=3)
    environment._handle_signals(paths, delayed)  # exactly what submitit's job process does before the call
    delayed.result()
