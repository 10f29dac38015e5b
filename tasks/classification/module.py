"""GLUE classification and STS-B regression over an adapter-equipped backbone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection

from tasks.base import AdapterModule
from tasks.classification.data import GlueTask


class ClassificationModule(AdapterModule):
    task_head = "sequence-classification"

    def __init__(self, backbone, adapter, optimizer, task: GlueTask):
        super().__init__(backbone, adapter, optimizer, task.head_config)
        self.task = task
        self.val_metrics = MetricCollection(dict(task.metrics), prefix="val/")

    def forward(self, batch) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "position")}
        return self.model(**inputs).logits.float()  # fp32 losses and metrics under bf16 autocast too

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        if self.task.is_regression:
            return F.mse_loss(logits.squeeze(-1), labels.float())
        return F.cross_entropy(logits / temperature, labels)

    def scoring_loss(self, batch, temperature: float = 1.0) -> torch.Tensor:
        return self.loss(self(batch), batch["labels"], temperature)

    def training_step(self, batch, batch_idx):
        loss = self.loss(self(batch), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["labels"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        logits = self(batch)
        labels = batch["labels"]
        self.log("val/loss", self.loss(logits, labels), batch_size=labels.shape[0], sync_dist=True)  # mean over ranks
        predictions = logits.squeeze(-1) if self.task.is_regression else logits.argmax(-1)
        self.val_metrics.update(predictions, labels, positions=batch.get("position"))

    def on_validation_epoch_end(self):
        # torchmetrics' compute() gathers every rank's state under DDP, so each rank logs the whole dev set's metric,
        # each dev row once (tasks.metrics.GlueScore drops the rows Lightning's sampler repeats)
        self.log_dict({k: v.float() for k, v in self.val_metrics.compute().items()}, prog_bar=True)
        self.val_metrics.reset()
