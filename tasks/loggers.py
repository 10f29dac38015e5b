"""Lightning's W&B logger, adjusted for what this project needs from it."""

from __future__ import annotations

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger


class WandbLogger(LightningWandbLogger):
    """W&B logging that is quiet and whose run is complete on disk when the job returns.

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

    def publish_summary(self, summary: dict) -> None:
        import wandb

        self.experiment.summary.update({k: v for k, v in summary.items() if k != "layer_density"})
        self.experiment.finish()
        wandb.teardown()
