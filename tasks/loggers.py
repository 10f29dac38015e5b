"""Lightning's CSV and W&B loggers, adjusted for what this project needs from them."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

RUN_FOLDER = re.compile(r"(?:offline-)?run-(\d{8}_\d{6})-(\w+)")  # W&B's folder of one run: time stamp, id


class _ContinuedWriter(ExperimentWriter):
    """Writes the rows of an earlier, interrupted process first, up to where this process logs again.

    Lightning's writer deletes ``metrics.csv`` when it starts; this one leaves it in place until its first save
    replaces it, whole, with the merged rows (written beside it, then renamed): a process killed before that save
    loses nothing."""

    def __init__(self, log_dir: str, earlier: list[dict]):
        self.earlier: list[dict] | None = earlier
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """The earlier rows stay on disk until ``save`` has them in the new file."""

    def save(self) -> None:
        if self.earlier is None or not self.metrics:
            super().save()
            return
        resumed_at = min(int(row["step"]) for row in self.metrics)  # rows from here on are logged again
        self.metrics = [row for row in self.earlier if int(row["step"]) < resumed_at] + self.metrics
        self.earlier = None
        self._record_new_keys()
        partial = Path(self.metrics_file_path).with_name(self.NAME_METRICS_FILE + ".partial")
        with partial.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(self.metrics)
        os.replace(partial, self.metrics_file_path)
        self.metrics = []


class CSVLogger(LightningCSVLogger):
    """Lightning's CSV logger, which a resumed job continues instead of starting afresh.

    Lightning deletes ``metrics.csv`` when its logger starts in a non-empty folder, so a job resumed
    from ``last.ckpt`` kept only the evaluations after the resume: its learning curve (the convergence
    plot, the "converges faster" claim) began midway. After ``continue_log`` (``tasks.experiment``
    calls it on a resume) the earlier rows stay, up to the step this process logs first: the steps
    the interrupted process ran past its checkpoint are trained and logged again, not twice.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._continuing = False

    def continue_log(self) -> None:
        if self._experiment is not None:
            raise RuntimeError("CSVLogger.continue_log must come before the first log")
        self._continuing = True

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None and self._continuing:
            path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
            earlier = []
            if path.is_file():
                with path.open(newline="") as handle:
                    earlier = list(csv.DictReader(handle))
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(self.log_dir, earlier)
        return super().experiment


class WandbLogger(LightningWandbLogger):
    """W&B logging that is quiet, continued by a resumed job, and complete on disk when the job returns.

    Lightning always passes ``anonymous=None`` to ``wandb.init``, which wandb ≥ 0.19 answers with a
    deprecation warning on every run; it is dropped. ``publish_summary`` writes the run summary,
    finishes the run (a sweep's next job must not reuse it) and waits, through ``wandb.teardown``,
    until W&B's service has written everything: ``finish`` alone returns before the offline
    ``.wandb`` file is complete, so a reader (``wandb sync``, a test) could see a partial run.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    def continue_log(self) -> None:
        """A resumed job logs into the W&B run its interrupted process started: one run on the dashboard,
        not a second one whose history begins at the resume (Lightning passes ``resume="allow"``)."""
        if self._experiment is not None:
            raise RuntimeError("WandbLogger.continue_log must come before the first log")
        found = (RUN_FOLDER.fullmatch(p.name) for p in Path(self.save_dir or ".").glob("wandb/*run-*"))
        runs = sorted(match.groups() for match in found if match)  # (time stamp, id)
        if runs:
            self._id = self._wandb_init["id"] = runs[-1][1]

    def publish_summary(self, summary: dict) -> None:
        import wandb

        self.experiment.summary.update({k: v for k, v in summary.items() if k != "layer_density"})
        self.experiment.finish()
        wandb.teardown()
